//! The storage test suite, written once and run against every [`Disk`]: core runs it
//! over [`crate::storage::MemDisk`], the node over real files. Enabled in core's own
//! tests and, for other crates, by the `testing` feature.
//!
//! Also the helpers the crash tests and the simulator share: a reference [`Model`] of
//! what a store must hold, and seeded [`random_script`]s of persists like a replica
//! issues them.

mod suite;

pub use suite::*;

use crate::app::{Auth, Command};
use crate::entry::{Entry, EntryPayload, HardState, Persist, Proposal, Snapshot, SnapshotMeta};
use crate::snapshot_source::SnapshotSource;
use crate::storage::{Disk, LogStore, Recovered, StorageError, StoreConfig};
use crate::types::{LogIndex, NodeId, Term, Time};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// Small segments, so that a few dozen entries exercise rollover and compaction.
pub const TEST_SEGMENT_BYTES_MAX: u64 = 1024;

/// Snapshots are checked at recovery in reads of this many bytes: an odd size, so that
/// every snapshot of the suite crosses several reads at unaligned edges.
pub const TEST_SNAPSHOT_READ_BYTES: usize = 97;

pub fn test_config() -> StoreConfig {
    StoreConfig {
        segment_bytes_max: TEST_SEGMENT_BYTES_MAX,
        snapshot_read_bytes: TEST_SNAPSHOT_READ_BYTES,
        // The suite's snapshots are arbitrary bytes, not states.
        decode_snapshot_state: false,
    }
}

/// An entry carrying a chat `Send` whose body is `body_bytes` long.
pub fn send_entry(index: u64, term: u64, body_bytes: usize) -> Entry {
    let body: String = (0..body_bytes)
        .map(|k| char::from(b'a' + ((index as usize + k) % 26) as u8))
        .collect();
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Command(Proposal {
            session: None,
            timestamp: Time(index * 1_000),
            command: Command::Send {
                auth: Auth {
                    user: "alice".to_string(),
                    generation: 1,
                    token_epoch: 0,
                },
                to: "bob".to_string(),
                body,
            },
        }),
    }
}

/// `count` entries from `first` on, in `term`, with bodies of random length.
pub fn entries(rng: &mut impl Rng, first: u64, term: u64, count: u64) -> Vec<Entry> {
    (first..first + count)
        .map(|index| send_entry(index, term, rng.random_range(0..120)))
        .collect()
}

pub fn snapshot_at(index: u64, term: u64, data: Vec<u8>) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            last_index: LogIndex(index),
            last_term: Term(term),
        },
        data: std::sync::Arc::new(data),
    }
}

/// What a store must hold after a sequence of persists: the semantics of [`Persist`]
/// written as plainly as possible.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, by index.
    pub entries: BTreeMap<u64, Entry>,
}

impl Model {
    pub fn apply(&mut self, p: &Persist) {
        if let Some(snapshot) = &p.snapshot {
            let last = snapshot.meta.last_index.0;
            self.entries.retain(|&index, _| index > last);
            self.snapshot = Some(snapshot.clone());
        }
        if let Some(from) = p.truncate_from {
            self.entries.retain(|&index, _| index < from.0);
        }
        for entry in &p.entries {
            self.entries.insert(entry.index.0, entry.clone());
        }
        if let Some(hard_state) = p.hard_state {
            self.hard_state = hard_state;
        }
    }

    pub fn snapshot_last(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.meta.last_index.0)
    }

    pub fn last_index(&self) -> u64 {
        self.entries
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.snapshot_last())
    }

    /// The term of the entry at `index`, or of the snapshot if it ends there.
    fn term_at(&self, index: u64) -> u64 {
        match self.entries.get(&index) {
            Some(entry) => entry.term.0,
            None => self.snapshot.as_ref().map_or(0, |s| s.meta.last_term.0),
        }
    }

    pub fn recovered(&self) -> Recovered {
        Recovered {
            hard_state: self.hard_state,
            snapshot: self.snapshot.as_ref().map(SnapshotSource::in_memory),
            snapshot_state: None,
            entries: self.entries.values().cloned().collect(),
        }
    }
}

/// The model after each prefix of `script`: element `k` is the state after `k` persists.
pub fn models_of(script: &[Persist]) -> Vec<Model> {
    let mut model = Model::default();
    let mut models = vec![model.clone()];
    for p in script {
        model.apply(p);
        models.push(model.clone());
    }
    models
}

/// A seeded sequence of persists shaped like a replica's: appends of all sizes, term
/// changes and votes, conflicting suffixes replaced, compaction by snapshot, and
/// snapshots installed past the end of the log.
pub fn random_script(seed: u64, persist_count: usize) -> Vec<Persist> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut model = Model::default();
    let mut term = 1;
    let mut script = Vec::with_capacity(persist_count);
    while script.len() < persist_count {
        let p = random_persist(&mut rng, &model, &mut term);
        model.apply(&p);
        script.push(p);
    }
    script
}

fn random_persist(rng: &mut ChaCha8Rng, model: &Model, term: &mut u64) -> Persist {
    let last = model.last_index();
    let snapshot_last = model.snapshot_last();
    let has_log = last > snapshot_last;
    let data_bytes = rng.random_range(0..300);
    let data: Vec<u8> = (0..data_bytes).map(|_| rng.random()).collect();
    let mut p = Persist::default();
    match rng.random_range(0..100) {
        0..50 => {
            let count = rng.random_range(1..=8);
            p.entries = entries(rng, last + 1, *term, count);
        }
        50..58 => {
            let count = rng.random_range(30..=80);
            p.entries = entries(rng, last + 1, *term, count);
        }
        58..68 => {
            *term += 1;
            let vote = NodeId(rng.random_range(1..=5));
            p.hard_state = Some(hard_state(*term, Some(vote)));
            if rng.random_bool(0.5) {
                p.entries = entries(rng, last + 1, *term, 1);
            }
        }
        68..80 if has_log => {
            // A new leader overwrote a suffix.
            let from = rng.random_range(snapshot_last + 1..=last);
            *term += 1;
            let count = rng.random_range(1..=6);
            p.hard_state = Some(hard_state(*term, None));
            p.truncate_from = Some(LogIndex(from));
            p.entries = entries(rng, from, *term, count);
        }
        80..88 if has_log => {
            let through = rng.random_range(snapshot_last + 1..=last);
            p.snapshot = Some(snapshot_at(through, model.term_at(through), data));
            if rng.random_bool(0.5) {
                p.entries = entries(rng, last + 1, *term, 2);
            }
        }
        88..94 => {
            // A leader's snapshot past the end of the log replaces all of it.
            let through = last + rng.random_range(1..=10);
            *term += 1;
            p.hard_state = Some(hard_state(*term, None));
            p.snapshot = Some(snapshot_at(through, *term, data));
            p.truncate_from = Some(LogIndex(snapshot_last + 1));
            if rng.random_bool(0.5) {
                p.entries = entries(rng, through + 1, *term, 3);
            }
        }
        94..100 if has_log => {
            // A snapshot inside the log whose suffix conflicts with the leader's.
            let through = rng.random_range(snapshot_last + 1..=last);
            p.snapshot = Some(snapshot_at(through, model.term_at(through), data));
            *term += 1;
            p.hard_state = Some(hard_state(*term, None));
            p.truncate_from = Some(LogIndex(through + 1));
            p.entries = entries(rng, through + 1, *term, 2);
        }
        _ => p.entries = entries(rng, last + 1, *term, 1),
    }
    p
}

fn hard_state(term: u64, voted_for: Option<NodeId>) -> HardState {
    HardState {
        term: Term(term),
        voted_for,
    }
}

/// Copies every file of `source` into `target` without syncing: the copy is only read.
pub fn copy_files<S: Disk, T: Disk>(source: &S, target: &mut T) -> Result<(), StorageError> {
    for file in source.list()? {
        let bytes = source.read_all(&file)?;
        target.create(&file)?;
        target.write_at(&file, 0, &bytes)?;
    }
    Ok(())
}

/// Flips the bits in `mask` of one byte, through the trait, so any disk can be damaged.
pub fn flip_byte<D: Disk>(
    disk: &mut D,
    file: &str,
    offset: u64,
    mask: u8,
) -> Result<(), StorageError> {
    let mut byte = [0];
    disk.read_at(file, offset, &mut byte)?;
    disk.write_at(file, offset, &[byte[0] ^ mask])?;
    Ok(())
}

/// How the suite gets disks: `fresh` makes an empty one, `reopen` turns a disk whose
/// store was dropped into one as a restarted process would see it.
pub struct Harness<D: Disk> {
    fresh: Box<dyn FnMut() -> D>,
    reopen: Box<dyn FnMut(D) -> D>,
    /// How many random corruption cases to run: fewer where a case costs real I/O.
    pub corruption_cases: u64,
}

impl<D: Disk> Harness<D> {
    pub fn new(
        fresh: impl FnMut() -> D + 'static,
        reopen: impl FnMut(D) -> D + 'static,
    ) -> Harness<D> {
        Harness {
            fresh: Box::new(fresh),
            reopen: Box::new(reopen),
            corruption_cases: 500,
        }
    }

    pub fn with_corruption_cases(mut self, cases: u64) -> Harness<D> {
        self.corruption_cases = cases;
        self
    }

    pub fn fresh_disk(&mut self) -> D {
        (self.fresh)()
    }

    /// The one place the suite opens a store.
    pub fn open(&mut self, disk: D) -> Result<(LogStore<D>, Recovered), StorageError> {
        LogStore::open_with(disk, test_config())
    }

    /// Drops the store as a crash-free restart would and recovers.
    pub fn restart(
        &mut self,
        store: LogStore<D>,
    ) -> Result<(LogStore<D>, Recovered), StorageError> {
        let disk = (self.reopen)(store.into_disk());
        self.open(disk)
    }
}
