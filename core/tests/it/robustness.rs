//! Nothing a peer sends can panic a replica: impossible messages are rejected and counted.

use crate::harness::config;
use chat_core::entry::{Entry, EntryPayload, SnapshotMeta};
use chat_core::{Envelope, LogIndex, Message, NodeId, Recovered, Replica, Role, Term, Time};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn drain(replica: &mut Replica) -> Vec<Envelope> {
    let mut sent = Vec::new();
    while let Some(ready) = replica.poll_ready() {
        sent.extend(ready.messages_before_persist);
        sent.extend(ready.messages);
    }
    sent
}

fn from(id: u64, message: Message) -> Envelope {
    Envelope {
        from: NodeId(id),
        to: NodeId(1),
        message,
    }
}

/// n1 of a 3-node cluster, made leader of term 1 by hand.
fn leader() -> Replica {
    let mut replica = Replica::new(config(1, 3), Recovered::default(), Time(0)).unwrap();
    replica.campaign(Time(1));
    replica.handle_message(
        Time(2),
        from(
            2,
            Message::PreVoteResponse {
                term: Term(1),
                granted: true,
            },
        ),
    );
    replica.handle_message(
        Time(3),
        from(
            2,
            Message::RequestVoteResponse {
                term: Term(1),
                granted: true,
            },
        ),
    );
    assert_eq!(replica.role(), Role::Leader);
    drain(&mut replica);
    replica
}

fn noop(term: u64, index: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Noop { timestamp: Time(0) },
    }
}

#[test]
fn impossible_messages_are_rejected_and_counted() {
    let mut follower = Replica::new(config(1, 3), Recovered::default(), Time(0)).unwrap();
    let append = |prev: u64, prev_term: u64, entries: Vec<Entry>| Message::AppendEntries {
        term: Term(3),
        prev_log_index: LogIndex(prev),
        prev_log_term: Term(prev_term),
        entries,
        leader_commit: LogIndex(0),
    };
    // A sender outside the configuration is not impossible (a leader that added this
    // node, a removed node that does not know it yet): see the membership tests.
    let impossible = vec![
        Envelope {
            from: NodeId(2),
            to: NodeId(3),
            message: Message::Heartbeat {
                term: Term(1),
                commit: LogIndex(0),
                seq: 1,
            },
        },
        from(
            1,
            Message::Heartbeat {
                term: Term(1),
                commit: LogIndex(0),
                seq: 1,
            },
        ),
        from(2, append(0, 0, vec![noop(1, 1), noop(1, 3)])),
        from(2, append(0, 0, vec![noop(4, 1)])),
        from(2, append(0, 2, vec![])),
        from(2, append(0, 0, vec![noop(2, 1), noop(1, 2)])),
        from(
            2,
            Message::RequestVote {
                term: Term(3),
                last_log_index: LogIndex(1),
                last_log_term: Term(4),
                leadership_transfer: false,
            },
        ),
        from(
            2,
            Message::PreVote {
                term: Term(3),
                last_log_index: LogIndex(1),
                last_log_term: Term(9),
            },
        ),
        from(
            2,
            Message::InstallSnapshot {
                term: Term(3),
                meta: SnapshotMeta {
                    last_index: LogIndex(5),
                    last_term: Term(1),
                },
                total_bytes: 10,
                checksum: 0,
                offset: 8,
                data: vec![0; 5],
                done: true,
            },
        ),
        from(
            2,
            Message::InstallSnapshot {
                term: Term(3),
                meta: SnapshotMeta {
                    last_index: LogIndex(5),
                    last_term: Term(1),
                },
                total_bytes: u64::MAX,
                checksum: 0,
                offset: u64::MAX - 1,
                data: vec![0; 5],
                done: false,
            },
        ),
        from(
            2,
            Message::InstallSnapshot {
                term: Term(3),
                meta: SnapshotMeta {
                    last_index: LogIndex(5),
                    last_term: Term(1),
                },
                total_bytes: 3,
                checksum: 0,
                offset: 0,
                data: vec![0xff; 3],
                done: true,
            },
        ),
    ];
    let count = impossible.len() as u64;
    for (n, envelope) in impossible.into_iter().enumerate() {
        follower.handle_message(Time(10 + n as u64), envelope);
        drain(&mut follower);
        assert_eq!(
            follower.metrics().messages_rejected,
            n as u64 + 1,
            "message {n} was not rejected"
        );
    }
    assert_eq!(follower.metrics().messages_rejected, count);
    assert_eq!(
        follower.last_log_index(),
        LogIndex(1),
        "nothing impossible entered the log (entry 1 is the founding membership)"
    );

    let mut leader = leader();
    let before = leader.metrics().messages_rejected;
    let beyond = Message::AppendEntriesResponse {
        term: Term(1),
        success: true,
        index: LogIndex(99),
        hint: None,
    };
    leader.handle_message(Time(20), from(2, beyond));
    assert_eq!(leader.metrics().messages_rejected, before + 1);
    assert!(leader.commit_index() < LogIndex(99));
}

fn random_message(rng: &mut ChaCha8Rng) -> Message {
    let term = Term(rng.random_range(0..6));
    let index = |rng: &mut ChaCha8Rng| LogIndex(rng.random_range(0..8));
    let small_term = |rng: &mut ChaCha8Rng| Term(rng.random_range(0..6));
    match rng.random_range(0..12) {
        10 => Message::TimeoutNow { term },
        11 => Message::Removed { term },
        0 => Message::PreVote {
            term,
            last_log_index: index(rng),
            last_log_term: small_term(rng),
        },
        1 => Message::PreVoteResponse {
            term,
            granted: rng.random(),
        },
        2 => Message::RequestVote {
            term,
            last_log_index: index(rng),
            last_log_term: small_term(rng),
            leadership_transfer: rng.random(),
        },
        3 => Message::RequestVoteResponse {
            term,
            granted: rng.random(),
        },
        4 => {
            let prev = index(rng);
            let count = rng.random_range(0..4);
            let entries = (0..count)
                .map(|i| {
                    noop(
                        rng.random_range(0..6),
                        if rng.random_range(0..4) == 0 {
                            rng.random_range(0..9)
                        } else {
                            prev.0 + 1 + i
                        },
                    )
                })
                .collect();
            Message::AppendEntries {
                term,
                prev_log_index: prev,
                prev_log_term: small_term(rng),
                entries,
                leader_commit: index(rng),
            }
        }
        5 => Message::AppendEntriesResponse {
            term,
            success: rng.random(),
            index: index(rng),
            hint: None,
        },
        6 => Message::Heartbeat {
            term,
            commit: index(rng),
            seq: rng.random_range(0..5),
        },
        7 => Message::HeartbeatResponse {
            term,
            seq: rng.random_range(0..5),
            last_log_index: index(rng),
        },
        8 => {
            let total = rng.random_range(0..64);
            let offset = rng.random_range(0..=total);
            let len = rng.random_range(0..=16);
            Message::InstallSnapshot {
                term,
                meta: SnapshotMeta {
                    last_index: index(rng),
                    last_term: small_term(rng),
                },
                total_bytes: total,
                checksum: rng.random(),
                offset,
                data: (0..len).map(|_| rng.random()).collect(),
                done: rng.random(),
            }
        }
        _ => Message::InstallSnapshotResponse {
            term,
            last_index: index(rng),
            next_offset: rng.random_range(0..100),
            installed: rng.random(),
            refused: rng.random(),
        },
    }
}

#[test]
fn random_messages_never_panic_a_replica() {
    for seed in 0..20 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut replicas = [
            leader(),
            Replica::new(config(1, 3), Recovered::default(), Time(0)).unwrap(),
        ];
        for replica in &mut replicas {
            for step in 0..2_000u64 {
                let sender = rng.random_range(1..=4);
                let envelope = from(sender, random_message(&mut rng));
                if step % 7 == 0 {
                    replica.handle_timeout(Time(step * 50_000));
                }
                replica.handle_message(Time(step * 50_000), envelope);
                drain(replica);
            }
            assert!(replica.metrics().messages_rejected > 0);
        }
    }
}
