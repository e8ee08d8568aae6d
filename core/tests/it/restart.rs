//! A replica over the real storage format (on the simulated disk) keeps what it promised
//! across a crash: its term, its vote, and its log.

use crate::harness::config;
use chat_core::storage::{LogStore, MemDisk};
use chat_core::{drive, Envelope, LogIndex, Message, NodeId, Replica, Reply, Shell, Term, Time};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

struct StoreShell<'a> {
    store: &'a mut LogStore<MemDisk>,
    sent: Vec<Envelope>,
}

impl Shell for StoreShell<'_> {
    type Error = chat_core::storage::StorageError;
    fn persist(&mut self, persist: &chat_core::entry::Persist) -> Result<(), Self::Error> {
        self.store.persist(persist)
    }
    fn send(&mut self, envelope: Envelope) {
        self.sent.push(envelope);
    }
    fn reply(&mut self, _reply: Reply) {}
    fn deliver(&mut self, _delivery: chat_core::app::Delivery) {}
    // These scripts stay far below the snapshot threshold: nothing to save.
    fn save_snapshot(&mut self, _image: chat_core::machine::SnapshotImage) {}
}

/// Feeds one message to n1 of a 3-node cluster and returns what it sent.
fn handle(
    replica: &mut Replica,
    store: &mut LogStore<MemDisk>,
    now: u64,
    from: u64,
    message: Message,
) -> Vec<Envelope> {
    replica.handle_message(
        Time(now),
        Envelope {
            from: NodeId(from),
            to: NodeId(1),
            message,
        },
    );
    let mut shell = StoreShell {
        store,
        sent: Vec::new(),
    };
    drive(replica, &mut shell).expect("the disk works");
    shell.sent
}

fn vote_granted(sent: &[Envelope]) -> Option<bool> {
    sent.iter().find_map(|e| match e.message {
        Message::RequestVoteResponse { granted, .. } => Some(granted),
        _ => None,
    })
}

fn restart(store: LogStore<MemDisk>, crash_seed: u64) -> (Replica, LogStore<MemDisk>) {
    let mut disk = store.into_disk();
    disk.crash(&mut ChaCha8Rng::seed_from_u64(crash_seed));
    let (store, recovered) = LogStore::open(disk).expect("recovers");
    (
        Replica::new(config(1, 3), recovered, Time(0)).expect("starts"),
        store,
    )
}

#[test]
fn a_restarted_replica_keeps_the_vote_it_gave() {
    for crash_seed in 0..20 {
        let (mut store, recovered) = LogStore::open(MemDisk::new()).unwrap();
        let mut replica = Replica::new(config(1, 3), recovered, Time(0)).unwrap();
        let request = |term| Message::RequestVote {
            term: Term(term),
            last_log_index: LogIndex(1),
            last_log_term: Term(0),
            leadership_transfer: false,
        };
        let sent = handle(&mut replica, &mut store, 10, 2, request(5));
        assert_eq!(vote_granted(&sent), Some(true), "n1 votes for n2 in term 5");

        let (mut replica, mut store) = restart(store, crash_seed);
        assert_eq!(replica.term(), Term(5));
        assert_eq!(replica.voted_for(), Some(NodeId(2)));
        let sent = handle(&mut replica, &mut store, 20, 3, request(5));
        assert_eq!(
            vote_granted(&sent),
            Some(false),
            "no second vote in term 5 after a crash"
        );
        let sent = handle(&mut replica, &mut store, 30, 2, request(5));
        assert_eq!(
            vote_granted(&sent),
            Some(true),
            "the same candidate may ask again"
        );
    }
}

#[test]
fn a_restarted_replica_keeps_the_entries_it_acknowledged() {
    let (mut store, recovered) = LogStore::open(MemDisk::new()).unwrap();
    let mut replica = Replica::new(config(1, 3), recovered, Time(0)).unwrap();
    let entries = (1..=3)
        .map(|index| chat_core::entry::Entry {
            term: Term(2),
            index: LogIndex(index),
            payload: chat_core::entry::EntryPayload::Noop {
                timestamp: Time(index),
            },
        })
        .collect();
    let append = Message::AppendEntries {
        term: Term(2),
        prev_log_index: LogIndex(0),
        prev_log_term: Term(0),
        entries,
        leader_commit: LogIndex(1),
    };
    let sent = handle(&mut replica, &mut store, 10, 2, append);
    assert!(sent.iter().any(|e| matches!(
        e.message,
        Message::AppendEntriesResponse {
            success: true,
            index: LogIndex(3),
            ..
        }
    )));
    let (replica, _store) = restart(store, 7);
    assert_eq!(
        replica.last_log_index(),
        LogIndex(3),
        "acknowledged entries survive"
    );
    assert_eq!(replica.term(), Term(2));
}
