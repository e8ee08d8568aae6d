//! Messages between replicas. Only the shells know how these travel; core sees values.

use crate::entry::{Entry, SnapshotMeta};
use crate::types::{LogIndex, NodeId, Term};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub message: Message,
}

/// Where a follower's log diverges, so the leader can skip a whole term per round trip
/// instead of one index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictHint {
    /// The term of the follower's entry at the rejected index, if it has one.
    pub term: Option<Term>,
    /// The first index the follower holds of that term, or its last index + 1.
    pub index: LogIndex,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Sent with the term the sender would campaign in; changes no one's term.
    PreVote {
        term: Term,
        last_log_index: LogIndex,
        last_log_term: Term,
    },
    PreVoteResponse {
        term: Term,
        granted: bool,
    },
    RequestVote {
        term: Term,
        last_log_index: LogIndex,
        last_log_term: Term,
        /// Sent on the leader's request (`TimeoutNow`): voters answer it even while they
        /// hear from that leader, which check-quorum would otherwise make them ignore.
        leadership_transfer: bool,
    },
    RequestVoteResponse {
        term: Term,
        granted: bool,
    },
    AppendEntries {
        term: Term,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    },
    AppendEntriesResponse {
        term: Term,
        success: bool,
        /// On success, the last index known to match the leader's log; on rejection, the
        /// `prev_log_index` that did not match.
        index: LogIndex,
        hint: Option<ConflictHint>,
    },
    /// Leadership assertion and read-index confirmation round. `commit` is capped at what
    /// the leader knows this follower holds, so a follower never commits an entry it may
    /// not have.
    Heartbeat {
        term: Term,
        commit: LogIndex,
        seq: u64,
    },
    HeartbeatResponse {
        term: Term,
        seq: u64,
        last_log_index: LogIndex,
    },
    InstallSnapshot {
        term: Term,
        meta: SnapshotMeta,
        total_bytes: u64,
        /// The whole snapshot's checksum (`snapshot_source::snapshot_checksum`), the same
        /// in every chunk: the receiver installs only bytes that match it.
        checksum: u32,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    },
    InstallSnapshotResponse {
        term: Term,
        /// The snapshot the response is about.
        last_index: LogIndex,
        /// The next byte offset the follower expects; `total_bytes` once installed.
        next_offset: u64,
        installed: bool,
        /// The follower received the whole snapshot and refused it: its bytes did not
        /// match the checksum, or did not decode. The leader then takes a fresh snapshot,
        /// in case its own file is what went bad.
        refused: bool,
    },
    /// Leadership transfer (Raft thesis §3.10): the leader tells a caught-up voter to
    /// start an election at once, without pre-vote.
    TimeoutNow {
        term: Term,
    },
    /// The answer to a vote request from a node that the sender's committed membership
    /// lists as removed. Removal is for good (ids are never reused), so the receiver
    /// stops campaigning and its shell stops serving.
    Removed {
        term: Term,
    },
}

impl Message {
    pub fn term(&self) -> Term {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResponse { term, .. }
            | Message::RequestVote { term, .. }
            | Message::RequestVoteResponse { term, .. }
            | Message::AppendEntries { term, .. }
            | Message::AppendEntriesResponse { term, .. }
            | Message::Heartbeat { term, .. }
            | Message::HeartbeatResponse { term, .. }
            | Message::InstallSnapshot { term, .. }
            | Message::InstallSnapshotResponse { term, .. }
            | Message::TimeoutNow { term }
            | Message::Removed { term } => *term,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Message::PreVote { .. } => "PreVote",
            Message::PreVoteResponse { .. } => "PreVoteResponse",
            Message::RequestVote { .. } => "RequestVote",
            Message::RequestVoteResponse { .. } => "RequestVoteResponse",
            Message::AppendEntries { .. } => "AppendEntries",
            Message::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::HeartbeatResponse { .. } => "HeartbeatResponse",
            Message::InstallSnapshot { .. } => "InstallSnapshot",
            Message::InstallSnapshotResponse { .. } => "InstallSnapshotResponse",
            Message::TimeoutNow { .. } => "TimeoutNow",
            Message::Removed { .. } => "Removed",
        }
    }
}

/// A compact one-line form for traces: stable, so trace snapshots only change when the
/// protocol does.
impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::PreVote { term, last_log_index, last_log_term } => write!(
                f,
                "PreVote{{term:{term} last:{last_log_index}/{last_log_term}}}",
            ),
            Message::RequestVote { term, last_log_index, last_log_term, leadership_transfer } => {
                write!(f, "RequestVote{{term:{term} last:{last_log_index}/{last_log_term}")?;
                if *leadership_transfer {
                    write!(f, " transfer")?;
                }
                write!(f, "}}")
            }
            Message::PreVoteResponse { term, granted }
            | Message::RequestVoteResponse { term, granted } => {
                write!(f, "{}{{term:{term} granted:{granted}}}", self.kind())
            }
            Message::AppendEntries { term, prev_log_index, prev_log_term, entries, leader_commit } => {
                write!(f, "AppendEntries{{term:{term} prev:{prev_log_index}/{prev_log_term} entries:")?;
                match (entries.first(), entries.last()) {
                    (Some(first), Some(last)) => write!(f, "[{}..={}]", first.index, last.index)?,
                    _ => write!(f, "[]")?,
                }
                write!(f, " commit:{leader_commit}}}")
            }
            Message::AppendEntriesResponse { term, success, index, hint } => {
                write!(f, "AppendEntriesResponse{{term:{term} success:{success} index:{index}")?;
                if let Some(hint) = hint {
                    match hint.term {
                        Some(t) => write!(f, " hint:{}/{}", hint.index, t)?,
                        None => write!(f, " hint:{}/-", hint.index)?,
                    }
                }
                write!(f, "}}")
            }
            Message::Heartbeat { term, commit, seq } => {
                write!(f, "Heartbeat{{term:{term} commit:{commit} seq:{seq}}}")
            }
            Message::HeartbeatResponse { term, seq, last_log_index } => {
                write!(f, "HeartbeatResponse{{term:{term} seq:{seq} last:{last_log_index}}}")
            }
            Message::InstallSnapshot { term, meta, total_bytes, offset, data, done, .. } => write!(
                f,
                "InstallSnapshot{{term:{term} last:{}/{} bytes:{offset}+{}/{total_bytes} done:{done}}}",
                meta.last_index,
                meta.last_term,
                data.len()
            ),
            Message::InstallSnapshotResponse { term, last_index, next_offset, installed, refused } => write!(
                f,
                "InstallSnapshotResponse{{term:{term} last:{last_index} next:{next_offset} installed:{installed} refused:{refused}}}"
            ),
            Message::TimeoutNow { term } => write!(f, "TimeoutNow{{term:{term}}}"),
            Message::Removed { term } => write!(f, "Removed{{term:{term}}}"),
        }
    }
}
