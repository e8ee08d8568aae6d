//! The replicated state: the chat state machine, the client session table, and log time.
//! This is what a snapshot holds and what every replica must agree on.

use crate::app::ChatState;
use crate::consensus::Config;
use crate::session::SessionTable;
use crate::types::Time;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    pub chat: ChatState,
    pub sessions: SessionTable,
    /// The timestamp of the last applied entry.
    pub log_time: Time,
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

    /// FNV-1a over the canonical encoding: stable across machines and builds.
    pub fn state_hash(&self) -> u64 {
        fnv1a64(&self.encode())
    }
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}
