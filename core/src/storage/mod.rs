//! Durable storage for one replica: the write-ahead log, the hard state (term and vote)
//! and the snapshot, encoded over the small [`Disk`] trait.
//!
//! The same format and recovery code run in the simulator (over [`MemDisk`], which can
//! lose, keep or tear unsynced writes and corrupt bytes) and in the node (over real
//! files). Storage never reads a clock and never touches the file system itself.
//!
//! Files in the data directory:
//! - `log-<first index, 20 digits>.seg`: a header, then one record per entry.
//! - `hard_state`: a header and two copies of (sequence, term, vote), updated in turn.
//! - `snapshot`: a header and one record holding the snapshot, replaced atomically.
//!
//! Every header and record carries a CRC32C. Recovery cuts a torn record at the very end
//! of the log and refuses, with [`StorageError::Corrupt`] naming file and offset, any
//! other damage: a replica never serves data its disk did not hold intact.

mod disk;
mod error;
mod hard_state;
mod mem_disk;
mod record;
mod snapshot;
mod store;
mod wal;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;

pub use disk::Disk;
pub use error::{CorruptReason, DiskError, StorageError};
pub use hard_state::{HARD_STATE_FILE, HARD_STATE_TMP_FILE};
pub use mem_disk::{CrashReport, DiskOpKind, DiskStats, MemDisk, WriteFate};
pub use record::FORMAT_VERSION;
pub use snapshot::{
    open_source as open_snapshot_source, stage as stage_snapshot,
    stage_image as stage_snapshot_image, SNAPSHOT_FILE, SNAPSHOT_STAGED_FILE, SNAPSHOT_TMP_FILE,
    STREAM_BUFFER_BYTES,
};
pub use store::{LogStore, Recovered, StoreConfig};
pub use wal::{
    encode_entry_record, parse_segment_file_name, segment_file_name, ENTRY_BYTES_MAX,
    SEGMENT_BYTES_MAX,
};
