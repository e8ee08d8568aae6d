//! What a replica asks its shell to do, and the one rule on the order of doing it.
//!
//! The rule: **the `Persist` of a [`Ready`] is durable before any message that speaks for
//! it leaves.** A vote, an acknowledgement of entries, or an answer to a client all speak
//! for state that must survive a crash; sending one before its state is on disk is how a
//! replica votes twice in a term or a leader counts an entry that a crash then loses.
//! Replies and deliveries come last; they only speak for committed state.
//!
//! One exception, from the Raft thesis (§10.2.1): what a leader sends to replicate
//! (AppendEntries, Heartbeat, InstallSnapshot) promises nothing about its own disk, so it
//! leaves *before* the leader's own write, which then overlaps its followers' writes. The
//! leader still counts itself toward a commit only for entries it has persisted, because
//! a shell completes a `Ready` before it feeds the replica the next input.
//!
//! Both shells obey the rule through [`drive`]: the simulator and the node implement
//! [`Shell`] and never take a `Ready` apart themselves.

use crate::app::{AppError, CommandOutput, Delivery, QueryOutput};
use crate::consensus::message::Envelope;
use crate::entry::Persist;
use crate::machine::SnapshotImage;
use crate::membership::{Membership, MembershipError};
use crate::types::{NodeId, RequestId};
use serde::{Deserialize, Serialize};

/// The outputs of one or more inputs, in the order they must be performed.
#[derive(Debug, Default)]
pub struct Ready {
    /// A leader's replication traffic: may leave before `persist` is durable.
    pub messages_before_persist: Vec<Envelope>,
    pub persist: Persist,
    /// Leave only once `persist` is durable.
    pub messages: Vec<Envelope>,
    pub replies: Vec<Reply>,
    pub deliveries: Vec<Delivery>,
    /// A snapshot of the replica's own state to encode and save durably, at the shell's
    /// pace and on any thread; nothing waits for it. An image, not bytes: encoding is
    /// linear in the state and must not stall the core thread. Report the encoded
    /// snapshot with `Replica::handle_snapshot_saved` once durable, with a reader of it
    /// (the replica streams it to followers from there, see [`crate::snapshot_source`]);
    /// if the shell crashes first, the report is simply never made.
    pub snapshot_to_save: Option<SnapshotImage>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages_before_persist.is_empty()
            && self.messages.is_empty()
            && self.replies.is_empty()
            && self.deliveries.is_empty()
            && self.snapshot_to_save.is_none()
    }
}

/// The answer to one client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub request_id: RequestId,
    pub outcome: Result<Response, ClientError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Command(CommandOutput),
    Query(QueryOutput),
    /// A membership change committed and applied: the membership now in force.
    Membership(Membership),
}

/// Why a client request was not (or not certainly) carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClientError {
    /// The chat operation itself was refused; retrying will not help.
    #[error(transparent)]
    App(#[from] AppError),
    /// This replica is not the leader, or stopped being it before the request committed.
    /// The request may or may not take effect; retry with the same session sequence
    /// number (at the hinted leader) and it takes effect at most once.
    #[error("not the leader{}", match .leader_hint { Some(id) => format!("; try {id}"), None => String::new() })]
    NotLeader { leader_hint: Option<NodeId> },
    /// Too many requests are waiting; back off and retry.
    #[error("busy: {pending} requests pending")]
    Busy { pending: usize },
    /// The session is unknown: never opened, expired, or evicted. The request was not
    /// applied now; an earlier attempt of it may have been. Open a new session.
    #[error("client session expired or unknown; open a new session")]
    SessionExpired,
    /// A request older than the session's last one; its answer is gone.
    #[error("request {seq} is older than the session's last request {last_seq}")]
    StaleRequest { seq: u64, last_seq: u64 },
    /// The session belongs to another account: nothing was applied or revealed.
    #[error("the session belongs to another account")]
    SessionNotOwned,
    /// Request `seq` of the session was applied with a different command; a retry must
    /// repeat the original command exactly.
    #[error(
        "request {seq} of this session was a different command; a retry must repeat it exactly"
    )]
    RetryMismatch { seq: u64 },
    /// The request is malformed in a way the shell should have refused (a session on a
    /// command that takes none, or none on one that needs it).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A membership change the leader refused; nothing changed.
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

/// How a shell performs a [`Ready`]. `persist` returns only once the write is durable
/// (synced); if it cannot be made durable the shell must stop the replica (fail-stop),
/// because the replica already counts on it.
pub trait Shell {
    type Error;
    fn persist(&mut self, persist: &Persist) -> Result<(), Self::Error>;
    fn send(&mut self, envelope: Envelope);
    fn reply(&mut self, reply: Reply);
    fn deliver(&mut self, delivery: Delivery);
    /// Starts encoding and saving a snapshot of the replica's own state (see
    /// [`Ready::snapshot_to_save`]); returns at once.
    fn save_snapshot(&mut self, image: SnapshotImage);
}

/// Performs one `Ready` in the only allowed order: a leader's replication traffic, then
/// the persist (durably), then the other messages, then replies and deliveries.
pub fn perform<S: Shell>(ready: Ready, shell: &mut S) -> Result<(), S::Error> {
    for envelope in ready.messages_before_persist {
        shell.send(envelope);
    }
    if !ready.persist.is_empty() {
        shell.persist(&ready.persist)?;
    }
    for envelope in ready.messages {
        shell.send(envelope);
    }
    for reply in ready.replies {
        shell.reply(reply);
    }
    for delivery in ready.deliveries {
        shell.deliver(delivery);
    }
    if let Some(image) = ready.snapshot_to_save {
        shell.save_snapshot(image);
    }
    Ok(())
}

/// Drains every output of `replica` through `shell`. Call after each input.
pub fn drive<S: Shell>(replica: &mut crate::Replica, shell: &mut S) -> Result<(), S::Error> {
    while let Some(ready) = replica.poll_ready() {
        perform(ready, shell)?;
    }
    Ok(())
}
