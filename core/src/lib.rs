//! # chat-core
//!
//! The whole decision-making of the replicated chat service as one pure, synchronous,
//! deterministic state machine:
//!
//! - [`app`]: the chat state machine (accounts, inboxes) that the log is applied to;
//! - [`session`]: exactly-once client sessions;
//! - [`membership`]: voters, learners and removed ids, changed one server at a time;
//! - [`consensus`]: Raft (pre-vote, check-quorum, pipelining, snapshots, read index),
//!   on the type [`Replica`];
//! - [`effects`]: what a replica asks its shell to do, and the one rule on the order;
//! - `storage`: the durable format of log, hard state and snapshots over a `Disk` trait.
//!
//! The contract: no I/O, no clock, no threads, no global randomness. Time is an argument
//! (`now`) of every input; randomness comes from a seed in the [`Config`]. The same inputs
//! give the same outputs, byte for byte, on every machine.

pub mod app;
mod arc_map;
pub mod consensus;
mod digest;
pub mod effects;
pub mod entry;
pub mod machine;
pub mod membership;
pub mod session;
pub mod snapshot_source;
pub mod storage;
pub mod types;

pub use consensus::message::{Envelope, Message};
pub use consensus::{
    ClientRequest, Config, Metrics, ReadConsistency, Replica, ReplicaError, Role, TransferError,
};
pub use effects::{drive, perform, ClientError, Ready, Reply, Response, Shell};
pub use storage::Recovered;
pub use types::{LogIndex, NodeId, RequestId, SessionId, Term, Time};
