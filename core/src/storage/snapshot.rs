//! The snapshot file: a header and one record holding the whole [`Snapshot`]. It is
//! replaced atomically (temp file, sync, rename, directory sync), so after any crash
//! the file is the old snapshot or the new one in full.
//!
//! The record's payload is the bincode of the `Snapshot`: its meta, then its data as
//! length-prefixed bytes. The data is the size of the whole state, so neither writing
//! nor reading copies it: the writer checksums and writes it from where it is, after a
//! small prefix encoded on its own, and recovery takes it out of the bytes read from
//! the file in place.

use crate::entry::{Snapshot, SnapshotMeta};
use crate::storage::disk::Disk;
use crate::storage::error::{CorruptReason, StorageError};
use crate::storage::record::{
    decode_header, encode_header, read_record, HeaderError, RecordRead, FORMAT_VERSION,
    HEADER_BYTES, MAGIC_SNAPSHOT, RECORD_HEADER_BYTES,
};
use std::sync::Arc;

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
    let mut bytes = bytes;
    let payload_len = match read_record(&bytes, HEADER_BYTES, SNAPSHOT_BYTES_MAX) {
        RecordRead::Valid { payload, end } if end == bytes.len() => payload.len(),
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
    let payload_start = HEADER_BYTES + RECORD_HEADER_BYTES;
    let (meta, data_start) = decode_prefix(&bytes[payload_start..], payload_len)
        .map_err(|error| corrupt(HEADER_BYTES, CorruptReason::Undecodable(error)))?;
    if meta.last_index.0 != last_index {
        return Err(corrupt(0, CorruptReason::NameMismatch));
    }
    // The data is the rest of the file: keep the buffer read, moving the data to its
    // front, rather than copying it into a new one.
    bytes.drain(..payload_start + data_start);
    Ok(Some(Snapshot {
        meta,
        data: Arc::new(bytes),
    }))
}

/// Decodes the part of a snapshot payload before its data: the meta and the data's
/// length, which must be exactly the rest of the payload. Returns the meta and where the
/// data starts.
fn decode_prefix(payload: &[u8], payload_len: usize) -> Result<(SnapshotMeta, usize), String> {
    let ((meta, data_len), used): ((SnapshotMeta, u64), usize) =
        bincode::serde::decode_from_slice(payload, bincode::config::standard())
            .map_err(|error| error.to_string())?;
    let rest = (payload_len - used) as u64;
    if data_len != rest {
        return Err(format!(
            "the snapshot data says {data_len} bytes, the record holds {rest}"
        ));
    }
    Ok((meta, used))
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

/// Writes the header and the record of `snapshot` to `file` and syncs it. Only the
/// prefix (header, record header, meta, data length) goes through `buf`; the data is
/// checksummed and written where it is, so `buf` stays small.
fn write_synced<D: Disk>(
    disk: &mut D,
    file: &str,
    snapshot: &Snapshot,
    buf: &mut Vec<u8>,
) -> Result<(), StorageError> {
    let data: &[u8] = &snapshot.data;
    buf.clear();
    encode_header(buf, MAGIC_SNAPSHOT, snapshot.meta.last_index.0);
    let record_start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    let payload_start = buf.len();
    // Exactly what serde makes of a `Snapshot` up to its data: the meta, then the
    // length of the byte sequence (`tests/store.rs` checks the whole against the
    // encoding of the `Snapshot` itself).
    let prefix = (&snapshot.meta, data.len() as u64);
    bincode::serde::encode_into_std_write(prefix, buf, bincode::config::standard())
        .map_err(|error| StorageError::InvalidRequest(format!("snapshot meta: {error}")))?;
    let payload_len = buf.len() - payload_start + data.len();
    if payload_len > SNAPSHOT_BYTES_MAX {
        return Err(StorageError::InvalidRequest(format!(
            "snapshot encodes to {payload_len} bytes; a record holds at most \
             {SNAPSHOT_BYTES_MAX}"
        )));
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[payload_start..]), data);
    // Bounded by SNAPSHOT_BYTES_MAX (u32::MAX) just above.
    buf[record_start..record_start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buf[record_start + 4..payload_start].copy_from_slice(&crc.to_le_bytes());
    disk.create(file)?;
    disk.write_at(file, 0, buf)?;
    disk.write_at(file, buf.len() as u64, data)?;
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
