//! Backup files (`chatctl snapshot save`) and disaster recovery from one
//! (`chatnode restore`).
//!
//! A backup file is a header, core's encoded machine state, and a SHA-256 of both:
//!
//! ```text
//! magic "CHATBAK2" | last_index u64 | last_term u64 | state_hash u64 | data_len u64
//! | data | sha256(everything before)
//! ```
//! (integers little-endian). `restore` checks the checksum, decodes the state and checks
//! that its hash is the one the leader reported, so what it seeds is exactly the
//! source's state at `last_index`. A "CHATBAK1" file (written before the state hash
//! moved from SipHash to XXH3 item hashes) is still restored: its state hash was
//! computed by a function this version no longer has, so only its SHA-256 is checked,
//! and restore says so. Then restore replaces the membership by the new node alone
//! and writes the snapshot (and a hard state at its term) into an empty data dir. The
//! new single-member cluster elects itself and grows by `chatctl member add`.

use crate::disk::FsDisk;
use crate::stamp;
use anyhow::{bail, Context};
use chat_core::entry::{HardState, Persist, Snapshot, SnapshotMeta};
use chat_core::machine::MachineState;
use chat_core::membership::Membership;
use chat_core::storage::LogStore;
use chat_core::{LogIndex, NodeId, Term};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"CHATBAK2";
/// Backups whose state hash was computed with SipHash-1-3 item hashes.
const MAGIC_SIPHASH: &[u8; 8] = b"CHATBAK1";
const HEADER_BYTES: usize = 8 + 4 * 8;
const CHECKSUM_BYTES: usize = 32;

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    pub last_index: u64,
    pub last_term: u64,
    /// The source's state hash at `last_index` (membership included).
    pub state_hash: u64,
    /// Whether `state_hash` is this version's hash (false for a "CHATBAK1" file).
    pub state_hash_comparable: bool,
    pub data: Vec<u8>,
}

impl Backup {
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(
            self.state_hash_comparable,
            "only this version's backups are written"
        );
        let mut bytes = Vec::with_capacity(HEADER_BYTES + self.data.len() + CHECKSUM_BYTES);
        bytes.extend_from_slice(MAGIC);
        for value in [
            self.last_index,
            self.last_term,
            self.state_hash,
            self.data.len() as u64,
        ] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes.extend_from_slice(&self.data);
        let checksum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&checksum);
        bytes
    }

    /// Refuses anything but a whole, unaltered backup file, in one line.
    pub fn decode(bytes: &[u8]) -> anyhow::Result<Backup> {
        if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES
            || (&bytes[..8] != MAGIC && &bytes[..8] != MAGIC_SIPHASH)
        {
            bail!("not a chat backup file");
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        if Sha256::digest(body).as_slice() != checksum {
            bail!("backup file is damaged (checksum mismatch)");
        }
        let field = |i: usize| {
            let start = 8 + 8 * i;
            let mut word = [0u8; 8];
            word.copy_from_slice(&body[start..start + 8]);
            u64::from_le_bytes(word)
        };
        let data = &body[HEADER_BYTES..];
        if field(3) != data.len() as u64 {
            bail!("backup file is damaged (length mismatch)");
        }
        Ok(Backup {
            last_index: field(0),
            last_term: field(1),
            state_hash: field(2),
            state_hash_comparable: &bytes[..8] == MAGIC,
            data: data.to_vec(),
        })
    }

    /// Writes the file whole or not at all: a temporary file, synced, then renamed.
    pub fn write_to(&self, path: &Path) -> anyhow::Result<()> {
        let temporary = path.with_extension("partial");
        let mut file = std::fs::File::create(&temporary)
            .with_context(|| format!("cannot create {}", temporary.display()))?;
        file.write_all(&self.encode())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot rename to {}", path.display()))?;
        Ok(())
    }

    pub fn read_from(path: &Path) -> anyhow::Result<Backup> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Backup::decode(&bytes).with_context(|| path.display().to_string())
    }
}

/// The state a restore seeds: the backup's, with the membership replaced by `id` alone
/// (a founder: its address comes from its own configuration). Checks that the state is
/// the one the source hashed.
pub fn restored_state(backup: &Backup, id: NodeId) -> anyhow::Result<MachineState> {
    let mut state = MachineState::decode(&backup.data)
        .map_err(|e| anyhow::anyhow!("backup holds no valid state: {e}"))?;
    if !backup.state_hash_comparable {
        eprintln!(
            "chatnode: restore: the backup is from an earlier version (CHATBAK1): its state \
             hash used another function and is not compared; its SHA-256 checked out"
        );
    } else if state.state_hash() != backup.state_hash {
        bail!(
            "backup state hashes to {:016x}, not the {:016x} the source reported",
            state.state_hash(),
            backup.state_hash
        );
    }
    state.membership = Membership::founding(&[id]);
    Ok(state)
}

/// Seeds `data_dir` (which must be empty or absent) from `backup` as node `id` of
/// cluster `cluster_id`. Returns the restored state's hash.
pub fn restore(backup: &Backup, data_dir: &Path, id: u64, cluster_id: &str) -> anyhow::Result<u64> {
    if id == 0 {
        bail!("--id must be positive");
    }
    let state = restored_state(backup, NodeId(id))?;
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .with_context(|| format!("cannot read {}", data_dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} is not empty: restore only into a new, empty data dir",
            data_dir.display()
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    stamp::check_or_write(data_dir, id, cluster_id)?;
    let disk = FsDisk::open(data_dir)?;
    let (mut store, _) = LogStore::open(disk)?;
    let term = Term(backup.last_term);
    store.persist(&Persist {
        snapshot: Some(Snapshot {
            meta: SnapshotMeta {
                last_index: LogIndex(backup.last_index),
                last_term: term,
            },
            data: std::sync::Arc::new(state.encode()),
        }),
        truncate_from: None,
        entries: Vec::new(),
        hard_state: Some(HardState {
            term,
            voted_for: None,
        }),
    })?;
    Ok(state.state_hash())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup() -> Backup {
        let state = MachineState::new(&chat_core::Config::new(NodeId(1), vec![NodeId(1)]));
        Backup {
            last_index: 7,
            last_term: 2,
            state_hash: state.state_hash(),
            state_hash_comparable: true,
            data: state.encode(),
        }
    }

    #[test]
    fn a_backup_from_before_the_hash_change_is_restored_on_its_checksum() {
        let mut old = backup();
        old.state_hash = 0x1234; // Whatever SipHash gave: not this version's hash.
        let mut bytes = old.encode();
        bytes[..8].copy_from_slice(MAGIC_SIPHASH);
        let body = bytes.len() - CHECKSUM_BYTES;
        let checksum = Sha256::digest(&bytes[..body]);
        bytes[body..].copy_from_slice(&checksum);
        let decoded = Backup::decode(&bytes).expect("a CHATBAK1 file");
        assert!(!decoded.state_hash_comparable);
        assert!(restored_state(&decoded, NodeId(3)).is_ok());
        // This version's files compare the hash.
        old.state_hash_comparable = true;
        let decoded = Backup::decode(&old.encode()).expect("a CHATBAK2 file");
        assert!(restored_state(&decoded, NodeId(3)).is_err());
    }

    #[test]
    fn a_backup_round_trips_and_damage_is_refused() {
        let original = backup();
        let mut bytes = original.encode();
        assert_eq!(Backup::decode(&bytes).expect("whole"), original);
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        let error = Backup::decode(&bytes).expect_err("damaged");
        assert_eq!(
            error.to_string(),
            "backup file is damaged (checksum mismatch)"
        );
        assert_eq!(
            Backup::decode(b"hello").expect_err("short").to_string(),
            "not a chat backup file"
        );
    }

    #[test]
    fn restore_seeds_an_empty_dir_and_refuses_a_used_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("n9");
        let hash = restore(&backup(), &data_dir, 9, "chat").expect("empty dir");
        let (_, recovered) = LogStore::open(FsDisk::open(&data_dir).expect("dir")).expect("open");
        let snapshot = recovered.snapshot.expect("snapshot written");
        assert_eq!(snapshot.meta.last_index, LogIndex(7));
        let state = MachineState::decode_from(&snapshot, 4096).expect("state");
        assert_eq!(state.state_hash(), hash);
        assert!(state.membership.is_voter(NodeId(9)));
        assert_eq!(state.membership.voter_count(), 1);
        let again = restore(&backup(), &data_dir, 9, "chat").expect_err("used dir");
        assert!(again.to_string().contains("is not empty"), "{again}");
    }
}
