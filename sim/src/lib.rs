//! # chat-sim
//!
//! A deterministic discrete-event simulator for the chat cluster. One seed is one exact,
//! replayable run: the seed generates a [`scenario::Scenario`] (network parameters, fault
//! schedule, client plans), and [`world::World`] runs it against real `chat-core`
//! replicas over simulated disks, network and clocks, checking every invariant.
//!
//! Determinism: no wall clock, no threads within a run, no hash-map iteration; all
//! randomness comes from the seed through [`rng::stream`].

pub mod budget;
pub mod checker;
pub mod coverage;
pub mod elections;
pub mod explore;
pub mod faults;
pub mod history;
pub mod linearizability;
pub mod network;
pub mod node;
pub mod rng;
pub mod runner;
pub mod scenario;
pub mod shrink;
pub mod trace;
pub mod workload;
pub mod world;

pub use budget::Budget;
pub use scenario::{GenerateOptions, Scenario};
pub use world::{Failure, RunOutcome, RunStats, Sabotage, World};

/// Runs one scenario without traces, under the default budget.
pub fn run_scenario(scenario: &Scenario) -> RunOutcome {
    run_scenario_within(scenario, budget::Budget::default())
}

/// Runs one scenario without traces, under `budget`.
pub fn run_scenario_within(scenario: &Scenario, budget: budget::Budget) -> RunOutcome {
    World::new(scenario, trace::Tracer::silent())
        .with_budget(budget)
        .run()
}
