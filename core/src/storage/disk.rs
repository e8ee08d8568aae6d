//! The one seam between storage and the medium. Everything storage does to bytes goes
//! through this trait, so the simulator's [`crate::storage::MemDisk`] and the node's
//! file-backed disk run the same format and recovery code.

use crate::snapshot_source::ReadBytes;
use crate::storage::error::DiskError;
use std::sync::Arc;

/// A flat directory of files (names are single path components).
///
/// Durability contract, which both implementations obey and recovery relies on:
/// - `write_at`, `truncate` and `create`'s content reach the medium only after
///   `sync(file)` returns; until then a crash may lose, keep, or tear them.
/// - `create`, `rename` and `remove` change the directory; they survive a crash only
///   after `sync_dir` returns. `rename` replaces the target atomically: after a crash the
///   target is the old file or the new one, never a mix.
/// - Reads see every write so far, synced or not (as the page cache does).
pub trait Disk {
    /// The names of every file, sorted.
    fn list(&self) -> Result<Vec<String>, DiskError>;
    fn len(&self, file: &str) -> Result<u64, DiskError>;
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, file: &str, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;

    fn read_all(&self, file: &str) -> Result<Vec<u8>, DiskError> {
        let len_bytes = self.len(file)?;
        let len = usize::try_from(len_bytes).map_err(|_| DiskError::Io {
            op: "read",
            file: file.to_string(),
            message: format!("{len_bytes} bytes do not fit in memory"),
        })?;
        let mut buf = vec![0; len];
        self.read_at(file, 0, &mut buf)?;
        Ok(buf)
    }

    /// A reader of `file` as it is now, usable from any thread for as long as it is
    /// kept, and unaffected by a later rename over the file or its removal (as an open
    /// file descriptor is). Only for files no longer written in place (a committed
    /// snapshot). By default a copy of the bytes; the node's disk opens the file.
    fn open_reader(&self, file: &str) -> Result<Arc<dyn ReadBytes>, DiskError> {
        Ok(Arc::new(self.read_all(file)?))
    }

    /// Creates an empty file, or empties an existing one.
    fn create(&mut self, file: &str) -> Result<(), DiskError>;
    /// Writes at `offset`; a gap past the end reads as zeros.
    fn write_at(&mut self, file: &str, offset: u64, data: &[u8]) -> Result<(), DiskError>;
    fn truncate(&mut self, file: &str, len: u64) -> Result<(), DiskError>;
    /// Makes the file's content durable.
    fn sync(&mut self, file: &str) -> Result<(), DiskError>;
    /// Atomically replaces `target` (if any) with `source`.
    fn rename(&mut self, source: &str, target: &str) -> Result<(), DiskError>;
    fn remove(&mut self, file: &str) -> Result<(), DiskError>;
    /// Makes every earlier `create`, `rename` and `remove` durable.
    fn sync_dir(&mut self) -> Result<(), DiskError>;
}

/// A borrowed disk is a disk, so a caller can keep its disk when opening fails (the
/// simulator crashes a replica during recovery and recovers again).
impl<D: Disk + ?Sized> Disk for &mut D {
    fn list(&self) -> Result<Vec<String>, DiskError> {
        (**self).list()
    }
    fn len(&self, file: &str) -> Result<u64, DiskError> {
        (**self).len(file)
    }
    fn read_at(&self, file: &str, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        (**self).read_at(file, offset, buf)
    }
    fn read_all(&self, file: &str) -> Result<Vec<u8>, DiskError> {
        (**self).read_all(file)
    }
    fn open_reader(&self, file: &str) -> Result<Arc<dyn ReadBytes>, DiskError> {
        (**self).open_reader(file)
    }
    fn create(&mut self, file: &str) -> Result<(), DiskError> {
        (**self).create(file)
    }
    fn write_at(&mut self, file: &str, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        (**self).write_at(file, offset, data)
    }
    fn truncate(&mut self, file: &str, len: u64) -> Result<(), DiskError> {
        (**self).truncate(file, len)
    }
    fn sync(&mut self, file: &str) -> Result<(), DiskError> {
        (**self).sync(file)
    }
    fn rename(&mut self, source: &str, target: &str) -> Result<(), DiskError> {
        (**self).rename(source, target)
    }
    fn remove(&mut self, file: &str) -> Result<(), DiskError> {
        (**self).remove(file)
    }
    fn sync_dir(&mut self) -> Result<(), DiskError> {
        (**self).sync_dir()
    }
}
