//! Membership changes one server at a time, learners, removal and leadership transfer,
//! through the in-memory cluster harness (whose safety check runs after every input).

use crate::harness::*;
use chat_core::entry::EntryPayload;
use chat_core::membership::{MemberRole, Membership, MembershipChange, MembershipError};
use chat_core::{ClientError, ClientRequest, LogIndex, NodeId, Response, Role, TransferError};

fn add(id: u64) -> MembershipChange {
    MembershipChange::AddLearner {
        id: NodeId(id),
        address: format!("10.0.0.{id}:7000"),
    }
}

fn promote(id: u64) -> MembershipChange {
    MembershipChange::Promote { id: NodeId(id) }
}

fn remove(id: u64) -> MembershipChange {
    MembershipChange::Remove { id: NodeId(id) }
}

fn applied(outcome: Result<Response, ClientError>) -> Membership {
    match outcome {
        Ok(Response::Membership(membership)) => membership,
        other => panic!("membership change answered {other:?}"),
    }
}

fn refused(outcome: Result<Response, ClientError>) -> MembershipError {
    match outcome {
        Err(ClientError::Membership(error)) => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn voters(membership: &Membership) -> Vec<u64> {
    membership.voters().map(|id| id.0).collect()
}

/// Writes `count` accounts through the leader.
fn fill(cluster: &mut Cluster, prefix: &str, count: usize) {
    for n in 0..count {
        cluster.write_ok(0, 0, create(&format!("{prefix}{n}")));
    }
}

#[test]
fn a_founded_cluster_logs_its_founding_members_at_index_1() {
    let mut cluster = Cluster::new(3);
    cluster.wait_for_leader();
    for replica in cluster.replicas.values() {
        let entry = replica.log_entry(LogIndex(1)).expect("entry 1");
        assert_eq!(entry.term.0, 0, "the founding entry precedes every term");
        assert!(matches!(entry.payload, EntryPayload::Membership { .. }));
        assert_eq!(voters(replica.membership()), vec![1, 2, 3]);
        assert!(replica.is_voter());
    }
}

#[test]
fn a_learner_catches_up_without_voting_and_is_promoted() {
    let mut cluster = Cluster::new(3);
    fill(&mut cluster, "before", 5);
    cluster.join(4);
    let joined = applied(cluster.change(add(4)));
    assert_eq!(joined.members()[&NodeId(4)].role, MemberRole::Learner);
    assert_eq!(joined.quorum(), 2, "a learner counts toward no quorum");
    fill(&mut cluster, "after", 3);
    cluster.run_for(ms(500));
    let learner = cluster.replica(4);
    assert!(!learner.is_voter());
    assert_eq!(learner.role(), Role::Follower);
    assert_eq!(learner.last_applied(), cluster.replica(1).last_applied());
    cluster.assert_converged();

    let promoted = applied(cluster.change(promote(4)));
    assert_eq!(voters(&promoted), vec![1, 2, 3, 4]);
    assert_eq!(promoted.quorum(), 3);
    cluster.run_for(ms(200));
    assert!(cluster.replica(4).is_voter());

    // Four voters need three: with two of them down, nothing commits.
    let leader = cluster.wait_for_leader();
    let down: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|&id| NodeId(id) != leader)
        .take(2)
        .collect();
    for &id in &down {
        cluster.crash(id);
    }
    let commit = cluster.replicas[&leader].commit_index();
    let request = cluster.write(leader, 0, 0, create("needs-three"));
    cluster.run_for(ms(2_000));
    assert!(
        !cluster.replies.contains_key(&request)
            || matches!(
                cluster.replies[&request],
                Err(ClientError::NotLeader { .. })
            ),
        "a write committed without a quorum of four voters"
    );
    assert!(cluster
        .replicas
        .values()
        .all(|r| r.commit_index() <= commit.next()));
    for id in down {
        cluster.restart(id);
    }
    cluster.write_ok(0, 0, create("with-three"));
    cluster.run_for(ms(500));
    cluster.assert_converged();
}

#[test]
fn a_lagging_learner_is_not_promoted() {
    let mut configs: Vec<_> = (1..=3).map(|id| config(id, 3)).collect();
    for config in &mut configs {
        config.promotion_lag_entries_max = 4;
    }
    let mut cluster = Cluster::with_configs(configs);
    cluster.wait_for_leader();
    cluster.join(4);
    applied(cluster.change(add(4)));
    cluster.isolate(4);
    fill(&mut cluster, "while-away", 8);
    match refused(cluster.change(promote(4))) {
        MembershipError::LearnerLagging {
            id,
            behind_entries,
            bound,
        } => {
            assert_eq!(id, NodeId(4));
            assert!(behind_entries > 4, "{behind_entries}");
            assert_eq!(bound, 4);
        }
        other => panic!("{other:?}"),
    }
    cluster.heal();
    cluster.run_for(ms(500));
    applied(cluster.change(promote(4)));
}

/// Found by the simulator (issue 11): an operator retried a promotion whose first
/// attempt had been applied while the answer was lost; the voter was a few entries
/// behind, and the retry was refused as `LearnerLagging` instead of `AlreadyVoter`, so
/// the operator believed the promotion had not happened.
#[test]
fn promoting_a_lagging_voter_again_says_it_is_already_a_voter() {
    let mut configs: Vec<_> = (1..=3).map(|id| config(id, 3)).collect();
    for config in &mut configs {
        config.promotion_lag_entries_max = 4;
    }
    let mut cluster = Cluster::with_configs(configs);
    cluster.wait_for_leader();
    cluster.join(4);
    applied(cluster.change(add(4)));
    cluster.run_for(ms(500));
    applied(cluster.change(promote(4)));
    cluster.isolate(4);
    fill(&mut cluster, "while-away", 8);
    assert_eq!(
        refused(cluster.change(promote(4))),
        MembershipError::AlreadyVoter(NodeId(4))
    );
}

#[test]
fn one_change_at_a_time() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.wait_for_ready_leader();
    cluster.join(4);
    cluster.join(5);
    // Followers hear nothing more: the first change cannot commit.
    let leader_id = leader;
    cluster.set_filter(move |e| e.from == leader_id);
    let first = cluster.request(leader, ClientRequest::ChangeMembership(add(4)));
    cluster.run_for(ms(10));
    let second = cluster.request(leader, ClientRequest::ChangeMembership(add(5)));
    match refused(cluster.outcome(second)) {
        MembershipError::ChangeInProgress { .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(!cluster.replies.contains_key(&first));
    cluster.heal();
    cluster.run_for(ms(3_000));
    applied(cluster.change(add(5)));
}

#[test]
fn structural_refusals_are_typed() {
    let mut cluster = Cluster::new(3);
    cluster.wait_for_leader();
    assert_eq!(
        refused(cluster.change(promote(9))),
        MembershipError::UnknownMember(NodeId(9))
    );
    assert_eq!(
        refused(cluster.change(promote(2))),
        MembershipError::AlreadyVoter(NodeId(2))
    );
    cluster.join(4);
    applied(cluster.change(add(4)));
    assert!(matches!(
        refused(cluster.change(MembershipChange::AddLearner {
            id: NodeId(5),
            address: "10.0.0.4:7000".into(),
        })),
        MembershipError::DuplicateAddress { .. }
    ));
    applied(cluster.change(remove(4)));
    assert_eq!(
        refused(cluster.change(add(4))),
        MembershipError::IdRemoved(NodeId(4))
    );
}

#[test]
fn removing_below_a_reachable_quorum_is_refused() {
    let mut cluster = Cluster::new(5);
    let leader = cluster.wait_for_leader();
    let others: Vec<u64> = (1..=5).filter(|&id| NodeId(id) != leader).collect();
    cluster.crash(others[0]);
    cluster.crash(others[1]);
    cluster.run_for(ms(1_000));
    // Four voters would remain, two of them down: a quorum of three is not reachable.
    match refused(cluster.change(remove(others[2]))) {
        MembershipError::BelowQuorum {
            reachable,
            voters,
            quorum,
            ..
        } => assert_eq!((reachable, voters, quorum), (2, 4, 3)),
        other => panic!("{other:?}"),
    }
    // Removing a dead one leaves three reachable of four.
    applied(cluster.change(remove(others[0])));
}

#[test]
fn a_removed_follower_stops_and_does_not_disrupt_the_cluster() {
    let mut cluster = Cluster::new(5);
    let leader = cluster.wait_for_leader();
    let victim = (1..=5)
        .find(|&id| NodeId(id) != leader)
        .expect("a follower");
    // The victim misses its own removal: it will campaign, and must be told.
    cluster.isolate(victim);
    let membership = applied(cluster.change(remove(victim)));
    assert!(membership.is_removed(NodeId(victim)));
    let term = cluster.replicas[&leader].term();
    cluster.heal();
    cluster.run_for(ms(5_000));
    assert!(cluster.replica(victim).is_removed(), "told it was removed");
    assert_ne!(cluster.replica(victim).role(), Role::Leader);
    assert_eq!(cluster.leader(), Some(leader), "the leader kept its place");
    assert_eq!(
        cluster.replicas[&leader].term(),
        term,
        "no election was forced"
    );
    cluster.write_ok(0, 0, create("after-removal"));
    cluster.run_for(ms(300));
    cluster.assert_converged();
}

/// Found by the simulator (issue 11, `chatsim run --nodes 3`, seed 1568): of two voters,
/// the leader logged its own removal and crashed before replicating it. On restart its
/// log was the more up to date, so the other voter could not win, and it did not
/// campaign because its latest configuration no longer held it: leaderless for good.
#[test]
fn a_leader_whose_own_removal_did_not_replicate_still_campaigns() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.wait_for_ready_leader();
    let followers: Vec<u64> = (1..=3).filter(|&id| NodeId(id) != leader).collect();
    applied(cluster.change(remove(followers[1])));
    cluster.run_for(ms(500));
    let (leader_id, other) = (leader, followers[0]);
    assert_eq!(cluster.leader(), Some(leader_id));
    // The leader's messages are lost from here on: its own removal stays in its log.
    cluster.set_filter(move |e| e.from == leader_id);
    cluster.request(leader, ClientRequest::ChangeMembership(remove(leader.0)));
    cluster.run_for(ms(10));
    cluster.crash(leader.0);
    cluster.restart(leader.0);
    cluster.heal();
    let led = cluster.run_until(ms(10_000), |c| c.leader() == Some(NodeId(other)));
    assert!(led, "the remaining voter leads once the removal commits");
    assert!(cluster.replica(leader.0).is_removed());
    cluster.write_ok(0, 0, create("after-removal"));
}

/// Found by the simulator (issue 11, `chatsim run --nodes 3`, seed 9429): the operator
/// had removed every voter but one; that leader committed a write in the input that
/// appended it, before its own disk had it, and told its learner so in the messages
/// that leave before the persist. A torn write then lost the entry: the learner held a
/// committed entry the cluster no longer had. A leader counts only durable entries.
#[test]
fn a_lone_voter_commits_only_what_its_disk_holds() {
    let now = chat_core::Time(0);
    let recovered = chat_core::Recovered {
        hard_state: Default::default(),
        snapshot: None,
        snapshot_state: None,
        entries: Vec::new(),
    };
    let mut replica = chat_core::Replica::new(config(1, 1), recovered, now).expect("valid");
    replica.campaign(now);
    while replica.poll_ready().is_some() {}
    assert_eq!(replica.role(), Role::Leader);
    let committed = replica.commit_index();
    replica.handle_client_request(
        now,
        chat_core::RequestId(1),
        ClientRequest::Write {
            session: None,
            command: create("alone"),
        },
    );
    assert_eq!(
        replica.commit_index(),
        committed,
        "not committed before the Ready that persists it has gone out"
    );
    let persisting = replica.poll_ready().expect("the new entry");
    drop(persisting);
    // Asking for the next Ready says the last one was performed: now it counts.
    while replica.poll_ready().is_some() {}
    assert_eq!(replica.commit_index(), replica.last_log_index());
}

#[test]
fn a_removed_leader_steps_down_and_hands_over_at_once() {
    let mut cluster = Cluster::new(5);
    let leader = cluster.wait_for_leader();
    fill(&mut cluster, "x", 3);
    let membership = applied(cluster.change(remove(leader.0)));
    assert_eq!(membership.voter_count(), 4);
    let removed_at = cluster.now;
    assert!(cluster.replicas[&leader].is_removed());
    assert_ne!(cluster.replicas[&leader].role(), Role::Leader);
    let successor = cluster.wait_for_leader();
    assert_ne!(successor, leader);
    let handover_us = cluster.now.0 - removed_at.0;
    assert!(
        handover_us
            < cluster.replicas[&successor]
                .config()
                .election_timeout_us_min,
        "took {handover_us} µs: the leader should have handed over with TimeoutNow"
    );
    cluster.write_ok(0, 0, create("after"));
    cluster.run_for(ms(300));
    cluster.assert_converged();
}

#[test]
fn leadership_moves_to_the_named_voter_without_an_election_timeout() {
    let mut cluster = Cluster::new(5);
    let leader = cluster.wait_for_leader();
    fill(&mut cluster, "a", 3);
    let term = cluster.replicas[&leader].term();
    let target = (1..=5).find(|&id| NodeId(id) != leader).expect("another");
    assert_eq!(cluster.transfer(leader, Some(target)), Ok(NodeId(target)));
    let write = cluster.write(leader, 0, 0, create("during"));
    assert_eq!(
        cluster.replies.get(&write),
        Some(&Err(ClientError::NotLeader {
            leader_hint: Some(NodeId(target))
        })),
        "writes are turned to the target during a transfer"
    );
    let started = cluster.now;
    assert!(cluster.run_until(ms(100), |c| c.leader() == Some(NodeId(target))));
    assert!(cluster.now.0 - started.0 < ms(20), "one round trip or two");
    assert_eq!(cluster.replica(target).term().0, term.0 + 1);
    fill(&mut cluster, "b", 2);

    // Refusals.
    let new_leader = NodeId(target);
    assert_eq!(
        cluster.transfer(new_leader, Some(target)),
        Err(TransferError::AlreadyLeader(new_leader))
    );
    assert_eq!(
        cluster.transfer(new_leader, Some(9)),
        Err(TransferError::NotAVoter(NodeId(9)))
    );
    assert!(matches!(
        cluster.transfer(leader, None),
        Err(TransferError::NotLeader { .. })
    ));
    // To whoever is most up to date.
    let chosen = cluster.transfer(new_leader, None).expect("a voter");
    assert!(cluster.run_until(ms(100), |c| c.leader() == Some(chosen)));
}

#[test]
fn a_change_that_did_not_commit_is_undone_with_the_log() {
    let mut cluster = Cluster::new(5);
    let old = cluster.wait_for_ready_leader();
    cluster.join(6);
    cluster.isolate(old.0);
    let stranded = cluster.request(old, ClientRequest::ChangeMembership(add(6)));
    cluster.run_for(ms(10));
    assert!(
        cluster.replicas[&old].membership().contains(NodeId(6)),
        "in force once logged"
    );
    let successor = cluster.run_until(ms(5_000), |c| c.leader().is_some_and(|l| l != old));
    assert!(successor);
    cluster.write_ok(0, 0, create("new-era"));
    cluster.heal();
    cluster.run_for(ms(1_000));
    assert!(matches!(
        cluster.replies.get(&stranded),
        Some(Err(ClientError::NotLeader { .. }))
    ));
    assert!(
        !cluster.replicas[&old].membership().contains(NodeId(6)),
        "the overwritten change is no longer in force"
    );
}

#[test]
fn a_learner_behind_the_snapshot_installs_it_and_everyone_recovers_the_membership() {
    let mut configs: Vec<_> = (1..=3).map(|id| config(id, 3)).collect();
    for config in &mut configs {
        config.snapshot_threshold_entries = 8;
    }
    let mut cluster = Cluster::with_configs(configs);
    fill(&mut cluster, "old", 30);
    cluster.run_for(ms(200));
    assert!(
        cluster.replica(1).first_log_index() > LogIndex(2),
        "compacted"
    );
    let mut joiner = chat_core::Config::new(NodeId(4), Vec::new());
    joiner.snapshot_threshold_entries = 8;
    cluster.join_with(joiner);
    applied(cluster.change(add(4)));
    cluster.run_for(ms(1_000));
    assert!(cluster.replica(4).metrics().snapshots_installed >= 1);
    assert!(cluster.replica(4).membership().contains(NodeId(4)));
    applied(cluster.change(promote(4)));
    cluster.run_for(ms(300));
    let expected = cluster.replica(1).membership().clone();
    for id in 1..=4 {
        cluster.crash(id);
    }
    for id in 1..=4 {
        cluster.restart(id);
        assert_eq!(
            cluster.replica(id).membership(),
            &expected,
            "n{id} recovered it"
        );
    }
    cluster.write_ok(0, 0, create("after-restart"));
    cluster.run_for(ms(300));
    cluster.assert_converged();
}

/// Cuts `a` and `b` apart, both ways.
fn cut(cluster: &mut Cluster, a: u64, b: u64) {
    cluster.block(a, b);
    cluster.block(b, a);
}

/// The single-server change bug of 2015 (Ongaro, raft-dev): the old leader appends one
/// change that reaches only its subject; a new leader, elected without it, proposes
/// another at once; each change then commits under its own majority, and the two
/// majorities need not overlap. The fix: no change until the new leader has committed
/// an entry of its term (`LeaderNotReady`). This replays the interleaving (four voters,
/// learners 5 and 6) and checks that the new leader refuses, and that the old leader,
/// winning later with the voter the new one never reached, loses nothing committed (the
/// harness checks every committed entry after every input).
#[test]
fn a_new_leader_proposes_no_change_before_its_term_commits_the_2015_bug() {
    let mut cluster = Cluster::new(4);
    for id in [5, 6] {
        cluster.join(id);
        applied(cluster.change(add(id)));
    }
    fill(&mut cluster, "a", 3);
    let old = cluster.wait_for_ready_leader().0;
    // The old leader reaches only learner 5, which hears nobody else.
    for n in (1..=6).filter(|&n| n != old && n != 5) {
        cut(&mut cluster, old, n);
        cut(&mut cluster, 5, n);
    }
    let first = cluster.request(NodeId(old), ClientRequest::ChangeMembership(promote(5)));
    cluster.run_for(ms(20));
    assert!(!cluster.replies.contains_key(&first), "it cannot commit");
    // The three other founders elect a new leader among themselves.
    let others: Vec<u64> = (1..=4).filter(|&n| n != old).collect();
    let elected = cluster.run_until(ms(10_000), |c| {
        c.leader()
            .is_some_and(|l| l.0 != old && c.replicas[&l].term() > c.replicas[&NodeId(old)].term())
    });
    assert!(elected);
    let new = cluster.leader().expect("checked").0;
    // From the moment it wins, the new leader reaches one founder and learner 6 only:
    // `lagging` voted for it and hears nothing more from it.
    let lagging = *others.iter().find(|&&n| n != new).expect("three others");
    cut(&mut cluster, new, lagging);
    let second = cluster.request(NodeId(new), ClientRequest::ChangeMembership(promote(6)));
    assert_eq!(
        refused(cluster.outcome(second)),
        MembershipError::LeaderNotReady,
        "a change before the new leader's term committed"
    );
    cluster.run_for(ms(500));
    // Now the old leader, 5 and `lagging` reach each other and nobody else.
    cluster.heal();
    let side: [u64; 3] = [old, 5, lagging];
    for a in side {
        for b in (1..=6).filter(|b| !side.contains(b)) {
            cut(&mut cluster, a, b);
        }
    }
    cluster.run_for(ms(3_000));
    cluster.heal();
    cluster.run_for(ms(3_000));
    cluster.assert_converged();
    assert_eq!(
        voters(&applied(cluster.change(promote(6)))).last(),
        Some(&6)
    );
}

/// A leader cut off from its peers leads on (until check-quorum) with the configuration
/// it last knew. Asked to promote a node the new leader added meanwhile, it must not
/// answer "not a member" (an operator takes that as final): a refusal reads the
/// configuration and waits, like a read, for a quorum to confirm the leadership, which
/// never comes; the request fails with `NotLeader` when the old leader steps down.
/// (Found by the simulator: a stale leader's `UnknownMember` made the operator give up
/// a promotion that a lost attempt had in fact made.)
#[test]
fn a_deposed_leader_does_not_refuse_from_a_stale_configuration() {
    let mut configs: Vec<_> = (1..=3).map(|id| config(id, 3)).collect();
    // Node 1 checks its quorum only every 10 s, so it leads on, cut off, for a while.
    configs[0] = configs[0]
        .clone()
        .with_election_timeout_us(ms(10_000), ms(20_000));
    let mut cluster = Cluster::with_configs(configs);
    let first = cluster.wait_for_ready_leader();
    if first != NodeId(1) {
        cluster.transfer(first, Some(1)).expect("transfer to 1");
        assert!(cluster.run_until(ms(5_000), |c| c.leader() == Some(NodeId(1))));
    }
    cluster.wait_for_ready_leader();
    cluster.isolate(1);
    assert!(cluster.run_until(ms(5_000), |c| c
        .replicas
        .iter()
        .any(|(id, r)| id.0 != 1 && r.role() == Role::Leader)));
    cluster.join(4);
    // Through the leader of the highest term: the new one.
    applied(cluster.change(add(4)));
    assert_eq!(
        cluster.replica(1).role(),
        Role::Leader,
        "still leads, cut off"
    );
    let stale = cluster.request(NodeId(1), ClientRequest::ChangeMembership(promote(4)));
    assert!(cluster.run_until(ms(30_000), |c| c.replies.contains_key(&stale)));
    match &cluster.replies[&stale] {
        Err(ClientError::NotLeader { .. }) => {}
        other => panic!("a cut-off leader answered {other:?}"),
    }
}
