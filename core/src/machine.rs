//! The replicated state: the chat state machine, the client session table, and log time.
//! This is what a snapshot holds and what every replica must agree on.

use crate::app::ChatState;
use crate::consensus::Config;
use crate::digest::{fold64, ItemHasher, ItemKind};
use crate::entry::{Snapshot, SnapshotMeta};
use crate::membership::Membership;
use crate::session::SessionTable;
use crate::snapshot_source::{SnapshotSource, SourceReader};
use crate::types::Time;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    pub chat: ChatState,
    pub sessions: SessionTable,
    /// The timestamp of the last applied entry.
    pub log_time: Time,
    /// The membership as of the last applied entry (the one in force may be newer: see
    /// [`crate::membership`]). Empty until the founding entry is applied.
    pub membership: Membership,
}

/// The most bytes a state decoded from a reader may claim: a snapshot file's record
/// holds at most `u32::MAX` bytes.
const SNAPSHOT_DECODE_BYTES_MAX: usize = u32::MAX as usize;

/// Why [`MachineState::decode_verified`] gave no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifiedDecodeError {
    #[error("reading the snapshot: {0}")]
    Read(String),
    /// The bytes are not those the checksum was computed over: damage.
    #[error("the snapshot's bytes do not match its checksum")]
    ChecksumMismatch,
    /// The bytes match their checksum but are not a state.
    #[error("the snapshot's bytes are not a state: {0}")]
    Undecodable(String),
}

impl MachineState {
    pub fn new(config: &Config) -> MachineState {
        MachineState {
            chat: ChatState::new(),
            sessions: SessionTable::new(
                config.sessions_max,
                config.sessions_per_user_max,
                config.session_expiry_us,
            ),
            log_time: Time(0),
            membership: Membership::default(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain data structures into a Vec cannot fail.
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("in-memory encoding cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<MachineState, String> {
        let (state, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| e.to_string())?;
        if read != bytes.len() {
            return Err(format!(
                "{} trailing bytes after the state",
                bytes.len() - read
            ));
        }
        Ok(state)
    }

    /// Decodes the state where its source holds it, a buffer at a time (see
    /// [`SourceReader`]): what recovery does with the snapshot file.
    pub fn decode_from(source: &SnapshotSource, read_bytes: usize) -> Result<MachineState, String> {
        let mut reader = SourceReader::new(source, read_bytes);
        // The bytes were checksummed, but a reader (unlike a slice) cannot refuse a
        // length claim larger than what is left: bound what a damaged claim can allocate
        // by the largest snapshot a file can hold.
        let config = bincode::config::standard().with_limit::<{ SNAPSHOT_DECODE_BYTES_MAX }>();
        let decoded = bincode::serde::decode_from_reader(&mut reader, config);
        if let Some(error) = reader.failed.take() {
            return Err(format!("reading the snapshot: {error}"));
        }
        let state = decoded.map_err(|e| e.to_string())?;
        match reader.remaining_bytes() {
            0 => Ok(state),
            trailing => Err(format!("{trailing} trailing bytes after the state")),
        }
    }

    /// Decodes the state where its source holds it and checks the source's checksum over
    /// the same bytes, in one pass: what recovery does with the snapshot file. A
    /// separate checksum pass first read the file twice (at a million messages, 275 MB
    /// more to copy from the page cache on every node), and a byte that changed between
    /// the two passes went unseen. The checksum is checked whether or not the bytes
    /// decode, so damage is told apart from bytes that are intact but not a state.
    pub fn decode_verified(
        source: &SnapshotSource,
        read_bytes: usize,
    ) -> Result<MachineState, VerifiedDecodeError> {
        let mut reader = SourceReader::new(source, read_bytes);
        // The limit bounds what a damaged length claim can ask for (bincode refuses it
        // before allocating) by the largest record; not tighter, because a claim counts
        // a value's size in memory (8 bytes for a one-byte varint), not its encoding.
        let config = bincode::config::standard().with_limit::<{ SNAPSHOT_DECODE_BYTES_MAX }>();
        let decoded: Result<MachineState, _> =
            bincode::serde::decode_from_reader(&mut reader, config);
        if let Some(error) = reader.failed.take() {
            return Err(VerifiedDecodeError::Read(error));
        }
        let trailing = reader.remaining_bytes();
        match reader.checksum_matches() {
            Err(error) => return Err(VerifiedDecodeError::Read(error)),
            Ok(false) => return Err(VerifiedDecodeError::ChecksumMismatch),
            Ok(true) => {}
        }
        let state = decoded.map_err(|e| VerifiedDecodeError::Undecodable(e.to_string()))?;
        match trailing {
            0 => Ok(state),
            trailing => Err(VerifiedDecodeError::Undecodable(format!(
                "{trailing} trailing bytes after the state"
            ))),
        }
    }

    /// A hash of the whole replicated state, stable across machines and builds, in O(1):
    /// the chat state's and the session table's incremental digests with the log time and
    /// the membership
    /// (see [`crate::digest`]). Decoding rebuilds the digests from the items, so a state
    /// and its snapshot image have the same hash.
    pub fn state_hash(&self) -> u64 {
        fold64(
            ItemHasher::new(ItemKind::MachineState)
                .u128(self.chat.digest_value())
                .u128(self.sessions.digest_value())
                .u64(self.log_time.0)
                .encoded(&self.membership)
                .finish(),
        )
    }

    /// Accounts, stored messages and sessions: what a recomputation of the hash visits.
    pub fn item_count(&self) -> u64 {
        (self.chat.user_count() + self.chat.message_count() + self.sessions.len()) as u64
    }

    /// Whether the incremental digests equal a recomputation from scratch, item by item.
    /// Linear in the whole state: for tests, the simulator's end of run, and sampled
    /// checks in debug builds. A mutation that forgets to update a digest fails here.
    pub fn check_hash(&self) -> Result<(), String> {
        self.chat.check_digest()?;
        self.sessions.check_digest()
    }
}

/// What a replica hands its shell to save (`Ready::snapshot_to_save`): its state as of
/// `meta`, a clone that shares every account, message and session with the live state
/// (see [`ChatState`]), so taking one costs the core thread a pointer per account and
/// per session, whatever the number of messages. The shell encodes it
/// ([`SnapshotImage::encode`]) and writes it away from the core thread; the live state
/// changes meanwhile by copying what it touches, never the image.
#[derive(Clone, Debug)]
pub struct SnapshotImage {
    pub meta: SnapshotMeta,
    pub state: MachineState,
}

impl SnapshotImage {
    /// The snapshot's bytes: linear in the whole state, so never on the core thread.
    pub fn encode(&self) -> Snapshot {
        let mut data = self.state.encode();
        // The replica keeps these bytes until the next snapshot; the growth of the
        // buffer while encoding left up to as much again in spare capacity.
        data.shrink_to_fit();
        Snapshot {
            meta: self.meta.clone(),
            data: Arc::new(data),
        }
    }

    /// The length [`SnapshotImage::encode`] would produce, counted without a buffer
    /// (the simulator's slow disk charges by the byte before the save completes).
    pub fn encoded_size_bytes(&self) -> u64 {
        let mut counter = bincode::enc::write::SizeWriter::default();
        // Counting plain data structures cannot fail.
        bincode::serde::encode_into_writer(&self.state, &mut counter, bincode::config::standard())
            .expect("in-memory encoding cannot fail");
        counter.bytes_written as u64
    }
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}
