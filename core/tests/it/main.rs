//! Scenario tests of the core, through the in-memory cluster harness.

mod chaos;
mod election;
mod figure8;
mod harness;
mod membership;
mod reads;
mod restart;
mod robustness;
mod sessions;
mod snapshots;
mod state_image;
mod trace;
