//! The node: the shell that runs chat-core against real files, a real clock and a real
//! network (tokio, tonic), plus the client library behind `chatctl`. Everything that
//! decides anything lives in core; this crate only performs effects and translates.
//!
//! - [`server`]: one member, wired together; [`driver`]: the thread that owns the replica;
//! - [`connections`]: inbound connections, bounded in number and in silence;
//! - [`peers`]: replica-to-replica transport, following [`members`] (the address
//!   book of the configuration in force); [`admin`]: the operator API; [`service`], [`listen`]: the client API;
//! - [`auth`]: passwords, tokens, peer proofs; [`convert`]: core ⟷ wire;
//! - [`hashing`]: the bounded pool that hashes passwords; [`limiter`]: failed logins
//!   per account and per address;
//! - [`client`]: leader-following, retrying client with an exactly-once session;
//! - [`local`]: a whole cluster on loopback in one process;
//! - [`metrics`]: Prometheus metrics, served over HTTP at `/metrics`;
//! - [`cli`], [`ctl`]: the `main` of `chatnode` and of `chatctl`; [`terminal`]: what
//!   `chatctl` prints, made safe for a terminal.

pub mod admin;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod client;
pub mod clock;
pub mod closer;
pub mod config;
pub mod connections;
pub mod convert;
pub mod ctl;
pub mod ctl_admin;
pub mod disk;
pub mod driver;
pub mod hashing;
pub mod limiter;
pub mod listen;
pub mod local;
pub mod members;
pub mod metrics;
pub mod peers;
pub mod server;
pub mod service;
pub mod stamp;
pub mod terminal;

/// Half the cores, at least one: the default size of each pool of threads a node sizes
/// itself (password hashers, async runtime workers), so that the replica's own thread
/// keeps a core while either pool is busy.
pub fn half_the_cores() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores / 2).max(1)
}
