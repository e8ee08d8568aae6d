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

/// Runs one scenario under `budget`, turning a panic (a core assertion, an overflow) into
/// a failure with check `panic`: see [`catch_panics`].
pub fn run_scenario_catching(scenario: &Scenario, budget: budget::Budget) -> RunOutcome {
    catch_panics(scenario, || run_scenario_within(scenario, budget))
}

/// Runs `run` (a run of `scenario`), turning a panic into a failure with check `panic`,
/// so that a sweep reports the seed and goes on instead of dying without saying which
/// seed it was. Replaying the seed shows the panic and its place in the trace.
pub fn catch_panics(scenario: &Scenario, run: impl FnOnce() -> RunOutcome) -> RunOutcome {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".to_string());
        RunOutcome {
            seed: scenario.seed,
            fingerprint: 0,
            failure: Some(Failure {
                violation: checker::Violation {
                    check: "panic",
                    detail: format!("{message} (time and event not known: replay the seed)"),
                },
                at: chat_core::Time(0),
                event: 0,
            }),
            stats: RunStats::default(),
            coverage: coverage::Coverage::default(),
        }
    })
}
