//! Running many seeds: each simulation is single-threaded; seeds are spread over worker
//! threads and the results gathered in seed order, so the output is the same for any
//! number of jobs.

use crate::budget::Budget;
use crate::coverage::Coverage;
use crate::scenario::{GenerateOptions, Scenario};
use crate::world::RunOutcome;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub seeds: u64,
    pub failures: u64,
    pub events: u64,
    pub simulated_us: u64,
    /// The most events one seed took.
    pub events_per_seed_max: u64,
    /// The most events one seed had queued at once.
    pub queued_events_max: u64,
    /// The most events one seed took within one virtual second.
    pub events_per_virtual_sec_max: u64,
    /// The most log entries one seed's messages carried.
    pub entries_delivered_max: u64,
    /// The union of every seed's coverage.
    pub coverage: Coverage,
    /// History partitions whose linearizability search ran out of budget (not failures).
    pub linearizability_unknown: u64,
    /// The longest leaderless interval with a healthy quorum over the seeds, and its seed.
    pub leaderless_us_max: Option<(u64, u64)>,
    /// The longest time from the end of chaos to the first new commit, and its seed.
    pub first_commit_after_chaos_us_max: Option<(u64, u64)>,
    /// Clean leader losses timed to their re-election, over the seeds.
    pub reelections: u64,
    /// The most maximum election timeouts one took (in hundredths, beyond its allowance
    /// for disturbed messages), and its seed.
    pub reelection_timeouts_x100_max: Option<(u64, u64)>,
    /// Pre-vote answers judged against the simulator's lease record: grants, refusals.
    pub pre_votes_judged: (u64, u64),
}

impl Summary {
    pub fn add(&mut self, outcome: &RunOutcome) {
        self.seeds += 1;
        self.failures += u64::from(outcome.failure.is_some());
        self.events += outcome.stats.events;
        self.simulated_us += outcome.stats.simulated_us;
        self.events_per_seed_max = self.events_per_seed_max.max(outcome.stats.events);
        self.queued_events_max = self.queued_events_max.max(outcome.stats.queued_events_max);
        self.events_per_virtual_sec_max = self
            .events_per_virtual_sec_max
            .max(outcome.stats.events_per_virtual_sec_max);
        self.entries_delivered_max = self
            .entries_delivered_max
            .max(outcome.stats.entries_delivered);
        self.coverage.merge(&outcome.coverage);
        self.linearizability_unknown += outcome.stats.linearizability_unknown;
        let seed = outcome.seed;
        let leaderless_us = outcome.stats.leaderless_us_max;
        if self
            .leaderless_us_max
            .is_none_or(|(us, _)| leaderless_us > us)
        {
            self.leaderless_us_max = Some((leaderless_us, seed));
        }
        self.reelections += outcome.stats.reelections;
        self.pre_votes_judged.0 += outcome.stats.pre_vote_grants_judged;
        self.pre_votes_judged.1 += outcome.stats.pre_vote_refusals_judged;
        let timeouts_x100 = outcome.stats.reelection_timeouts_x100_max;
        if outcome.stats.reelections > 0
            && self
                .reelection_timeouts_x100_max
                .is_none_or(|(worst, _)| timeouts_x100 > worst)
        {
            self.reelection_timeouts_x100_max = Some((timeouts_x100, seed));
        }
        if let Some(commit_us) = outcome.stats.first_commit_after_chaos_us {
            if self
                .first_commit_after_chaos_us_max
                .is_none_or(|(us, _)| commit_us > us)
            {
                self.first_commit_after_chaos_us_max = Some((commit_us, seed));
            }
        }
    }

    /// One line on measured liveness, for the end of `chatsim run`.
    pub fn liveness_line(&self) -> String {
        let show = |value: Option<(u64, u64)>| match value {
            Some((us, seed)) => format!("{:.3}s (seed {seed})", us as f64 / 1e6),
            None => "none".to_string(),
        };
        let reelection = match self.reelection_timeouts_x100_max {
            Some((x100, seed)) => format!(
                "{} clean re-elections, slowest {}.{:02} election timeouts beyond its allowance (seed {seed})",
                self.reelections,
                x100 / 100,
                x100 % 100
            ),
            None => "no clean re-election".to_string(),
        };
        format!(
            "liveness: longest leaderless with a healthy quorum {}, longest from end of chaos to first new commit {}, {reelection}; pre-vote answers judged by the lease: {} grants, {} refusals",
            show(self.leaderless_us_max),
            show(self.first_commit_after_chaos_us_max),
            self.pre_votes_judged.0,
            self.pre_votes_judged.1
        )
    }

    /// The same as JSON, for `chatsim run --json`.
    pub fn liveness_json(&self) -> serde_json::Value {
        let show = |value: Option<(u64, u64)>| match value {
            Some((us, seed)) => serde_json::json!({ "us": us, "seed": seed }),
            None => serde_json::Value::Null,
        };
        serde_json::json!({
            "leaderless_us_max": show(self.leaderless_us_max),
            "first_commit_after_chaos_us_max": show(self.first_commit_after_chaos_us_max),
            "reelections": self.reelections,
            "pre_vote_grants_judged": self.pre_votes_judged.0,
            "pre_vote_refusals_judged": self.pre_votes_judged.1,
            "reelection_timeouts_x100_max": self.reelection_timeouts_x100_max.map(
                |(timeouts_x100, seed)| serde_json::json!({ "timeouts_x100": timeouts_x100, "seed": seed })
            ),
        })
    }
}

/// Runs `seeds` on `jobs` threads under the default budget (see [`run_seeds_within`]).
pub fn run_seeds(
    seeds: &[u64],
    options: &GenerateOptions,
    jobs: usize,
    on_done: &(dyn Fn(&RunOutcome) + Sync),
) -> (Vec<RunOutcome>, Duration) {
    run_seeds_within(seeds, options, Budget::default(), jobs, on_done)
}

/// Runs `seeds` on `jobs` threads, each seed under `budget`; `on_done` is called (from
/// any thread) as each seed finishes, so that failures can be reported at once. Returns
/// outcomes in seed order and the wall time.
pub fn run_seeds_within(
    seeds: &[u64],
    options: &GenerateOptions,
    budget: Budget,
    jobs: usize,
    on_done: &(dyn Fn(&RunOutcome) + Sync),
) -> (Vec<RunOutcome>, Duration) {
    let started = Instant::now(); // determinism: ok (wall time is reported, never simulated)
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<RunOutcome>>> = Mutex::new(vec![None; seeds.len()]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(index) else { break };
                let scenario = Scenario::generate(seed, options);
                let outcome = crate::run_scenario_catching(&scenario, budget);
                on_done(&outcome);
                // A poisoned lock means another worker panicked; that panic is re-raised
                // by the scope, so this worker may simply stop.
                let Ok(mut results) = results.lock() else {
                    break;
                };
                results[index] = Some(outcome);
            });
        }
    });
    let wall = started.elapsed();
    let outcomes = results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect();
    (outcomes, wall)
}
