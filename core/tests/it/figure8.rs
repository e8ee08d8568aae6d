//! The Raft paper's Figure 8: an entry of an older term that reaches a majority must not
//! be committed by counting replicas; only an entry of the current term commits it.

use crate::harness::*;
use chat_core::{LogIndex, Message, NodeId, Role};

fn cluster_one_entry_per_message() -> Cluster {
    let configs = (1..=5)
        .map(|id| {
            let mut c = config(id, 5);
            c.append_entries_count_max = 1;
            c
        })
        .collect();
    Cluster::with_configs(configs)
}

fn carries_index(message: &Message, index: u64) -> bool {
    matches!(message, Message::AppendEntries { entries, .. } if entries.iter().any(|e| e.index == LogIndex(index)))
}

/// Sets up (a)-(c) of Figure 8 and returns (L3, the index of X, X's term): X is an entry
/// of an old term stored on a majority, with L3 leading a later term.
fn old_term_entry_on_a_majority(cluster: &mut Cluster) -> (NodeId, LogIndex) {
    let l1 = cluster.wait_for_leader();
    cluster.run_for(ms(200));
    let x_index = LogIndex(cluster.replicas[&l1].last_log_index().0 + 1);
    // (a) L1 appends X and replicates it to one follower only.
    let buddy = cluster
        .replicas
        .keys()
        .copied()
        .find(|&id| id != l1)
        .unwrap();
    let (l1v, buddyv) = (l1, buddy);
    cluster.set_filter(move |e| e.from == l1v && e.to != buddyv);
    cluster.write(l1, 9, 1, create("x"));
    cluster.run_for(ms(50));
    assert_eq!(cluster.replicas[&buddy].last_log_index(), x_index);
    // (b) L1 crashes; a leader of a new term (L2) among the three others appends its no-op
    // at X's index but replicates nothing, then crashes.
    cluster.crash(l1.0);
    cluster.isolate(buddy.0);
    cluster.set_filter(|e| {
        matches!(
            e.message,
            Message::AppendEntries { .. } | Message::Heartbeat { .. }
        )
    });
    assert!(cluster.run_until(ms(10_000), |c| c
        .leader()
        .is_some_and(|l| l != l1 && l != buddy)));
    let l2 = cluster.leader().unwrap();
    assert_eq!(
        cluster.replicas[&l2].log_entry(x_index).unwrap().term,
        cluster.replicas[&l2].term()
    );
    cluster.crash(l2.0);
    cluster.run_for(ms(5)); // L2's last messages are still filtered out.
                            // (c) L1 restarts and it (or its buddy, which has the same log) wins a later term;
                            // it replicates X to a third node but nothing after X.
    cluster.heal();
    cluster.restart(l1.0);
    cluster.set_filter(move |e| carries_index(&e.message, x_index.0 + 1) || e.to == l2);
    let x_term = cluster.replicas[&l1].log_entry(x_index).unwrap().term;
    assert!(cluster.run_until(ms(10_000), |c| {
        c.leader().is_some_and(|l| l == l1 || l == buddy)
            && c.replicas
                .values()
                .filter(|r| r.log_entry(x_index).is_some_and(|e| e.term == x_term))
                .count()
                >= 3
    }));
    let l3 = cluster.leader().unwrap();
    cluster.run_for(ms(200));
    (l3, x_index)
}

#[test]
fn an_old_term_entry_on_a_majority_is_not_committed_until_the_current_term_commits() {
    let mut cluster = cluster_one_entry_per_message();
    let (l3, x_index) = old_term_entry_on_a_majority(&mut cluster);
    let x_term = cluster.replicas[&l3].log_entry(x_index).unwrap().term;
    assert!(
        x_term < cluster.replicas[&l3].term(),
        "X is from an older term"
    );
    let holders = cluster
        .replicas
        .values()
        .filter(|r| r.log_entry(x_index).is_some_and(|e| e.term == x_term))
        .count();
    assert!(holders >= 3, "X is stored on a majority ({holders} of 5)");
    for replica in cluster.replicas.values() {
        assert!(
            replica.commit_index() < x_index,
            "{} committed X by counting old-term replicas",
            replica.id()
        );
    }
    // Once L3's own entry after X reaches a majority, X commits with it.
    cluster.heal();
    let l2_down = cluster.replicas.len() == 4;
    assert!(l2_down);
    assert!(cluster.run_until(ms(2_000), |c| c.replicas[&l3].commit_index() > x_index));
    assert_eq!(
        cluster.replicas[&l3].log_entry(x_index).unwrap().term,
        x_term
    );
    assert_eq!(cluster.replicas[&l3].role(), Role::Leader);
}

#[test]
fn an_uncommitted_old_term_entry_may_be_overwritten_by_a_newer_leader() {
    let mut cluster = cluster_one_entry_per_message();
    let (l3, x_index) = old_term_entry_on_a_majority(&mut cluster);
    let x_term = cluster.replicas[&l3].log_entry(x_index).unwrap().term;
    // (d) L3 crashes before its own entry spreads; L2 comes back with a later last term
    // and may win, replacing X everywhere. The harness checks after every step that no
    // committed entry ever changes: had X been counted committed in (c), this would fail.
    let l2 = (1..=5)
        .map(NodeId)
        .find(|id| !cluster.replicas.contains_key(id))
        .unwrap();
    cluster.crash(l3.0);
    cluster.restart(l2.0);
    cluster.heal();
    // Only L2 may campaign: the X holders lose their quorum... unless L2 is elected.
    let others: Vec<u64> = cluster
        .replicas
        .keys()
        .map(|id| id.0)
        .filter(|&id| id != l2.0)
        .collect();
    for &id in &others {
        for &other in &others {
            if id != other {
                cluster.block(id, other);
            }
        }
    }
    assert!(cluster.run_until(ms(10_000), |c| c.leader() == Some(l2)));
    cluster.heal();
    cluster.run_for(ms(500));
    let winner = cluster.leader().unwrap();
    assert_eq!(winner, l2);
    let committed_term = cluster.replicas[&winner].log_entry(x_index).unwrap().term;
    assert_ne!(committed_term, x_term, "L2 replaced X with its own entry");
    for replica in cluster.replicas.values() {
        assert!(replica.commit_index() >= x_index);
        assert_eq!(replica.log_entry(x_index).unwrap().term, committed_term);
    }
}
