use crate::harness::*;
use chat_core::app::{Auth, CommandOutput};
use chat_core::{Envelope, LogIndex, Message, NodeId, Role, Term};

/// A 3-node cluster snapshotting every 20 entries, sent in chunks of 256 bytes, whose
/// leader compacted past 59 sends while one follower (`lagger`) was down: restarting it
/// makes the leader send it a snapshot. Returns the cluster, the leader, the lagger, and
/// alice with her session.
fn lagger_behind_a_snapshot() -> (Cluster, NodeId, u64, Auth, u64) {
    let configs = (1..=3)
        .map(|id| {
            let mut c = config(id, 3);
            c.snapshot_threshold_entries = 20;
            c.snapshot_chunk_bytes = 256; // several chunks
            c
        })
        .collect();
    let mut cluster = Cluster::with_configs(configs);
    let leader = cluster.wait_for_leader();
    let lagger = if leader.0 == 3 { 2 } else { 3 };
    cluster.crash(lagger);
    let alice = match cluster.write_ok(1, 1, create("alice")) {
        CommandOutput::AccountCreated { generation, .. } => auth("alice", generation),
        other => panic!("{other:?}"),
    };
    let session = cluster.open(&alice);
    for seq in 2..=60 {
        cluster.write_ok(session, seq, send(&alice, "alice", &format!("note {seq}")));
    }
    (cluster, leader, lagger, alice, session)
}

#[test]
fn a_follower_behind_the_compacted_prefix_catches_up_by_snapshot() {
    let (mut cluster, leader, lagger, alice, session) = lagger_behind_a_snapshot();
    assert!(
        cluster.replicas[&leader].first_log_index() > LogIndex(2),
        "the leader compacted its log"
    );
    cluster.restart(lagger);
    assert!(
        cluster.run_until(ms(5_000), |c| c.replica(lagger).last_applied()
            == c.replicas[&leader].last_applied())
    );
    let caught_up = cluster.replica(lagger);
    assert!(
        caught_up.metrics().snapshots_installed >= 1,
        "caught up by snapshot, not by log"
    );
    assert_eq!(caught_up.chat().message_count(), 59);
    cluster.assert_converged();
    // It keeps following by log after the snapshot.
    cluster.write_ok(session, 61, send(&alice, "alice", "after"));
    cluster.run_for(ms(200));
    cluster.assert_converged();
    // And recovers from its own disk (snapshot + log suffix) after a crash.
    cluster.crash(lagger);
    cluster.restart(lagger);
    assert!(cluster.replica(lagger).snapshot_meta().last_index > LogIndex(0));
    cluster.run_for(ms(1_000));
    cluster.assert_converged();
}

#[test]
fn replicas_with_different_seeds_snapshot_at_different_indexes() {
    let threshold = 100;
    let configs = (1..=3)
        .map(|id| {
            let mut c = config(id, 3);
            c.snapshot_threshold_entries = threshold;
            c
        })
        .collect();
    let mut cluster = Cluster::with_configs(configs);
    cluster.wait_for_leader();
    let alice = match cluster.write_ok(1, 1, create("alice")) {
        CommandOutput::AccountCreated { generation, .. } => auth("alice", generation),
        other => panic!("{other:?}"),
    };
    let session = cluster.open(&alice);
    // Past every replica's first threshold (at most 1.5 x 100), short of any second one
    // (at least 2 x 100).
    for seq in 2..=170 {
        cluster.write_ok(session, seq, send(&alice, "alice", &format!("note {seq}")));
    }
    cluster.run_for(ms(200));
    cluster.assert_converged();
    let mut indexes = Vec::new();
    for id in 1..=3 {
        let replica = cluster.replica(id);
        assert_eq!(
            replica.metrics().snapshots_taken,
            1,
            "n{id} snapshotted once"
        );
        let index = replica.snapshot_meta().last_index.0;
        assert!(
            (threshold..=threshold * 3 / 2).contains(&index),
            "n{id} snapshotted at {index}, outside its jitter"
        );
        indexes.push(index);
    }
    // At one shared threshold all three would snapshot at index 100. Each draws from 51
    // values, so two seeds may draw alike: with these, n1 and n3 both draw 144, n2 130.
    assert_eq!(indexes, [144, 130, 144]);
    indexes.sort();
    indexes.dedup();
    assert!(indexes.len() >= 2, "not every replica snapshots at once");

    // Restarted with the same seed, a replica draws the same thresholds again from the
    // start of its stream: the jitter is a function of the seed alone.
    cluster.crash(2);
    cluster.restart(2);
    assert_eq!(cluster.replica(2).snapshot_threshold_entries(), 130);
}

#[test]
fn large_entries_are_compacted_by_bytes_before_the_entry_threshold() {
    const THRESHOLD_BYTES: u64 = 16 * 1024;
    let configs = (1..=3)
        .map(|id| {
            let mut c = config(id, 3);
            c.snapshot_threshold_entries = 10_000;
            c.snapshot_threshold_bytes = THRESHOLD_BYTES;
            c
        })
        .collect();
    let mut cluster = Cluster::with_configs(configs);
    let alice = match cluster.write_ok(1, 1, create("alice")) {
        CommandOutput::AccountCreated { generation, .. } => auth("alice", generation),
        other => panic!("{other:?}"),
    };
    let session = cluster.open(&alice);
    let body = "x".repeat(4_000);
    for seq in 2..=40 {
        cluster.write_ok(session, seq, send(&alice, "alice", &body));
    }
    cluster.run_for(ms(200));
    for replica in cluster.replicas.values() {
        assert!(
            replica.metrics().snapshots_taken >= 2,
            "{}: 39 entries of 4 KB against a 16 KB bound",
            replica.id()
        );
        // At most the jittered bound (half again) plus one entry stays in memory.
        let held = (replica.last_log_index().0 + 1 - replica.first_log_index().0) as usize;
        assert!(
            held * 4_000 <= 3 * THRESHOLD_BYTES as usize / 2 + 8_192,
            "{held} entries held"
        );
    }
    cluster.assert_converged();
}

/// A snapshot travels with its checksum (that of the sender's file record), and a
/// follower installs only bytes that match it: the bytes a leader streams are read back
/// from its disk, which may have rotted since it wrote them.
#[test]
fn a_snapshot_whose_bytes_do_not_match_its_checksum_is_never_installed() {
    let (mut cluster, leader, lagger, _, _) = lagger_behind_a_snapshot();
    // Two chunks arrive with one message body altered ("note" becomes "Note"): bytes
    // that still decode, to a state no replica ever had.
    let mut altered = 0;
    cluster.set_tamper(move |envelope| {
        if let Message::InstallSnapshot { data, .. } = &mut envelope.message {
            let found = data.windows(5).position(|w| w == b"note ");
            if let (true, Some(at)) = (altered < 2, found) {
                data[at] = b'N';
                altered += 1;
            }
        }
    });
    cluster.restart(lagger);
    assert!(
        cluster.run_until(ms(10_000), |c| c.replica(lagger).last_applied()
            == c.replicas[&leader].last_applied())
    );
    let caught_up = cluster.replica(lagger);
    // At least one: an altered chunk that reaches a follower which already refused the
    // transfer is answered with offset 0 instead.
    assert!(caught_up.metrics().snapshots_refused >= 1);
    assert!(caught_up.metrics().snapshots_installed >= 1);
    assert_eq!(caught_up.chat().message_count(), 59);
    cluster.assert_converged();
}

/// A follower that learns of many committed entries at once applies them a bounded
/// number per input (`apply_entries_per_step_max`), so that it keeps taking messages
/// and timeouts in between, and still applies every one.
#[test]
fn a_long_commit_is_applied_a_bounded_step_at_a_time() {
    const STEP: u64 = 4;
    let configs = (1..=3)
        .map(|id| {
            let mut c = config(id, 3);
            c.apply_entries_per_step_max = STEP;
            c
        })
        .collect();
    let mut cluster = Cluster::with_configs(configs);
    let leader = cluster.wait_for_leader();
    let lagger = if leader.0 == 3 { 2 } else { 3 };
    cluster.isolate(lagger);
    let alice = match cluster.write_ok(1, 1, create("alice")) {
        CommandOutput::AccountCreated { generation, .. } => auth("alice", generation),
        other => panic!("{other:?}"),
    };
    let session = cluster.open(&alice);
    for seq in 2..=60 {
        cluster.write_ok(session, seq, send(&alice, "alice", &format!("note {seq}")));
    }
    cluster.heal();
    let mut applied_before = cluster.replica(lagger).last_applied();
    let mut largest_step = 0;
    let mut most_pending = 0;
    assert!(cluster.run_until(ms(5_000), |c| {
        let replica = c.replica(lagger);
        largest_step = largest_step.max(replica.last_applied().0 - applied_before.0);
        most_pending = most_pending.max(replica.commit_index().0 - replica.last_applied().0);
        applied_before = replica.last_applied();
        replica.last_applied() == c.replicas[&leader].last_applied()
    }));
    assert!(
        largest_step <= STEP,
        "applied {largest_step} entries in one input"
    );
    assert!(
        most_pending > STEP,
        "the commit outran one step ({most_pending} pending)"
    );
    assert_eq!(cluster.replica(lagger).chat().message_count(), 59);
    cluster.assert_converged();
}

/// A leader that steps down with writes committed but not yet applied (applying is
/// bounded per input) answers them with their outcome once it applies them, not with
/// `NotLeader`: they took effect whoever leads now.
#[test]
fn writes_committed_before_a_step_down_are_answered_with_their_outcome() {
    let configs = (1..=3)
        .map(|id| {
            let mut c = config(id, 3);
            c.apply_entries_per_step_max = 1;
            c
        })
        .collect();
    let mut cluster = Cluster::with_configs(configs);
    let leader = cluster.wait_for_ready_leader();
    let other = NodeId(if leader.0 == 1 { 2 } else { 1 });
    let requests: Vec<_> = (0..20)
        .map(|i| cluster.write(leader, 0, 0, create(&format!("user{i}"))))
        .collect();
    assert!(cluster.run_until(ms(2_000), |c| {
        let replica = &c.replicas[&leader];
        replica.commit_index().0 >= replica.last_applied().0 + 3
    }));
    let replica = &cluster.replicas[&leader];
    let committed_unapplied = replica.commit_index().0 - replica.last_applied().0;
    let term = replica.term();
    let answered_ok = |c: &Cluster| {
        requests
            .iter()
            .filter(|id| matches!(c.replies.get(id), Some(Ok(_))))
            .count() as u64
    };
    let ok_before = answered_ok(&cluster);
    // A heartbeat of a later term: the leader steps down at once, with committed
    // entries still to apply.
    let now = cluster.now;
    let stepped_down = cluster.replicas.get_mut(&leader).expect("leader");
    stepped_down.handle_message(
        now,
        Envelope {
            from: other,
            to: leader,
            message: Message::Heartbeat {
                term: Term(term.0 + 1),
                commit: LogIndex(0),
                seq: 0,
            },
        },
    );
    assert!(stepped_down.role() != Role::Leader);
    assert!(cluster.run_until(ms(5_000), |c| requests
        .iter()
        .all(|id| c.replies.contains_key(id))));
    assert!(
        answered_ok(&cluster) >= ok_before + committed_unapplied,
        "{committed_unapplied} committed writes were not answered with their outcome"
    );
}

/// A leader whose snapshot is damaged for good (its file rotted: every transfer of it
/// arrives altered) learns so from the follower's refusal and takes a fresh snapshot at
/// its next applied entry, which the follower installs.
#[test]
fn a_refused_snapshot_makes_the_leader_take_a_fresh_one() {
    let (mut cluster, leader, lagger, alice, session) = lagger_behind_a_snapshot();
    let rotted = cluster.replicas[&leader].snapshot_meta().last_index;
    let taken_before = cluster.replicas[&leader].metrics().snapshots_taken;
    // Every chunk of that one snapshot arrives with a message body altered.
    cluster.set_tamper(move |envelope| {
        if let Message::InstallSnapshot { meta, data, .. } = &mut envelope.message {
            let found = data.windows(5).position(|w| w == b"note ");
            if let (true, Some(at)) = (meta.last_index == rotted, found) {
                data[at] = b'N';
            }
        }
    });
    cluster.restart(lagger);
    assert!(cluster.run_until(ms(2_000), |c| c.replicas[&leader]
        .metrics()
        .snapshot_refusals_received
        >= 1));
    // One more write gives the leader an entry to snapshot at.
    cluster.write_ok(session, 61, send(&alice, "alice", "after"));
    assert!(
        cluster.run_until(ms(10_000), |c| c.replica(lagger).last_applied()
            == c.replicas[&leader].last_applied())
    );
    assert!(cluster.replicas[&leader].metrics().snapshots_taken > taken_before);
    assert!(cluster.replicas[&leader].snapshot_meta().last_index > rotted);
    let caught_up = cluster.replica(lagger);
    assert!(caught_up.metrics().snapshots_refused >= 1);
    assert_eq!(caught_up.chat().message_count(), 60);
    cluster.run_for(ms(200));
    cluster.assert_converged();
}
