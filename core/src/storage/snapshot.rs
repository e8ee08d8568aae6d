//! The snapshot file: a header and one record holding the whole [`Snapshot`]. It is
//! replaced atomically (temp file, sync, rename, directory sync), so after any crash
//! the file is the old snapshot or the new one in full.

use crate::entry::Snapshot;
use crate::storage::disk::Disk;
use crate::storage::error::{CorruptReason, StorageError};
use crate::storage::record::{
    decode_header, decode_payload, encode_header, encode_record, read_record, HeaderError,
    RecordRead, FORMAT_VERSION, HEADER_BYTES, MAGIC_SNAPSHOT,
};

pub const SNAPSHOT_FILE: &str = "snapshot";
pub const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";
/// A replica's own snapshot, written and synced away from the replica's thread, waiting
/// for [`LogStore::commit_staged_snapshot`](crate::storage::LogStore) to rename it into
/// place. Removed at recovery: a staged snapshot never committed is not a snapshot.
pub const SNAPSHOT_STAGED_FILE: &str = "snapshot.staged";
/// The record length field is 32 bits.
pub const SNAPSHOT_BYTES_MAX: usize = u32::MAX as usize;

pub fn recover<D: Disk>(disk: &D, files: &[String]) -> Result<Option<Snapshot>, StorageError> {
    if !files.iter().any(|f| f == SNAPSHOT_FILE) {
        return Ok(None);
    }
    let bytes = disk.read_all(SNAPSHOT_FILE)?;
    let corrupt =
        |offset: usize, reason| StorageError::corrupt(SNAPSHOT_FILE, offset as u64, reason);
    let last_index = match decode_header(&bytes, MAGIC_SNAPSHOT) {
        Ok(param) => param,
        Err(HeaderError::Short | HeaderError::Bad) => {
            return Err(corrupt(0, CorruptReason::BadHeader))
        }
        Err(HeaderError::Version(found)) => {
            return Err(StorageError::UnsupportedVersion {
                file: SNAPSHOT_FILE.to_string(),
                found,
                supported: FORMAT_VERSION,
            })
        }
    };
    let payload = match read_record(&bytes, HEADER_BYTES, SNAPSHOT_BYTES_MAX) {
        RecordRead::Valid { payload, end } if end == bytes.len() => payload,
        RecordRead::Valid { end, .. } => {
            let reason = CorruptReason::TrailingBytes((bytes.len() - end) as u64);
            return Err(corrupt(end, reason));
        }
        RecordRead::Partial => return Err(corrupt(HEADER_BYTES, CorruptReason::PartialRecord)),
        RecordRead::BadLength(len) => {
            return Err(corrupt(HEADER_BYTES, CorruptReason::BadLength(len)))
        }
        RecordRead::BadChecksum => return Err(corrupt(HEADER_BYTES, CorruptReason::BadChecksum)),
    };
    let snapshot: Snapshot = decode_payload(payload)
        .map_err(|error| corrupt(HEADER_BYTES, CorruptReason::Undecodable(error)))?;
    if snapshot.meta.last_index.0 != last_index {
        return Err(corrupt(0, CorruptReason::NameMismatch));
    }
    Ok(Some(snapshot))
}

/// Replaces the snapshot; durable when it returns. `buf` is scratch space.
pub fn save<D: Disk>(
    disk: &mut D,
    snapshot: &Snapshot,
    buf: &mut Vec<u8>,
) -> Result<(), StorageError> {
    write_synced(disk, SNAPSHOT_TMP_FILE, snapshot, buf)?;
    disk.rename(SNAPSHOT_TMP_FILE, SNAPSHOT_FILE)?;
    disk.sync_dir()?;
    Ok(())
}

/// Writes `snapshot` to the staged file and syncs it: the slow part of saving a
/// snapshot (its bytes), which a shell may run on another thread with its own handle on
/// the directory. It replaces nothing; [`LogStore::commit_staged_snapshot`] does, after.
///
/// [`LogStore::commit_staged_snapshot`]: crate::storage::LogStore::commit_staged_snapshot
pub fn stage<D: Disk>(
    disk: &mut D,
    snapshot: &Snapshot,
    buf: &mut Vec<u8>,
) -> Result<(), StorageError> {
    write_synced(disk, SNAPSHOT_STAGED_FILE, snapshot, buf)
}

fn write_synced<D: Disk>(
    disk: &mut D,
    file: &str,
    snapshot: &Snapshot,
    buf: &mut Vec<u8>,
) -> Result<(), StorageError> {
    buf.clear();
    encode_header(buf, MAGIC_SNAPSHOT, snapshot.meta.last_index.0);
    encode_record(buf, snapshot, SNAPSHOT_BYTES_MAX)
        .map_err(|reason| StorageError::InvalidRequest(format!("snapshot {reason}")))?;
    disk.create(file)?;
    disk.write_at(file, 0, buf)?;
    disk.sync(file)?;
    Ok(())
}

/// The last index named in the staged file's header, if it holds a whole header.
pub fn staged_last_index<D: Disk>(disk: &D) -> Result<Option<u64>, StorageError> {
    let mut header = [0u8; HEADER_BYTES];
    if disk.len(SNAPSHOT_STAGED_FILE)? < HEADER_BYTES as u64 {
        return Ok(None);
    }
    disk.read_at(SNAPSHOT_STAGED_FILE, 0, &mut header)?;
    Ok(decode_header(&header, MAGIC_SNAPSHOT).ok())
}
