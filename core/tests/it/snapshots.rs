use crate::harness::*;
use chat_core::app::CommandOutput;
use chat_core::LogIndex;

#[test]
fn a_follower_behind_the_compacted_prefix_catches_up_by_snapshot() {
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
