//! Errors are values: a disk that fails, or bytes that do not check out, never panic.

use thiserror::Error;

/// A failure reported by a [`crate::storage::Disk`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DiskError {
    #[error("{file}: no such file")]
    NotFound { file: String },
    #[error("{file:?}: not a valid file name (one path component, no separators)")]
    InvalidName { file: String },
    #[error("{file}: read of {len} bytes at offset {offset} runs past the end ({file_len} bytes)")]
    OutOfBounds {
        file: String,
        offset: u64,
        len: u64,
        file_len: u64,
    },
    /// An operating-system error, or one injected by a test disk.
    #[error("{op} {file}: {message}")]
    Io {
        op: &'static str,
        file: String,
        message: String,
    },
}

/// What exactly is wrong with bytes that recovery refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CorruptReason {
    #[error("bad file header")]
    BadHeader,
    #[error("file name does not match its header")]
    NameMismatch,
    #[error("record length {0} is out of range")]
    BadLength(u64),
    #[error("record runs past the end of the file")]
    PartialRecord,
    #[error("checksum mismatch")]
    BadChecksum,
    #[error("record does not decode: {0}")]
    Undecodable(String),
    #[error("expected entry {expected}, found entry {found}")]
    NonContiguous { expected: u64, found: u64 },
    #[error("the log starts at entry {log_first} but the snapshot ends at entry {snapshot_last}")]
    GapAfterSnapshot { log_first: u64, snapshot_last: u64 },
    #[error("file is {len_bytes} bytes, expected {expected_bytes}")]
    BadFileLength { len_bytes: u64, expected_bytes: u64 },
    #[error("{0} unexpected bytes after the last record")]
    TrailingBytes(u64),
    #[error("both copies of the hard state are damaged")]
    NoValidHardState,
}

/// Everything [`crate::storage::LogStore`] can fail with. Each message is one line that
/// says what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StorageError {
    #[error(
        "storage: corrupt data in {file} at offset {offset} ({reason}); this replica's disk is \
         damaged: wipe its data dir and let it rejoin from its peers"
    )]
    Corrupt {
        file: String,
        offset: u64,
        reason: CorruptReason,
    },
    #[error(
        "storage: {file} has format version {found}, this build reads version {supported}: run a \
         build that reads it"
    )]
    UnsupportedVersion {
        file: String,
        found: u32,
        supported: u32,
    },
    #[error(
        "storage: disk failed: {0}; stop this replica, check the disk, then restart it (recovery \
         resumes from what was synced)"
    )]
    Disk(#[from] DiskError),
    /// After a failed write nobody knows what reached the medium (a failed fsync may have
    /// dropped dirty pages), so the only safe way on is a restart that recovers from disk.
    #[error("storage: an earlier write failed, so the disk state is unknown; restart the replica to recover")]
    Poisoned,
    #[error("storage: invalid request (a bug in the caller): {0}")]
    InvalidRequest(String),
}

impl StorageError {
    pub(crate) fn corrupt(file: &str, offset: u64, reason: CorruptReason) -> StorageError {
        StorageError::Corrupt {
            file: file.to_string(),
            offset,
            reason,
        }
    }
}
