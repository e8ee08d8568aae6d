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
    buf.clear();
    encode_header(buf, MAGIC_SNAPSHOT, snapshot.meta.last_index.0);
    encode_record(buf, snapshot, SNAPSHOT_BYTES_MAX)
        .map_err(|reason| StorageError::InvalidRequest(format!("snapshot {reason}")))?;
    disk.create(SNAPSHOT_TMP_FILE)?;
    disk.write_at(SNAPSHOT_TMP_FILE, 0, buf)?;
    disk.sync(SNAPSHOT_TMP_FILE)?;
    disk.rename(SNAPSHOT_TMP_FILE, SNAPSHOT_FILE)?;
    disk.sync_dir()?;
    Ok(())
}
