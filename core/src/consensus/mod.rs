//! Raft: election with pre-vote and check-quorum, pipelined and batched log replication,
//! commit by quorum in the leader's term, snapshots and their chunked installation, read
//! index for linearizable reads. All of it lives on [`Replica`], one impl block per
//! concern.

mod backup;
mod client;
mod config;
mod election;
pub mod log;
mod membership;
pub mod message;
mod progress;
mod replica;
mod replication;
mod snapshot;
mod transfer;

pub use config::{Config, ConfigError};
pub use replica::{ClientRequest, Metrics, ReadConsistency, Replica, ReplicaError, Role};
pub use transfer::TransferError;
