//! Real multi-process clusters on loopback: `chatnode` processes on ephemeral ports,
//! driven through the client library and the `chatctl` binary. Every test is bounded
//! in time, and every process it started is killed when its cluster is dropped, also
//! when the test fails. The tests take turns (one cluster at a time) so that elections
//! are not starved of CPU on a small machine.

mod bad_input;
mod basic;
mod cli;
mod connections;
mod failover;
mod harness;
mod listen;
mod login_flood;
mod membership;
mod metrics;
mod sessions;
mod shutdown;
mod snapshots;
mod tls;
