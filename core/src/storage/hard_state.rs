//! Term and vote, kept in two checksummed copies that are updated one after the other.
//!
//! Each copy is synced before the other is touched, so at every instant at least one
//! copy is intact and holds the newest synced value or the one being written; the copy
//! with the higher sequence number wins. Because both copies normally hold the same
//! value, damage to either one alone loses nothing: term and vote never go backwards.

use crate::entry::HardState;
use crate::storage::disk::Disk;
use crate::storage::error::{CorruptReason, StorageError};
use crate::storage::record::{
    decode_header, decode_payload, encode_header, encode_record, read_record, HeaderError,
    RecordRead, FORMAT_VERSION, HEADER_BYTES, MAGIC_HARD_STATE, RECORD_HEADER_BYTES,
};
use serde::{Deserialize, Serialize};

pub const HARD_STATE_FILE: &str = "hard_state";
/// Only used to create the file atomically the first time.
pub const HARD_STATE_TMP_FILE: &str = "hard_state.tmp";
const SLOT_BYTES: usize = 64;
const SLOT_PAYLOAD_BYTES_MAX: usize = SLOT_BYTES - RECORD_HEADER_BYTES;
const FILE_BYTES: usize = HEADER_BYTES + 2 * SLOT_BYTES;

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Slot {
    sequence: u64,
    hard_state: HardState,
}

#[derive(Debug)]
pub struct HardStateFile {
    sequence: u64,
    current: HardState,
    exists: bool,
    buf: Vec<u8>,
}

impl HardStateFile {
    pub fn current(&self) -> HardState {
        self.current
    }

    /// The hard state on disk, or the default (term 0, no vote) on a fresh disk.
    pub fn recover<D: Disk>(disk: &D, files: &[String]) -> Result<HardStateFile, StorageError> {
        let mut file = HardStateFile {
            sequence: 0,
            current: HardState::default(),
            exists: false,
            buf: Vec::with_capacity(FILE_BYTES),
        };
        if !files.iter().any(|f| f == HARD_STATE_FILE) {
            return Ok(file);
        }
        let bytes = disk.read_all(HARD_STATE_FILE)?;
        let corrupt = |offset, reason| StorageError::corrupt(HARD_STATE_FILE, offset, reason);
        match decode_header(&bytes, MAGIC_HARD_STATE) {
            Ok(_) => {}
            Err(HeaderError::Short | HeaderError::Bad) => {
                return Err(corrupt(0, CorruptReason::BadHeader))
            }
            Err(HeaderError::Version(found)) => {
                return Err(StorageError::UnsupportedVersion {
                    file: HARD_STATE_FILE.to_string(),
                    found,
                    supported: FORMAT_VERSION,
                })
            }
        }
        if bytes.len() != FILE_BYTES {
            let reason = CorruptReason::BadFileLength {
                len_bytes: bytes.len() as u64,
                expected_bytes: FILE_BYTES as u64,
            };
            return Err(corrupt(0, reason));
        }
        let newest = bytes[HEADER_BYTES..]
            .chunks_exact(SLOT_BYTES)
            .filter_map(parse_slot)
            .max_by_key(|slot| slot.sequence)
            .ok_or_else(|| corrupt(HEADER_BYTES as u64, CorruptReason::NoValidHardState))?;
        file.sequence = newest.sequence;
        file.current = newest.hard_state;
        file.exists = true;
        Ok(file)
    }

    /// Makes `hard_state` durable when it returns.
    pub fn save<D: Disk>(
        &mut self,
        disk: &mut D,
        hard_state: HardState,
    ) -> Result<(), StorageError> {
        let slot = Slot {
            sequence: self.sequence + 1,
            hard_state,
        };
        if self.exists {
            for copy in 0..2 {
                self.buf.clear();
                encode_slot(&mut self.buf, &slot)?;
                let offset = (HEADER_BYTES + copy * SLOT_BYTES) as u64;
                disk.write_at(HARD_STATE_FILE, offset, &self.buf)?;
                disk.sync(HARD_STATE_FILE)?;
            }
        } else {
            // The first time, the whole file appears atomically, so that an existing file
            // always has a valid header and at least one valid copy.
            self.buf.clear();
            encode_header(&mut self.buf, MAGIC_HARD_STATE, 0);
            encode_slot(&mut self.buf, &slot)?;
            encode_slot(&mut self.buf, &slot)?;
            disk.create(HARD_STATE_TMP_FILE)?;
            disk.write_at(HARD_STATE_TMP_FILE, 0, &self.buf)?;
            disk.sync(HARD_STATE_TMP_FILE)?;
            disk.rename(HARD_STATE_TMP_FILE, HARD_STATE_FILE)?;
            disk.sync_dir()?;
            self.exists = true;
        }
        self.sequence = slot.sequence;
        self.current = hard_state;
        Ok(())
    }
}

fn encode_slot(buf: &mut Vec<u8>, slot: &Slot) -> Result<(), StorageError> {
    let start = buf.len();
    encode_record(buf, slot, SLOT_PAYLOAD_BYTES_MAX).map_err(StorageError::InvalidRequest)?;
    buf.resize(start + SLOT_BYTES, 0);
    Ok(())
}

/// A copy is valid when its record checks out and its padding is zero: any damage
/// anywhere in the copy disqualifies it.
fn parse_slot(bytes: &[u8]) -> Option<Slot> {
    let RecordRead::Valid { payload, end } = read_record(bytes, 0, SLOT_PAYLOAD_BYTES_MAX) else {
        return None;
    };
    if bytes[end..].iter().any(|&b| b != 0) {
        return None;
    }
    decode_payload(payload).ok()
}
