//! Where a leader reads the snapshot it streams to a follower.
//!
//! A snapshot is the size of the whole state (284 bytes per stored message at 256-byte
//! bodies), and a replica needs its bytes only to send InstallSnapshot chunks, which is
//! rare. So the replica keeps a [`SnapshotSource`]: the meta, the length, the checksum
//! and a reader. The shell gives it one that reads the snapshot file it just made
//! durable (the node: an open file, read chunk by chunk; the file's bytes are never all
//! in memory), and the replica falls back to bytes it holds in memory only where it has
//! nothing else yet (a snapshot it just received, before the shell attaches the file).
//!
//! The checksum travels with every chunk and the receiver checks it over the whole
//! snapshot before installing it. It is the CRC32C of the snapshot file's record
//! payload, so a file-backed source reads it from the file instead of computing it, and
//! a disk that rotted the file after it was written is caught by the follower, not
//! installed.

use crate::entry::{Snapshot, SnapshotMeta};
use std::fmt;
use std::sync::Arc;

/// Reads bytes of one immutable blob from any thread. Errors are words for a log line:
/// a read that fails is retried later and reported by the shell's metrics.
pub trait ReadBytes: fmt::Debug + Send + Sync {
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String>;
}

impl ReadBytes for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let start = usize::try_from(offset).ok();
        let range = start.and_then(|start| Some(start..start.checked_add(buf.len())?));
        match range.and_then(|range| self.get(range)) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(format!(
                "read of {} bytes at {offset} runs past the end ({} bytes)",
                buf.len(),
                self.len()
            )),
        }
    }
}

/// A snapshot the replica can stream: what it is, how long, its checksum, and a reader
/// of its bytes (offset 0 is the first byte of the encoded state). Cheap to clone.
#[derive(Clone, Debug)]
pub struct SnapshotSource {
    pub meta: SnapshotMeta,
    pub len_bytes: u64,
    /// [`snapshot_checksum`] of the bytes.
    pub checksum: u32,
    /// Whether the bytes are read from the shell's file (`false`: held in memory).
    pub file_backed: bool,
    reader: Arc<dyn ReadBytes>,
}

impl SnapshotSource {
    /// Bytes held in memory: shares them, and computes the checksum (a linear pass at
    /// CRC32C speed, several GB/s; done once per snapshot received).
    pub fn in_memory(snapshot: &Snapshot) -> SnapshotSource {
        SnapshotSource {
            meta: snapshot.meta.clone(),
            len_bytes: snapshot.data.len() as u64,
            checksum: snapshot_checksum(&snapshot.meta, &snapshot.data),
            file_backed: false,
            reader: Arc::new(SharedBytes(Arc::clone(&snapshot.data))),
        }
    }

    /// Bytes behind a reader the shell opened, with the checksum it found stored.
    pub fn from_file(
        meta: SnapshotMeta,
        len_bytes: u64,
        checksum: u32,
        reader: Arc<dyn ReadBytes>,
    ) -> SnapshotSource {
        SnapshotSource {
            meta,
            len_bytes,
            checksum,
            file_backed: true,
            reader,
        }
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.reader.read_at(offset, buf)
    }

    /// The snapshot with every byte in memory: for checks and tests.
    pub fn to_snapshot(&self) -> Result<Snapshot, String> {
        Ok(Snapshot {
            meta: self.meta.clone(),
            data: Arc::new(self.read_all()?),
        })
    }

    /// Every byte, into memory: for checks and tests, not for the transfer.
    pub fn read_all(&self) -> Result<Vec<u8>, String> {
        let len = usize::try_from(self.len_bytes)
            .map_err(|_| format!("{} bytes do not fit in memory", self.len_bytes))?;
        let mut bytes = vec![0; len];
        self.read_at(0, &mut bytes)?;
        Ok(bytes)
    }
}

/// Bytes shared with a [`Snapshot`] (the `Arc` itself, so no copy).
#[derive(Debug)]
struct SharedBytes(Arc<Vec<u8>>);

impl ReadBytes for SharedBytes {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.0.read_at(offset, buf)
    }
}

/// The encoding of what precedes a snapshot's bytes in its file record, and in the
/// checksum: exactly what serde makes of a [`Snapshot`] up to its data (the meta, then
/// the length of the byte sequence).
pub fn encode_snapshot_prefix(meta: &SnapshotMeta, len_bytes: u64, out: &mut Vec<u8>) {
    // Encoding two plain values into a Vec cannot fail.
    bincode::serde::encode_into_std_write((meta, len_bytes), out, bincode::config::standard())
        .expect("in-memory encoding cannot fail");
}

/// The CRC32C of a snapshot's prefix and bytes: the snapshot file's record checksum.
pub fn snapshot_checksum(meta: &SnapshotMeta, data: &[u8]) -> u32 {
    let mut prefix = Vec::with_capacity(32);
    encode_snapshot_prefix(meta, data.len() as u64, &mut prefix);
    crc32c::crc32c_append(crc32c::crc32c(&prefix), data)
}

/// Reads a [`SnapshotSource`] front to back through a buffer (the node: 1 MiB,
/// `Config::snapshot_read_bytes`),
/// for bincode to decode from: a snapshot is decoded where it lies (the node: its file)
/// without first reading all of its bytes into memory. At a million messages those
/// bytes were a 275 MB buffer whose page faults cost a restart more than decoding it.
pub struct SourceReader<'s> {
    source: &'s SnapshotSource,
    buf: Vec<u8>,
    /// The unread bytes of `buf` are `buf[pos..end]`.
    pos: usize,
    end: usize,
    /// Where the next read from the source starts.
    offset: u64,
    /// The first read error, kept for the caller: bincode sees only "unexpected end".
    pub failed: Option<String>,
    /// The CRC32C of the source's bytes read so far (`..offset`).
    data_crc: u32,
}

impl<'s> SourceReader<'s> {
    pub fn new(source: &'s SnapshotSource, buffer_bytes: usize) -> SourceReader<'s> {
        let capacity = usize::try_from(source.len_bytes)
            .unwrap_or(buffer_bytes)
            .clamp(1, buffer_bytes.max(1));
        SourceReader {
            source,
            buf: vec![0; capacity],
            pos: 0,
            end: 0,
            offset: 0,
            failed: None,
            data_crc: 0,
        }
    }

    /// Reads what the decoder left of the source (all of it, for a reader nothing was
    /// decoded from) and returns whether the record's checksum (the prefix, then every
    /// byte of the source) is the one the source claims: the same bytes that were
    /// decoded are the ones checked, in one pass.
    pub fn checksum_matches(&mut self) -> Result<bool, String> {
        self.pos = self.end;
        while self.refill() {
            self.pos = self.end;
        }
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        let mut prefix = Vec::with_capacity(32);
        encode_snapshot_prefix(&self.source.meta, self.source.len_bytes, &mut prefix);
        // `len_bytes` came from a 32-bit record length, so it fits a usize here.
        let len = usize::try_from(self.source.len_bytes).unwrap_or(usize::MAX);
        let record_crc = crc32c::crc32c_combine(crc32c::crc32c(&prefix), self.data_crc, len);
        Ok(record_crc == self.source.checksum)
    }

    /// Bytes of the source not yet handed to the decoder.
    pub fn remaining_bytes(&self) -> u64 {
        (self.source.len_bytes - self.offset) + (self.end - self.pos) as u64
    }

    /// Moves the unread bytes to the front and reads more after them, up to the buffer's
    /// size or the source's end. Returns whether any byte was added.
    fn refill(&mut self) -> bool {
        if self.failed.is_some() {
            return false;
        }
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        let room = (self.buf.len() - self.end) as u64;
        let take = room.min(self.source.len_bytes - self.offset) as usize;
        if take == 0 {
            return false;
        }
        let range = self.end..self.end + take;
        if let Err(error) = self
            .source
            .read_at(self.offset, &mut self.buf[range.clone()])
        {
            self.failed = Some(error);
            return false;
        }
        self.data_crc = crc32c::crc32c_append(self.data_crc, &self.buf[range]);
        self.offset += take as u64;
        self.end += take;
        true
    }
}

impl bincode::de::read::Reader for SourceReader<'_> {
    fn read(&mut self, bytes: &mut [u8]) -> Result<(), bincode::error::DecodeError> {
        let mut filled = 0;
        while filled < bytes.len() {
            if self.pos == self.end && !self.refill() {
                return Err(bincode::error::DecodeError::UnexpectedEnd {
                    additional: bytes.len() - filled,
                });
            }
            let take = (self.end - self.pos).min(bytes.len() - filled);
            bytes[filled..filled + take].copy_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            filled += take;
        }
        Ok(())
    }

    /// The fast path bincode takes for varints: the next `n` bytes without a copy.
    fn peek_read(&mut self, n: usize) -> Option<&[u8]> {
        if self.end - self.pos < n && n <= self.buf.len() {
            self.refill();
        }
        if self.end - self.pos < n {
            // Near the end, or bigger than the buffer: `read` says what is missing.
            return None;
        }
        self.buf.get(self.pos..self.pos + n)
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.end);
    }
}
