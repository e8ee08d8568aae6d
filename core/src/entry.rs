//! What the replication log holds and what a replica persists. Shared by consensus (which
//! produces it) and storage (which encodes it), so neither depends on the other.

use crate::app::Command;
use crate::membership::Membership;
use crate::types::{LogIndex, NodeId, SessionId, Term, Time};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Identifies one client request for exactly-once application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionRef {
    /// Assigned by the log when the session was opened.
    pub id: SessionId,
    /// Sequence number of the request within the session, starting at 1.
    pub seq: u64,
}

/// A client command as the leader stamped it before replication, so that applying the
/// log needs nothing but the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub session: Option<SessionRef>,
    /// Log time: never smaller than the timestamp of any earlier entry.
    pub timestamp: Time,
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by every new leader so that it can commit an entry of its own term.
    Noop {
        timestamp: Time,
    },
    Command(Proposal),
    /// The whole membership from this entry on (see [`crate::membership`]). In force on
    /// every replica from the moment it is in its log, committed or not; index 1 of a
    /// founded cluster's log holds the founding members, at term 0.
    Membership {
        timestamp: Time,
        membership: Membership,
    },
}

impl EntryPayload {
    pub fn timestamp(&self) -> Time {
        match self {
            EntryPayload::Noop { timestamp } => *timestamp,
            EntryPayload::Command(proposal) => proposal.timestamp,
            EntryPayload::Membership { timestamp, .. } => *timestamp,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub payload: EntryPayload,
}

impl Entry {
    /// A stable 64-bit digest of the whole entry, for checkers comparing logs.
    pub fn digest(&self) -> u64 {
        // Encoding plain data into a Vec cannot fail.
        let bytes = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("in-memory encoding cannot fail");
        crate::machine::fnv1a64(&bytes)
    }

    /// An upper-bound estimate of the encoded size, used to bound batches and the
    /// in-memory log without encoding entries twice.
    pub fn size_bytes_estimate(&self) -> usize {
        const ENTRY_OVERHEAD_BYTES: usize = 64;
        ENTRY_OVERHEAD_BYTES
            + match &self.payload {
                EntryPayload::Noop { .. } => 0,
                EntryPayload::Command(proposal) => proposal.command.size_bytes_estimate(),
                EntryPayload::Membership { membership, .. } => {
                    membership
                        .members()
                        .values()
                        .map(|m| 16 + m.address.len())
                        .sum::<usize>()
                        + 8 * membership.removed().len()
                }
            }
    }
}

/// The state Raft requires on stable storage before answering any message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The snapshot contains the effect of every entry up to and including this index.
    pub last_index: LogIndex,
    pub last_term: Term,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    /// The encoded state machine (chat state and session table). Immutable and shared:
    /// the replica (which streams it to followers in chunks), a `Persist` and the shell
    /// all hold the one copy. (`Arc<Vec<u8>>` rather than `Arc<[u8]>`: bytes encoded or
    /// received into a `Vec` become shared without being copied. Encoded as the bytes.)
    pub data: Arc<Vec<u8>>,
}

/// One durable write a replica asks of its shell. The parts are applied in field order
/// (snapshot, truncation, appends, hard state) and made durable by one sync; only then may
/// the messages that came with it leave (see [`crate::effects`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Persist {
    /// Replaces the state machine image; every entry at or below its last index is
    /// discarded from the log.
    pub snapshot: Option<Snapshot>,
    /// Discard every entry at or after this index (a conflicting suffix) before appending.
    pub truncate_from: Option<LogIndex>,
    /// New entries, contiguous and ascending.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
}

impl Persist {
    /// The shape every `Persist` must have, whoever made it: entries contiguous and
    /// ascending with terms that never go back; no entry at or below the snapshot; a
    /// truncation that the entries continue from. (A truncation below a new snapshot is
    /// well-formed: the snapshot replaces the log.) Returns what is wrong, in words.
    /// Checked where a `Persist` leaves the replica and where the store takes one.
    pub fn check_well_formed(&self) -> Result<(), String> {
        for pair in self.entries.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if b.index != a.index.next() {
                return Err(format!(
                    "entries {} and {} are not contiguous",
                    a.index, b.index
                ));
            }
            if b.term < a.term {
                return Err(format!(
                    "entry {} has term {} after term {}",
                    b.index, b.term, a.term
                ));
            }
        }
        if let Some(snapshot) = &self.snapshot {
            let last = snapshot.meta.last_index;
            if let Some(first) = self.entries.first().filter(|e| e.index <= last) {
                return Err(format!(
                    "entry {} is covered by the snapshot through {last}",
                    first.index
                ));
            }
        }
        // A truncation below a new snapshot takes effect at the snapshot's end.
        let truncate_from = self.truncate_from.map(|from| match &self.snapshot {
            Some(snapshot) => from.max(snapshot.meta.last_index.next()),
            None => from,
        });
        if let (Some(from), Some(first), Some(last)) =
            (truncate_from, self.entries.first(), self.entries.last())
        {
            if from < first.index || from > last.index.next() {
                return Err(format!(
                    "truncation from {from} does not meet the entries {}..={}",
                    first.index, last.index
                ));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.truncate_from.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
    }
}
