//! The write-ahead log: entries as records in segment files `log-<first index>.seg`.
//!
//! Crash safety rests on two rules about what can be pending (written, not yet synced)
//! when the power goes:
//! - At most one write per segment is pending: a persist writes its records to a segment
//!   in one `write_at`, a new segment's header is synced on its own, and a truncation is
//!   synced before anything is written after it. A crash therefore leaves a prefix of
//!   that one write, so damage followed by an intact record cannot be a torn tail.
//! - Segments change in an order a crash cannot scramble: a segment is synced, and the
//!   directory with it, before the next one is created; the suffix is removed from the
//!   end, one durable removal at a time; prefix segments are removed only once a
//!   durable snapshot covers them, and recovery ignores any that a crash brought back.

use crate::entry::Entry;
use crate::storage::disk::Disk;
use crate::storage::error::{CorruptReason, StorageError};
use crate::storage::record::{
    any_valid_record_after, decode_header, decode_payload, encode_header, encode_record,
    read_record, HeaderError, RecordRead, FORMAT_VERSION, HEADER_BYTES, MAGIC_LOG_SEGMENT,
};
use crate::types::LogIndex;

/// A segment is closed once it holds this many bytes (it may exceed it by one batch
/// record); small enough that removing a compacted prefix frees space soon, large enough
/// that rollover (two extra syncs) is rare.
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// The largest encoded entry the log accepts. Entries are bounded far below this by the
/// chat limits; the bound keeps a damaged length field from asking for gigabytes.
pub const ENTRY_BYTES_MAX: usize = 1 << 20;
const _: () = assert!(ENTRY_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(SEGMENT_BYTES_MAX > HEADER_BYTES as u64);

const SEGMENT_PREFIX: &str = "log-";
const SEGMENT_SUFFIX: &str = ".seg";
const SEGMENT_INDEX_DIGITS: usize = 20;

/// Zero-padded so that names sort by index.
pub fn segment_file_name(first_index: LogIndex) -> String {
    format!("{SEGMENT_PREFIX}{:020}{SEGMENT_SUFFIX}", first_index.0)
}

pub fn parse_segment_file_name(file: &str) -> Option<LogIndex> {
    let digits = file
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_INDEX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index = digits.parse().ok()?;
    // Entry indexes start at 1; no segment is ever named 0.
    (index > 0).then_some(LogIndex(index))
}

/// Appends the record the log stores for `entry` to `buf`: what the benchmark's raw
/// baseline writes, byte for byte.
pub fn encode_entry_record(buf: &mut Vec<u8>, entry: &Entry) -> Result<(), StorageError> {
    encode_record(buf, entry, ENTRY_BYTES_MAX)
        .map(|_| ())
        .map_err(|reason| StorageError::InvalidRequest(format!("entry {} {reason}", entry.index)))
}

#[derive(Debug)]
struct Segment {
    first_index: LogIndex,
    file: String,
    /// Byte offset of each record, so truncation needs no read.
    record_offsets: Vec<u64>,
    len_bytes: u64,
}

impl Segment {
    /// The index before `first_index` when empty (`first_index` is at least 1).
    fn last_index(&self) -> LogIndex {
        LogIndex(self.first_index.0 + self.record_offsets.len() as u64 - 1)
    }
}

#[derive(Debug)]
pub struct Wal {
    /// Contiguous: each segment starts right after the previous one's last entry.
    segments: Vec<Segment>,
    segment_bytes_max: u64,
    /// The last segment has writes that are not yet synced.
    tail_dirty: bool,
    /// Directory operations are not yet synced.
    dir_dirty: bool,
    header: Vec<u8>,
}

impl Wal {
    fn new(segment_bytes_max: u64) -> Wal {
        Wal {
            segments: Vec::new(),
            segment_bytes_max,
            tail_dirty: false,
            dir_dirty: false,
            header: Vec::with_capacity(HEADER_BYTES),
        }
    }

    /// The last entry held, if any; it may lie at or below the snapshot.
    pub fn last_index(&self) -> Option<LogIndex> {
        self.segments.last().map(Segment::last_index)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Reads every segment, checks every record, cuts a torn tail, and returns the
    /// entries after `snapshot_last`, which are contiguous from `snapshot_last + 1`.
    pub fn recover<D: Disk>(
        disk: &mut D,
        snapshot_last: LogIndex,
        segment_bytes_max: u64,
    ) -> Result<(Wal, Vec<Entry>), StorageError> {
        let mut files: Vec<(LogIndex, String)> = disk
            .list()?
            .into_iter()
            .filter_map(|file| parse_segment_file_name(&file).map(|index| (index, file)))
            .collect();
        files.sort();
        let mut wal = Wal::new(segment_bytes_max);

        // A segment followed by one that starts at or before the entry after the snapshot
        // holds only entries the snapshot covers: a compaction a crash interrupted.
        let stale_count = (0..files.len())
            .take_while(|&k| k + 1 < files.len() && files[k + 1].0 <= snapshot_last.next())
            .count();
        for (_, file) in files.drain(..stale_count) {
            disk.remove(&file)?;
            wal.dir_dirty = true;
        }

        let mut entries = Vec::new();
        let file_count = files.len();
        for (k, (first_index, file)) in files.into_iter().enumerate() {
            let is_last = k + 1 == file_count;
            let bytes = disk.read_all(&file)?;
            if is_last && is_torn_creation(&bytes) {
                disk.remove(&file)?;
                wal.dir_dirty = true;
                break;
            }
            check_segment_header(&file, &bytes, first_index)?;
            let expected = match wal.segments.last() {
                Some(previous) => previous.last_index().next(),
                None if first_index > snapshot_last.next() => {
                    let reason = CorruptReason::GapAfterSnapshot {
                        log_first: first_index.0,
                        snapshot_last: snapshot_last.0,
                    };
                    return Err(StorageError::corrupt(&file, 0, reason));
                }
                None => first_index,
            };
            if first_index != expected {
                let reason = CorruptReason::NonContiguous {
                    expected: expected.0,
                    found: first_index.0,
                };
                return Err(StorageError::corrupt(&file, 0, reason));
            }
            let scan = SegmentScan {
                file,
                first_index,
                bytes: &bytes,
                is_last,
                snapshot_last,
            };
            let segment = scan.run(disk, &mut entries, &mut wal.tail_dirty)?;
            wal.segments.push(segment);
        }

        // A log that ends before the snapshot holds nothing the snapshot lacks; dropping
        // it lets the next append start a fresh segment right after the snapshot.
        if wal.last_index().is_some_and(|last| last < snapshot_last) {
            wal.remove_all(disk)?;
        }
        wal.sync(disk)?;
        Ok((wal, entries))
    }

    /// Writes pre-encoded records for the entries from `first_index` on; `records` holds
    /// them back to back and `record_ends[k]` is where record `k` ends. Durable after
    /// [`Wal::sync`].
    pub fn append<D: Disk>(
        &mut self,
        disk: &mut D,
        first_index: LogIndex,
        records: &[u8],
        record_ends: &[usize],
    ) -> Result<(), StorageError> {
        debug_assert!(self
            .last_index()
            .is_none_or(|last| last.next() == first_index));
        let mut start = 0;
        let mut written_count = 0;
        while written_count < record_ends.len() {
            let index = LogIndex(first_index.0 + written_count as u64);
            if self
                .segments
                .last()
                .is_none_or(|tail| tail.len_bytes >= self.segment_bytes_max)
            {
                self.roll(disk, index)?;
            }
            let Some(tail) = self.segments.last_mut() else {
                unreachable!("roll just pushed a segment");
            };
            // Take records until the segment is full, always at least one.
            let base = tail.len_bytes;
            let mut end = start;
            while written_count < record_ends.len() {
                tail.record_offsets.push(base + (end - start) as u64);
                end = record_ends[written_count];
                written_count += 1;
                if base + (end - start) as u64 >= self.segment_bytes_max {
                    break;
                }
            }
            disk.write_at(&tail.file, base, &records[start..end])?;
            tail.len_bytes = base + (end - start) as u64;
            self.tail_dirty = true;
            start = end;
        }
        Ok(())
    }

    /// Closes the tail segment and starts a new one whose first entry is `first_index`.
    fn roll<D: Disk>(&mut self, disk: &mut D, first_index: LogIndex) -> Result<(), StorageError> {
        if let Some(tail) = self.segments.last() {
            // Recovery must never find a later segment after an incomplete earlier one,
            // whatever a crash keeps: the closed segment and every directory entry so far
            // are durable before the next segment exists.
            if self.tail_dirty {
                disk.sync(&tail.file)?;
                self.tail_dirty = false;
            }
            if self.dir_dirty {
                disk.sync_dir()?;
                self.dir_dirty = false;
            }
        }
        let file = segment_file_name(first_index);
        self.header.clear();
        encode_header(&mut self.header, MAGIC_LOG_SEGMENT, first_index.0);
        disk.create(&file)?;
        disk.write_at(&file, 0, &self.header)?;
        // Synced on its own so that the records written next are the only pending write
        // to this file.
        disk.sync(&file)?;
        self.dir_dirty = true;
        self.segments.push(Segment {
            first_index,
            file,
            record_offsets: Vec::new(),
            len_bytes: HEADER_BYTES as u64,
        });
        Ok(())
    }

    /// Discards every entry at or after `index`; durable when it returns.
    pub fn truncate_from<D: Disk>(
        &mut self,
        disk: &mut D,
        index: LogIndex,
    ) -> Result<(), StorageError> {
        // From the end, each removal durable before the next, so that a crash leaves a
        // contiguous prefix of segments.
        while let Some(tail) = self.segments.last() {
            if tail.first_index < index {
                break;
            }
            disk.remove(&tail.file)?;
            disk.sync_dir()?;
            self.dir_dirty = false;
            self.tail_dirty = false;
            self.segments.pop();
        }
        let Some(tail) = self.segments.last_mut() else {
            return Ok(());
        };
        let keep_count = (index.0 - tail.first_index.0) as usize;
        if let Some(&len_bytes) = tail.record_offsets.get(keep_count) {
            disk.truncate(&tail.file, len_bytes)?;
            // Durable before anything is written over the cut: otherwise a crash could
            // keep the new records but not the truncation, leaving stale records after
            // them that look like the log's continuation.
            disk.sync(&tail.file)?;
            self.tail_dirty = false;
            tail.record_offsets.truncate(keep_count);
            tail.len_bytes = len_bytes;
        }
        Ok(())
    }

    /// Removes the segments that hold only entries at or below `index`, which a durable
    /// snapshot covers. The removals become durable with the next [`Wal::sync`]; until
    /// then a crash may bring some back, which recovery ignores.
    pub fn compact_through<D: Disk>(
        &mut self,
        disk: &mut D,
        index: LogIndex,
    ) -> Result<(), StorageError> {
        if self.last_index().is_some_and(|last| last <= index) {
            return self.remove_all(disk);
        }
        let covered_count = (0..self.segments.len())
            .take_while(|&k| {
                k + 1 < self.segments.len() && self.segments[k + 1].first_index <= index.next()
            })
            .count();
        for segment in self.segments.drain(..covered_count) {
            disk.remove(&segment.file)?;
            self.dir_dirty = true;
        }
        Ok(())
    }

    fn remove_all<D: Disk>(&mut self, disk: &mut D) -> Result<(), StorageError> {
        for segment in self.segments.drain(..) {
            disk.remove(&segment.file)?;
            self.dir_dirty = true;
        }
        self.tail_dirty = false;
        Ok(())
    }

    /// Makes everything written so far durable: one file sync for all appends since the
    /// last call (group commit), plus a directory sync if segments came or went.
    pub fn sync<D: Disk>(&mut self, disk: &mut D) -> Result<(), StorageError> {
        if self.tail_dirty {
            if let Some(tail) = self.segments.last() {
                disk.sync(&tail.file)?;
            }
            self.tail_dirty = false;
        }
        if self.dir_dirty {
            disk.sync_dir()?;
            self.dir_dirty = false;
        }
        Ok(())
    }
}

/// A last segment whose header never became durable: its creation was interrupted.
/// The file may be shorter than a header, or zero-filled where a file system extended
/// it without writing the data.
fn is_torn_creation(bytes: &[u8]) -> bool {
    bytes.len() < HEADER_BYTES || bytes.iter().all(|&b| b == 0)
}

fn check_segment_header(
    file: &str,
    bytes: &[u8],
    first_index: LogIndex,
) -> Result<(), StorageError> {
    match decode_header(bytes, MAGIC_LOG_SEGMENT) {
        Ok(param) if param == first_index.0 => Ok(()),
        Ok(_) => Err(StorageError::corrupt(file, 0, CorruptReason::NameMismatch)),
        Err(HeaderError::Short | HeaderError::Bad) => {
            Err(StorageError::corrupt(file, 0, CorruptReason::BadHeader))
        }
        Err(HeaderError::Version(found)) => Err(StorageError::UnsupportedVersion {
            file: file.to_string(),
            found,
            supported: FORMAT_VERSION,
        }),
    }
}

struct SegmentScan<'a> {
    file: String,
    first_index: LogIndex,
    bytes: &'a [u8],
    is_last: bool,
    snapshot_last: LogIndex,
}

impl SegmentScan<'_> {
    /// Checks every record, pushing the entries after the snapshot onto `entries`. In the
    /// last segment a damaged record with nothing intact after it is a torn tail and is
    /// cut off (the cut is synced by the caller via `tail_dirty`); anything else is
    /// corruption.
    fn run<D: Disk>(
        self,
        disk: &mut D,
        entries: &mut Vec<Entry>,
        tail_dirty: &mut bool,
    ) -> Result<Segment, StorageError> {
        let SegmentScan {
            file,
            first_index,
            bytes,
            is_last,
            snapshot_last,
        } = self;
        let mut record_offsets = Vec::new();
        let mut offset = HEADER_BYTES;
        let mut index = first_index;
        while offset < bytes.len() {
            let reason = match read_record(bytes, offset, ENTRY_BYTES_MAX) {
                RecordRead::Valid { payload, end } => {
                    let entry: Entry = decode_payload(payload).map_err(|error| {
                        let reason = CorruptReason::Undecodable(error);
                        StorageError::corrupt(&file, offset as u64, reason)
                    })?;
                    if entry.index != index {
                        let reason = CorruptReason::NonContiguous {
                            expected: index.0,
                            found: entry.index.0,
                        };
                        return Err(StorageError::corrupt(&file, offset as u64, reason));
                    }
                    record_offsets.push(offset as u64);
                    if index > snapshot_last {
                        entries.push(entry);
                    }
                    index = index.next();
                    offset = end;
                    continue;
                }
                RecordRead::Partial => CorruptReason::PartialRecord,
                RecordRead::BadLength(len) => CorruptReason::BadLength(len),
                RecordRead::BadChecksum => CorruptReason::BadChecksum,
            };
            if is_last && !any_valid_record_after(bytes, offset, ENTRY_BYTES_MAX) {
                disk.truncate(&file, offset as u64)?;
                *tail_dirty = true;
                break;
            }
            return Err(StorageError::corrupt(&file, offset as u64, reason));
        }
        Ok(Segment {
            first_index,
            file,
            record_offsets,
            len_bytes: offset as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_by_index_and_parse_back() {
        let names: Vec<String> = [1, 9, 10, 123_456]
            .into_iter()
            .map(|i| segment_file_name(LogIndex(i)))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for name in &names {
            let index = parse_segment_file_name(name).expect("own names parse");
            assert_eq!(&segment_file_name(index), name);
        }
        assert_eq!(parse_segment_file_name("log-1.seg"), None);
        assert_eq!(
            parse_segment_file_name(&segment_file_name(LogIndex(0))),
            None
        );
        assert_eq!(parse_segment_file_name("snapshot"), None);
    }
}
