//! [`LogStore`]: the one object a replica's shell uses to make a [`Persist`] durable and
//! to recover after a restart.

use crate::entry::{Entry, HardState, Persist, Snapshot, SnapshotMeta};
use crate::machine::{MachineState, SnapshotImage};
use crate::snapshot_source::SnapshotSource;
use crate::storage::disk::Disk;
use crate::storage::error::StorageError;
use crate::storage::hard_state::{HardStateFile, HARD_STATE_TMP_FILE};
use crate::storage::record::{encode_record, HEADER_BYTES, RECORD_HEADER_BYTES};
use crate::storage::snapshot::{self, SNAPSHOT_FILE, SNAPSHOT_STAGED_FILE, SNAPSHOT_TMP_FILE};
use crate::storage::wal::{Wal, ENTRY_BYTES_MAX, SEGMENT_BYTES_MAX};
use crate::types::LogIndex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Segment rollover threshold; tests lower it to exercise rollover with little data.
    pub segment_bytes_max: u64,
    /// How much of the snapshot file recovery reads at a time to check its checksum
    /// (the simulator lowers it so that every snapshot crosses several reads).
    pub snapshot_read_bytes: usize,
    /// Whether recovery decodes the snapshot's state as it checks the file's checksum,
    /// in one pass over the file ([`Recovered::snapshot_state`]); the bytes must then be
    /// a [`MachineState`]. What replicas do (the node and the simulator): a separate
    /// checksum pass read the file twice, 275 MB more per node to copy at a million
    /// messages, and missed a byte that changed between the passes. Off (the default),
    /// the bytes are opaque to the store, checked by a pass of their own, and the
    /// replica decodes them: the storage tests' snapshots are arbitrary bytes.
    pub decode_snapshot_state: bool,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            snapshot_read_bytes: snapshot::STREAM_BUFFER_BYTES,
            decode_snapshot_state: false,
        }
    }
}

impl StoreConfig {
    /// The default store for a replica: its snapshot's state decoded during recovery.
    pub fn replica() -> StoreConfig {
        StoreConfig {
            decode_snapshot_state: true,
            ..StoreConfig::default()
        }
    }
}

impl Recovered {
    /// The snapshot with its bytes read into memory: for checks and tests, which compare
    /// what was recovered with what was written.
    pub fn snapshot_bytes(&self) -> Result<Option<Snapshot>, String> {
        self.snapshot
            .as_ref()
            .map(SnapshotSource::to_snapshot)
            .transpose()
    }
}

/// A segment must hold at least a header and one small record.
const SEGMENT_BYTES_MIN: u64 = (HEADER_BYTES + RECORD_HEADER_BYTES + 1) as u64;

/// What a replica finds on disk when it starts.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The committed snapshot, checked, as a reader of its file: the replica streams it
    /// to followers.
    pub snapshot: Option<SnapshotSource>,
    /// The state decoded from `snapshot` while its checksum was checked (one pass over
    /// the file). `None` with a snapshot: the replica decodes it itself (tests that
    /// build a `Recovered` by hand).
    pub snapshot_state: Option<MachineState>,
    /// The entries after the snapshot (after index 0 without one), contiguous.
    pub entries: Vec<Entry>,
}

/// The durable state of one replica over a [`Disk`]: log segments, hard state, snapshot.
///
/// After any error from a write the store is poisoned: what reached the medium is
/// unknown (a failed fsync may have dropped dirty pages), so every later call fails
/// until the replica restarts and recovers from what is on disk.
#[derive(Debug)]
pub struct LogStore<D: Disk> {
    disk: D,
    wal: Wal,
    hard_state: HardStateFile,
    snapshot_meta: Option<SnapshotMeta>,
    /// The records of the persist in progress, encoded before any disk operation so
    /// that an entry that cannot be stored is refused before anything changes.
    records: Vec<u8>,
    record_ends: Vec<usize>,
    scratch: Vec<u8>,
    poisoned: bool,
}

impl<D: Disk> LogStore<D> {
    pub fn open(disk: D) -> Result<(LogStore<D>, Recovered), StorageError> {
        LogStore::open_with(disk, StoreConfig::default())
    }

    /// Recovers what `disk` holds: verifies every checksum, cuts a torn log tail, finishes
    /// or discards interrupted file replacements, and makes those repairs durable.
    pub fn open_with(
        mut disk: D,
        config: StoreConfig,
    ) -> Result<(LogStore<D>, Recovered), StorageError> {
        if config.snapshot_read_bytes == 0 {
            return Err(StorageError::InvalidRequest(
                "snapshot_read_bytes must be positive".to_string(),
            ));
        }
        if config.segment_bytes_max < SEGMENT_BYTES_MIN {
            return Err(StorageError::InvalidRequest(format!(
                "segment_bytes_max {} is below {SEGMENT_BYTES_MIN}",
                config.segment_bytes_max
            )));
        }
        let files = disk.list()?;
        let mut leftovers = false;
        for tmp in [HARD_STATE_TMP_FILE, SNAPSHOT_TMP_FILE, SNAPSHOT_STAGED_FILE] {
            if files.iter().any(|f| f == tmp) {
                disk.remove(tmp)?;
                leftovers = true;
            }
        }
        if leftovers {
            disk.sync_dir()?;
        }
        let hard_state = HardStateFile::recover(&disk, &files)?;
        let (snapshot, snapshot_state) = snapshot::recover(
            &disk,
            &files,
            config.snapshot_read_bytes,
            config.decode_snapshot_state,
        )?;
        let snapshot_last = snapshot
            .as_ref()
            .map_or(LogIndex::ZERO, |s| s.meta.last_index);
        let (wal, entries) = Wal::recover(&mut disk, snapshot_last, config.segment_bytes_max)?;
        let recovered = Recovered {
            hard_state: hard_state.current(),
            snapshot,
            snapshot_state,
            entries,
        };
        let store = LogStore {
            disk,
            wal,
            hard_state,
            snapshot_meta: recovered.snapshot.as_ref().map(|s| s.meta.clone()),
            records: Vec::new(),
            record_ends: Vec::new(),
            scratch: Vec::new(),
            poisoned: false,
        };
        Ok((store, recovered))
    }

    /// Performs every part of `p` and makes it durable before returning.
    ///
    /// Costs one file sync for the log however many entries `p` carries (group commit),
    /// plus, only when they change, two syncs for the hard state, three for a snapshot,
    /// and one for a truncation or a directory change (segment rollover or removal).
    ///
    /// A crash during the call leaves any state between the one before and the one
    /// after, never a mix that neither implies: the kept part of the log is a prefix of
    /// the new log, and nothing covered only by the new snapshot is gone unless the
    /// snapshot is durable.
    pub fn persist(&mut self, p: &Persist) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        // A malformed Persist is refused before anything is written, so it cannot damage
        // the log; the replica asserts the same shape before it emits one.
        if let Err(problem) = p.check_well_formed() {
            return Err(StorageError::InvalidRequest(problem));
        }
        self.check_and_encode(p)?;
        let result = self.apply(p);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Puts the snapshot that [`snapshot::stage`] wrote and synced in place of the
    /// current one, durably, then drops the log segments it covers. `meta` is the staged
    /// snapshot's; a stage older than the snapshot held (one installed from the leader
    /// meanwhile) is discarded instead. Returns whether it was committed.
    ///
    /// A crash at any point leaves the old snapshot and every segment, or the new
    /// snapshot: segments are removed only after the rename is durable.
    pub fn commit_staged_snapshot(&mut self, meta: &SnapshotMeta) -> Result<bool, StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        if meta.last_index <= self.snapshot_last() {
            self.disk.remove(SNAPSHOT_STAGED_FILE)?;
            return Ok(false);
        }
        let staged = snapshot::staged_last_index(&self.disk)?;
        if staged != Some(meta.last_index.0) {
            return Err(StorageError::InvalidRequest(format!(
                "the staged snapshot is through {staged:?}, not {}",
                meta.last_index
            )));
        }
        let result = self.commit_staged(meta);
        if result.is_err() {
            self.poisoned = true;
        }
        result.map(|()| true)
    }

    fn commit_staged(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        self.disk.rename(SNAPSHOT_STAGED_FILE, SNAPSHOT_FILE)?;
        self.disk.sync_dir()?;
        self.snapshot_meta = Some(meta.clone());
        self.wal.compact_through(&mut self.disk, meta.last_index)?;
        self.wal.sync(&mut self.disk)
    }

    /// Stages and commits `snapshot` on this store's own disk, in one call: what a shell
    /// without a second thread (the simulator) does when the replica asks to save one.
    pub fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<bool, StorageError> {
        if snapshot.meta.last_index <= self.snapshot_last() {
            return Ok(false);
        }
        snapshot::stage(&mut self.disk, snapshot, &mut self.scratch)?;
        self.commit_staged_snapshot(&snapshot.meta)
    }

    /// Stages and commits a snapshot of `image`, encoded straight into the file (see
    /// [`snapshot::stage_image`]), in one call: the simulator's path, which the node
    /// splits between its snapshot thread (staging) and its core thread (the commit).
    pub fn save_image(&mut self, image: &SnapshotImage) -> Result<bool, StorageError> {
        if image.meta.last_index <= self.snapshot_last() {
            return Ok(false);
        }
        snapshot::stage_image(&mut self.disk, image)?;
        self.commit_staged_snapshot(&image.meta)
    }

    /// A reader of the committed snapshot (see [`snapshot::open_source`]), for the
    /// replica to stream it from the file instead of holding its bytes.
    pub fn snapshot_source(&self) -> Result<Option<SnapshotSource>, StorageError> {
        if self.snapshot_meta.is_none() {
            return Ok(None);
        }
        snapshot::open_source(&self.disk)
    }

    /// Validates `p` against the current state and encodes its entries.
    fn check_and_encode(&mut self, p: &Persist) -> Result<(), StorageError> {
        let invalid = |message: String| Err(StorageError::InvalidRequest(message));
        let snapshot_last = self.snapshot_last();
        let mut base = snapshot_last;
        let mut last = self.last_index();
        if let Some(snapshot) = &p.snapshot {
            if snapshot.meta.last_index < snapshot_last {
                return invalid(format!(
                    "snapshot through {} is older than the one held, through {snapshot_last}",
                    snapshot.meta.last_index
                ));
            }
            base = snapshot.meta.last_index;
            last = last.max(base);
        }
        if let Some(from) = p.truncate_from {
            last = last.min(from.prev()).max(base);
        }
        if let Some(hard_state) = p.hard_state {
            check_hard_state(self.hard_state.current(), hard_state)
                .map_err(StorageError::InvalidRequest)?;
        }
        self.records.clear();
        self.record_ends.clear();
        let mut expected = last.next();
        for entry in &p.entries {
            if entry.index != expected {
                return invalid(format!(
                    "entry {} does not follow the log, which ends at {}",
                    entry.index, last
                ));
            }
            if let Err(reason) = encode_record(&mut self.records, entry, ENTRY_BYTES_MAX) {
                return invalid(format!("entry {} {reason}", entry.index));
            }
            self.record_ends.push(self.records.len());
            last = expected;
            expected = expected.next();
        }
        Ok(())
    }

    fn apply(&mut self, p: &Persist) -> Result<(), StorageError> {
        let base = p
            .snapshot
            .as_ref()
            .map_or(self.snapshot_last(), |s| s.meta.last_index);
        if let Some(from) = p.truncate_from {
            // Entries above the new snapshot are cut first: the caller disowned them, so
            // losing them early is safe. Entries at or below it stay until the snapshot
            // that covers them is durable.
            let from = from.max(base.next());
            if self.wal.last_index().is_some_and(|last| from <= last) {
                self.wal.truncate_from(&mut self.disk, from)?;
            }
        }
        if let Some(snapshot) = &p.snapshot {
            snapshot::save(&mut self.disk, snapshot, &mut self.scratch)?;
            self.snapshot_meta = Some(snapshot.meta.clone());
            self.wal
                .compact_through(&mut self.disk, snapshot.meta.last_index)?;
        }
        if let Some(first) = p.entries.first() {
            self.wal.append(
                &mut self.disk,
                first.index,
                &self.records,
                &self.record_ends,
            )?;
        }
        if let Some(hard_state) = p.hard_state {
            if hard_state != self.hard_state.current() {
                self.hard_state.save(&mut self.disk, hard_state)?;
            }
        }
        self.wal.sync(&mut self.disk)
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state.current()
    }

    pub fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot_meta.as_ref()
    }

    /// The first index the log can hold: right after the snapshot.
    pub fn first_index(&self) -> LogIndex {
        self.snapshot_last().next()
    }

    /// The last entry held, or the snapshot's last index when the log is empty.
    pub fn last_index(&self) -> LogIndex {
        let snapshot_last = self.snapshot_last();
        self.wal
            .last_index()
            .map_or(snapshot_last, |last| last.max(snapshot_last))
    }

    pub fn segment_count(&self) -> usize {
        self.wal.segment_count()
    }

    fn snapshot_last(&self) -> LogIndex {
        self.snapshot_meta
            .as_ref()
            .map_or(LogIndex::ZERO, |meta| meta.last_index)
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// For the simulator to inject faults between calls.
    pub fn disk_mut(&mut self) -> &mut D {
        &mut self.disk
    }

    pub fn into_disk(self) -> D {
        self.disk
    }
}

/// Raft's rule: the term never goes backwards, and a vote once cast stands for its term.
fn check_hard_state(current: HardState, next: HardState) -> Result<(), String> {
    if next.term < current.term {
        return Err(format!(
            "term {} would go back from {}",
            next.term, current.term
        ));
    }
    if next.term == current.term
        && current.voted_for.is_some()
        && next.voted_for != current.voted_for
    {
        return Err(format!(
            "vote in term {} would change from {:?} to {:?}",
            next.term, current.voted_for, next.voted_for
        ));
    }
    Ok(())
}
