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
use crate::machine::{MachineState, SnapshotImage, VerifiedDecodeError};
use crate::snapshot_source::{encode_snapshot_prefix, ReadBytes, SnapshotSource, SourceReader};
use crate::storage::disk::Disk;
use crate::storage::error::{CorruptReason, DiskError, StorageError};
use crate::storage::record::{
    decode_header, encode_header, HeaderError, FORMAT_VERSION, HEADER_BYTES, MAGIC_SNAPSHOT,
    RECORD_HEADER_BYTES,
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

/// The committed snapshot, checked in full: header, record framing, and the checksum
/// over every byte, read a buffer at a time from a reader of the file (never the whole
/// file in memory: at a million messages that buffer's page faults cost more than
/// decoding). With `decode_state`, the state is decoded from the same reads that the
/// checksum is computed over ([`MachineState::decode_verified`]), and returned too;
/// otherwise the bytes are opaque here and checked by a pass of their own. Returns a
/// source the replica later streams to followers.
pub fn recover<D: Disk>(
    disk: &D,
    files: &[String],
    read_bytes: usize,
    decode_state: bool,
) -> Result<(Option<SnapshotSource>, Option<MachineState>), StorageError> {
    if !files.iter().any(|f| f == SNAPSHOT_FILE) {
        return Ok((None, None));
    }
    let source = open(disk)?;
    let corrupt = |reason| StorageError::corrupt(SNAPSHOT_FILE, HEADER_BYTES as u64, reason);
    let read_error = |message| -> StorageError {
        DiskError::Io {
            op: "read",
            file: SNAPSHOT_FILE.to_string(),
            message,
        }
        .into()
    };
    if !decode_state {
        // The same reader the decoding uses, asked only for the checksum.
        return match SourceReader::new(&source, read_bytes).checksum_matches() {
            Ok(true) => Ok((Some(source), None)),
            Ok(false) => Err(corrupt(CorruptReason::BadChecksum)),
            Err(message) => Err(read_error(message)),
        };
    }
    match MachineState::decode_verified(&source, read_bytes) {
        Ok(state) => Ok((Some(source), Some(state))),
        Err(VerifiedDecodeError::Read(message)) => Err(read_error(message)),
        Err(VerifiedDecodeError::ChecksumMismatch) => Err(corrupt(CorruptReason::BadChecksum)),
        // Intact bytes that are not a state are not damage (a bug, or a format this
        // build does not read): the replica decodes them again and says so, as it did
        // before the store decoded them.
        Err(VerifiedDecodeError::Undecodable(_)) => Ok((Some(source), None)),
    }
}

/// Opens the committed snapshot file: checks its header, record framing, prefix and
/// length; not the checksum, which needs every byte read (see [`recover`]; the file
/// this process just wrote and synced needs none).
fn open<D: Disk>(disk: &D) -> Result<SnapshotSource, StorageError> {
    let file_len = disk.len(SNAPSHOT_FILE)?;
    let reader = disk.open_reader(SNAPSHOT_FILE)?;
    let corrupt =
        |offset: usize, reason| StorageError::corrupt(SNAPSHOT_FILE, offset as u64, reason);
    let read_error = |message| DiskError::Io {
        op: "read",
        file: SNAPSHOT_FILE.to_string(),
        message,
    };
    // Header, record header and a prefix (meta and a varint length) fit in this much.
    let mut head = vec![0u8; HEADER_BYTES + RECORD_HEADER_BYTES + 64];
    head.truncate(
        head.len()
            .min(usize::try_from(file_len).unwrap_or(usize::MAX)),
    );
    reader.read_at(0, &mut head).map_err(read_error)?;
    let header_last_index = match decode_header(&head, MAGIC_SNAPSHOT) {
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
    let record = &head[HEADER_BYTES..];
    if record.len() < RECORD_HEADER_BYTES {
        return Err(corrupt(HEADER_BYTES, CorruptReason::PartialRecord));
    }
    // Four bytes each, just checked present.
    let payload_len = u32::from_le_bytes(record[..4].try_into().expect("4 bytes"));
    let checksum = u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"));
    if payload_len == 0 {
        return Err(corrupt(HEADER_BYTES, CorruptReason::BadLength(0)));
    }
    let payload_start = HEADER_BYTES + RECORD_HEADER_BYTES;
    let record_end = payload_start as u64 + u64::from(payload_len);
    if record_end > file_len {
        return Err(corrupt(HEADER_BYTES, CorruptReason::PartialRecord));
    }
    if record_end < file_len {
        let reason = CorruptReason::TrailingBytes(file_len - record_end);
        return Err(corrupt(record_end as usize, reason));
    }
    let (meta, data_start) = decode_prefix(&head[payload_start..], payload_len as usize)
        .map_err(|error| corrupt(HEADER_BYTES, CorruptReason::Undecodable(error)))?;
    if meta.last_index.0 != header_last_index {
        return Err(corrupt(0, CorruptReason::NameMismatch));
    }
    let data_offset = (payload_start + data_start) as u64;
    let len_bytes = u64::from(payload_len) - data_start as u64;
    Ok(SnapshotSource::from_file(
        meta,
        len_bytes,
        checksum,
        Arc::new(FileSlice {
            reader,
            start: data_offset,
            len: len_bytes,
        }),
    ))
}

/// Decodes the part of a snapshot payload before its data: the meta and the data's
/// length, which must be exactly the rest of the payload. Returns the meta and where the
/// data starts.
fn decode_prefix(payload: &[u8], payload_len: usize) -> Result<(SnapshotMeta, usize), String> {
    let ((meta, data_len), used): ((SnapshotMeta, u64), usize) =
        bincode::serde::decode_from_slice(payload, bincode::config::standard())
            .map_err(|error| error.to_string())?;
    let Some(rest) = payload_len.checked_sub(used) else {
        return Err(format!(
            "the meta takes {used} bytes of a {payload_len}-byte record"
        ));
    };
    let rest = rest as u64;
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
    let prefix = RecordPrefix::new(&snapshot.meta, data.len() as u64, buf)?;
    let crc = crc32c::crc32c_append(prefix.crc, data);
    prefix.seal(buf, crc);
    disk.create(file)?;
    disk.write_at(file, 0, buf)?;
    disk.write_at(file, buf.len() as u64, data)?;
    disk.sync(file)?;
    Ok(())
}

/// The part of a snapshot file before the state's bytes, built in a caller's buffer:
/// the file header, the record header (length, then a checksum that is filled in last),
/// the meta and the data length.
struct RecordPrefix {
    record_start: usize,
    /// The CRC32C of the payload so far (meta and length).
    crc: u32,
}

impl RecordPrefix {
    fn new(
        meta: &SnapshotMeta,
        data_len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<RecordPrefix, StorageError> {
        buf.clear();
        encode_header(buf, MAGIC_SNAPSHOT, meta.last_index.0);
        let record_start = buf.len();
        buf.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
        let payload_start = buf.len();
        encode_snapshot_prefix(meta, data_len, buf);
        let payload_len = (buf.len() - payload_start) as u64 + data_len;
        if payload_len > SNAPSHOT_BYTES_MAX as u64 {
            return Err(StorageError::InvalidRequest(format!(
                "snapshot encodes to {payload_len} bytes; a record holds at most \
                 {SNAPSHOT_BYTES_MAX}"
            )));
        }
        // Bounded by SNAPSHOT_BYTES_MAX (u32::MAX) just above.
        buf[record_start..record_start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        Ok(RecordPrefix {
            record_start,
            crc: crc32c::crc32c(&buf[payload_start..]),
        })
    }

    /// Writes the whole payload's checksum into the record header.
    fn seal(&self, buf: &mut [u8], crc: u32) {
        let at = self.record_start + 4;
        buf[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Encodes `image` straight into the staged file and syncs it: the state's bytes are
/// never all in memory (a buffer of [`STREAM_BUFFER_BYTES`] at a time), so saving a
/// snapshot costs no memory in proportion to the state. One pass over the state: the
/// record's prefix holds the data's length, which is known only at the end, so the data
/// is checksummed on its own as it goes and the prefix's checksum is combined with it
/// last (`crc32c_combine`); where the data starts is known as soon as the first buffer
/// fills, because every length from [`STREAM_BUFFER_BYTES`] up to the largest record
/// encodes to the same number of bytes. (A counting pass first cost about a tenth of a
/// save at a million messages: 648-676 ms of CPU with it, 592-608 ms without, in the
/// `state_memory` example.) Returns the length of the state's bytes.
pub fn stage_image<D: Disk>(disk: &mut D, image: &SnapshotImage) -> Result<u64, StorageError> {
    disk.create(SNAPSHOT_STAGED_FILE)?;
    let mut writer = StreamWriter {
        disk: &mut *disk,
        meta: &image.meta,
        data_offset: None,
        buf: Vec::with_capacity(STREAM_BUFFER_BYTES),
        data_crc: 0,
        written: 0,
        failed: None,
    };
    let encoded = bincode::serde::encode_into_std_write(
        &image.state,
        &mut writer,
        bincode::config::standard(),
    );
    if let Some(error) = writer.failed.take() {
        return Err(error.into());
    }
    if let Err(error) = encoded {
        return Err(StorageError::InvalidRequest(format!(
            "snapshot state: {error}"
        )));
    }
    let data_len = writer.written + writer.buf.len() as u64;
    let mut head = Vec::with_capacity(HEADER_BYTES + RECORD_HEADER_BYTES + 32);
    let prefix = RecordPrefix::new(&image.meta, data_len, &mut head)?;
    match writer.data_offset {
        None => writer.data_offset = Some(head.len() as u64),
        Some(offset) if offset != head.len() as u64 => {
            return Err(StorageError::InvalidRequest(format!(
                "the snapshot's data was placed at offset {offset}, but its {data_len}-byte \
                 length puts it at {}",
                head.len()
            )));
        }
        Some(_) => {}
    }
    writer.flush_buf()?;
    // Within SNAPSHOT_BYTES_MAX (u32::MAX), checked by `RecordPrefix::new`.
    let crc = crc32c::crc32c_combine(prefix.crc, writer.data_crc, data_len as usize);
    prefix.seal(&mut head, crc);
    disk.write_at(SNAPSHOT_STAGED_FILE, 0, &head)?;
    disk.sync(SNAPSHOT_STAGED_FILE)?;
    Ok(data_len)
}

/// How much of a streamed snapshot is buffered between writes to the disk.
pub const STREAM_BUFFER_BYTES: usize = 1 << 20;

// `stage_image` places the data of a state that outgrows the buffer as if its length
// were STREAM_BUFFER_BYTES: every length from there up to u32::MAX takes the same five
// bytes in bincode's varint (lengths above u16::MAX).
const _: () = assert!(STREAM_BUFFER_BYTES > u16::MAX as usize);

/// `std::io::Write` over the staged file, checksumming the data that passes (on its own:
/// the prefix's checksum is combined with it at the end). A disk error is kept as it is
/// (the encoder sees an `io::Error` and stops).
struct StreamWriter<'d, D: Disk> {
    disk: &'d mut D,
    meta: &'d SnapshotMeta,
    /// Where the data starts in the file: known once the first buffer is full, or at
    /// the end for a state that fits in one.
    data_offset: Option<u64>,
    buf: Vec<u8>,
    data_crc: u32,
    /// Data bytes written to the file so far.
    written: u64,
    failed: Option<DiskError>,
}

impl<D: Disk> StreamWriter<'_, D> {
    fn flush_buf(&mut self) -> Result<(), StorageError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // Refused as soon as it outgrows a record, not after writing all of it.
        let data_len = self.written + self.buf.len() as u64;
        if data_len > SNAPSHOT_BYTES_MAX as u64 {
            return Err(StorageError::InvalidRequest(format!(
                "the snapshot's state passed {data_len} bytes; a record holds at most \
                 {SNAPSHOT_BYTES_MAX}"
            )));
        }
        let data_offset = match self.data_offset {
            Some(offset) => offset,
            None => {
                let mut head = Vec::with_capacity(HEADER_BYTES + RECORD_HEADER_BYTES + 32);
                RecordPrefix::new(self.meta, STREAM_BUFFER_BYTES as u64, &mut head)?;
                let offset = head.len() as u64;
                self.data_offset = Some(offset);
                offset
            }
        };
        self.disk
            .write_at(SNAPSHOT_STAGED_FILE, data_offset + self.written, &self.buf)?;
        self.data_crc = crc32c::crc32c_append(self.data_crc, &self.buf);
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl<D: Disk> std::io::Write for StreamWriter<'_, D> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + bytes.len() > STREAM_BUFFER_BYTES {
            if let Err(error) = self.flush_buf() {
                let words = error.to_string();
                if let StorageError::Disk(error) = error {
                    self.failed = Some(error);
                }
                return Err(std::io::Error::other(words));
            }
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A reader of the committed snapshot's state bytes, with the meta, length and checksum
/// its file records: what a leader streams to followers instead of holding the bytes.
/// Reads only the file's prefix here (this process just wrote and synced the file); the
/// reader keeps the file open, so it reads these bytes even after a newer snapshot is
/// renamed over them.
pub fn open_source<D: Disk>(disk: &D) -> Result<Option<SnapshotSource>, StorageError> {
    match disk.len(SNAPSHOT_FILE) {
        Ok(_) => open(disk).map(Some),
        Err(DiskError::NotFound { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// The state's bytes within the snapshot file.
#[derive(Debug)]
struct FileSlice {
    reader: Arc<dyn ReadBytes>,
    start: u64,
    len: u64,
}

impl ReadBytes for FileSlice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(format!(
                "read of {} bytes at {offset} runs past the snapshot's {} bytes",
                buf.len(),
                self.len
            ));
        }
        self.reader.read_at(self.start + offset, buf)
    }
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
