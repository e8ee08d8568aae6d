//! Coverage-guided search (after AFL, and after model-guided fuzzing of Raft, Gulcan et
//! al., OOPSLA 2025): a corpus of scenarios, started from generated seeds, grows by every
//! scenario that reached an abstract state or transition (see [`crate::coverage`]) no
//! earlier run reached. Each round mutates corpus entries (add, move, drop, retarget,
//! duplicate and rescale fault events; network parameters, replica tuning, background
//! crash rates and clock drift; splicing two entries' fault schedules; new randomness)
//! and runs the mutants.
//!
//! Determinism: every choice comes from one ChaCha8 stream of `--seed`, and each round's
//! candidates are fixed before they run and judged in order afterwards, so with a
//! run-count budget the search is the same for any number of jobs. Only a wall-clock
//! budget (checked between rounds, outside any simulation) makes where it stops vary.

use crate::coverage::Coverage;
use crate::faults::FaultKind;
use crate::rng::{stream, Stream};
use crate::scenario::{FaultAction, FaultEvent, GenerateOptions, ReplicaTuning, Scenario, LEADER};
use crate::trace::Tracer;
use crate::world::{RunOutcome, World};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When the search stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Wall-clock seconds (the CLI's `--budget-secs`).
    WallSecs(f64),
    /// A number of simulated runs (reproducible for any `--jobs`; tests use this).
    Runs(u64),
}

#[derive(Clone, Debug)]
pub struct ExploreOptions {
    pub generate: GenerateOptions,
    pub jobs: usize,
    /// Seeds every choice the search makes.
    pub seed: u64,
    pub budget: Budget,
    /// The budget each run is held to (events, virtual time, ...), as in `chatsim run`.
    pub seed_budget: crate::budget::Budget,
    /// Scenarios run per round; fixed, so that the search does not depend on `jobs`.
    pub round_size: usize,
    /// Stop after the round in which this many failures were found.
    pub failures_max: usize,
}

impl ExploreOptions {
    pub fn new(generate: GenerateOptions, budget: Budget) -> ExploreOptions {
        ExploreOptions {
            generate,
            jobs: 1,
            seed: 0,
            budget,
            seed_budget: crate::budget::Budget::default(),
            round_size: 16,
            failures_max: 1,
        }
    }
}

/// A scenario the search ran, with where it came from.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub scenario: Scenario,
    /// "seed 17", or "mutant of #3: add-event, reseed" (numbers are corpus entries).
    pub origin: String,
}

#[derive(Clone, Debug)]
pub struct CorpusEntry {
    pub candidate: Candidate,
    /// States and transitions it reached first.
    pub new_states: usize,
    pub new_transitions: usize,
    /// Its states that at most two runs had reached when it ran.
    pub rare_states: usize,
    /// How often it was picked as a parent.
    pub picks: u64,
}

#[derive(Clone, Debug)]
pub struct Found {
    pub candidate: Candidate,
    pub outcome: RunOutcome,
}

#[derive(Clone, Debug, Default)]
pub struct ExploreReport {
    pub runs: u64,
    pub events: u64,
    pub simulated_us: u64,
    pub rounds: u64,
    pub corpus: Vec<CorpusEntry>,
    pub coverage: Coverage,
    pub failures: Vec<Found>,
    pub wall: Duration,
}

/// Runs the search until the budget is spent or `failures_max` failures are found.
/// `on_round` sees the report after each round (for progress).
pub fn explore(options: &ExploreOptions, on_round: &dyn Fn(&ExploreReport)) -> ExploreReport {
    let started = Instant::now(); // determinism: ok (the wall-clock budget, between runs)
    let mut rng = stream(options.seed, Stream::Explore);
    let mut report = ExploreReport::default();
    // How many runs reached each state: rare states make their scenarios worth more.
    let mut hits: BTreeMap<u64, u32> = BTreeMap::new();
    loop {
        let spent = match options.budget {
            Budget::WallSecs(secs) => started.elapsed().as_secs_f64() >= secs, // determinism: ok (budget)
            Budget::Runs(runs) => report.runs >= runs,
        };
        if spent || report.failures.len() >= options.failures_max {
            break;
        }
        let round_size = match options.budget {
            Budget::Runs(runs) => options.round_size.min((runs - report.runs) as usize),
            Budget::WallSecs(_) => options.round_size,
        };
        let candidates: Vec<Candidate> = (0..round_size)
            .map(|_| next_candidate(&mut rng, options, &mut report.corpus))
            .collect();
        let scenarios: Vec<&Scenario> = candidates.iter().map(|c| &c.scenario).collect();
        let outcomes = run_all(&scenarios, options.jobs, false, options.seed_budget);
        for (candidate, outcome) in candidates.into_iter().zip(outcomes) {
            judge(&mut report, &mut hits, candidate, outcome);
        }
        report.rounds += 1;
        report.wall = started.elapsed(); // determinism: ok (reported only)
        on_round(&report);
    }
    report.wall = started.elapsed(); // determinism: ok (reported only)
    report
}

fn judge(
    report: &mut ExploreReport,
    hits: &mut BTreeMap<u64, u32>,
    candidate: Candidate,
    outcome: RunOutcome,
) {
    report.runs += 1;
    report.events += outcome.stats.events;
    report.simulated_us += outcome.stats.simulated_us;
    for &state in &outcome.coverage.states {
        *hits.entry(state).or_insert(0) += 1;
    }
    let (new_states, new_transitions) = outcome.coverage.novelty_against(&report.coverage);
    report.coverage.merge(&outcome.coverage);
    if outcome.failure.is_some() {
        report.failures.push(Found { candidate, outcome });
        return;
    }
    if new_states + new_transitions > 0 {
        let rare_states = outcome
            .coverage
            .states
            .iter()
            .filter(|state| hits.get(state).is_some_and(|&h| h <= 2))
            .count();
        report.corpus.push(CorpusEntry {
            candidate,
            new_states,
            new_transitions,
            rare_states,
            picks: 0,
        });
    }
}

/// A fresh generated seed (always at the start, and now and then later so the search
/// does not narrow down too far), or a mutant of a corpus entry.
fn next_candidate(
    rng: &mut ChaCha8Rng,
    options: &ExploreOptions,
    corpus: &mut [CorpusEntry],
) -> Candidate {
    if corpus.len() < 4 || rng.random_bool(0.1) {
        let seed = rng.random();
        return Candidate {
            scenario: Scenario::generate(seed, &options.generate),
            origin: format!("seed {seed}"),
        };
    }
    let parent = pick(rng, corpus);
    corpus[parent].picks += 1;
    let mut scenario = corpus[parent].candidate.scenario.clone();
    let mut applied = Vec::new();
    for _ in 0..rng.random_range(1..=4) {
        let other = pick(rng, corpus);
        let donor = &corpus[other].candidate.scenario;
        applied.push(mutate(rng, &mut scenario, donor, &options.generate));
    }
    Candidate {
        scenario,
        origin: format!("mutant of #{parent}: {}", applied.join(", ")),
    }
}

/// Energy: an entry that found much, and was not tried often, is picked more; recent
/// entries (which sit at the frontier) get a bonus.
fn pick(rng: &mut ChaCha8Rng, corpus: &[CorpusEntry]) -> usize {
    let weights: Vec<f64> = corpus
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let found = (entry.new_states * 4 + entry.new_transitions + entry.rare_states) as f64;
            let recency = 1.0 + 2.0 * index as f64 / corpus.len() as f64;
            (1.0 + found).sqrt() * recency / (1.0 + entry.picks as f64).sqrt()
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut target = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
    for (index, weight) in weights.iter().enumerate() {
        if target < *weight {
            return index;
        }
        target -= weight;
    }
    corpus.len() - 1
}

/// Applies one random mutation; returns its name.
pub fn mutate(
    rng: &mut ChaCha8Rng,
    scenario: &mut Scenario,
    donor: &Scenario,
    options: &GenerateOptions,
) -> &'static str {
    let allowed = |kind| options.faults.contains(kind);
    let events = scenario.fault_events.len();
    let name = match rng.random_range(0..12) {
        0 | 1 => {
            if !add_event(rng, scenario, options) {
                return "add-event (none allowed)";
            }
            "add-event"
        }
        2 if events > 0 => {
            let event = &mut scenario.fault_events[rng.random_range(0..events)];
            event.at_us = if rng.random_bool(0.5) {
                rng.random_range(0..scenario.chaos_duration_us)
            } else {
                let jitter = rng.random_range(0..=500_000);
                let at = if rng.random_bool(0.5) {
                    event.at_us.saturating_sub(jitter)
                } else {
                    event.at_us + jitter
                };
                at.min(scenario.chaos_duration_us.saturating_sub(1))
            };
            "move-event"
        }
        3 if events > 0 => {
            scenario.fault_events.remove(rng.random_range(0..events));
            "drop-event"
        }
        4 if events > 0 => {
            let nodes = scenario.nodes;
            let event = &mut scenario.fault_events[rng.random_range(0..events)];
            retarget(rng, &mut event.action, nodes);
            "retarget-event"
        }
        5 if events > 0 => {
            let event = &mut scenario.fault_events[rng.random_range(0..events)];
            rescale(rng, &mut event.action);
            "rescale-event"
        }
        6 if events > 0 => {
            // A burst: the same fault again, soon after, elsewhere: faults that overlap
            // reach the states single faults do not (a majority down, a new leader cut
            // off at once).
            let mut copy = scenario.fault_events[rng.random_range(0..events)].clone();
            copy.at_us = (copy.at_us + rng.random_range(0..=200_000))
                .min(scenario.chaos_duration_us.saturating_sub(1));
            retarget(rng, &mut copy.action, scenario.nodes);
            scenario.fault_events.push(copy);
            "burst"
        }
        7 => {
            // Splice: the donor's schedule from a cut point on.
            let cut = rng.random_range(0..scenario.chaos_duration_us.max(1));
            scenario.fault_events.retain(|e| e.at_us < cut);
            scenario.fault_events.extend(
                donor
                    .fault_events
                    .iter()
                    .filter(|e| e.at_us >= cut && e.at_us < scenario.chaos_duration_us)
                    .filter(|e| {
                        e.action.kind() != FaultKind::Corruption || allowed(FaultKind::Corruption)
                    })
                    .cloned(),
            );
            "splice"
        }
        8 => {
            let network = &mut scenario.network;
            network.latency_us_max = [2_000, 10_000, 30_000, 100_000][rng.random_range(0..4)];
            if allowed(FaultKind::Drop) && rng.random_bool(0.5) {
                network.drop_per_mille = [0, 5, 50, 200][rng.random_range(0..4)];
            }
            if allowed(FaultKind::Duplicate) && rng.random_bool(0.5) {
                network.duplicate_per_mille = [0, 10, 50, 200][rng.random_range(0..4)];
            }
            if allowed(FaultKind::Delay) && rng.random_bool(0.5) {
                network.delay_per_mille = [0, 10, 100, 300][rng.random_range(0..4)];
                network.delay_us_max = rng.random_range(10_000..=800_000);
            }
            "network"
        }
        9 => {
            scenario.tuning = ReplicaTuning::generate(rng);
            // With or without pre-vote, as the generated seeds (a quarter off).
            scenario.tuning.pre_vote = rng.random_bool(0.25).then_some(false);
            "tuning"
        }
        10 => {
            if allowed(FaultKind::Crash) {
                scenario.quick_restart_per_10k = [0, 10, 100, 300][rng.random_range(0..4)];
                scenario.milestone_crash_percent = [0, 5, 20, 50, 80][rng.random_range(0..5)];
            }
            if allowed(FaultKind::ClockDrift) {
                for drift in &mut scenario.clock_drift_ppm {
                    *drift = rng.random_range(-100_000..=100_000);
                }
            }
            "background-faults"
        }
        _ => {
            // New randomness for the network, disks, clients and chaos; the schedule
            // stays.
            scenario.seed = rng.random();
            "reseed"
        }
    };
    scenario.fault_events.sort_by_key(|e| e.at_us);
    for event in &scenario.fault_events {
        scenario.faults.0.insert(event.action.kind());
    }
    name
}

/// Borrows a fault event from a freshly generated scenario (so it is of an allowed kind,
/// shaped as generation shapes it). Returns false if no allowed kind schedules events.
fn add_event(rng: &mut ChaCha8Rng, scenario: &mut Scenario, options: &GenerateOptions) -> bool {
    for _ in 0..8 {
        let donor = Scenario::generate(rng.random(), options);
        if donor.fault_events.is_empty() {
            continue;
        }
        let mut event: FaultEvent =
            donor.fault_events[rng.random_range(0..donor.fault_events.len())].clone();
        event.at_us = rng.random_range(0..scenario.chaos_duration_us.max(1));
        scenario.fault_events.push(event);
        return true;
    }
    false
}

/// Points a fault at another node (or, where the world resolves it, at the leader).
fn retarget(rng: &mut ChaCha8Rng, action: &mut FaultAction, nodes: u64) {
    let any = rng.random_range(1..=nodes);
    match action {
        FaultAction::Crash { node, .. } => {
            *node = if rng.random_bool(0.5) { LEADER } else { any };
        }
        FaultAction::TornWriteCrash { node, .. }
        | FaultAction::RecoveryCrash { node, .. }
        | FaultAction::Corrupt { node, .. }
        | FaultAction::Pause { node, .. }
        | FaultAction::PersistCrash { node, .. } => *node = any,
        FaultAction::ClockRate { node, .. } | FaultAction::DiskOpCrash { node, .. } => {
            *node = if rng.random_bool(0.5) { LEADER } else { any }
        }
        FaultAction::PauseLeader { .. }
        | FaultAction::ElectionBurst { .. }
        | FaultAction::LeaderChurn { .. }
        | FaultAction::RotSnapshot { .. } => {}
        FaultAction::LinkSplit { client_cut, .. } => {
            if let Some(first) = client_cut.first_mut() {
                *first = any;
            }
        }
        FaultAction::Partition { blocked, label, .. }
        | FaultAction::Flap { blocked, label, .. } => {
            // Swap two names (the leader included) in the blocked links: same shape,
            // other victims.
            let a = if rng.random_bool(0.3) { LEADER } else { any };
            let b = rng.random_range(1..=nodes);
            for (x, y) in blocked.iter_mut() {
                for end in [x, y] {
                    if *end == a {
                        *end = b;
                    } else if *end == b {
                        *end = a;
                    }
                }
            }
            blocked.retain(|(x, y)| x != y);
            label.push_str(&format!(" (n{a}<->n{b})"));
        }
        // The operator: remove another member (or the leader), transfer elsewhere, or
        // promote without waiting. Added ids stay as they are (the world sizes itself
        // from them).
        FaultAction::RemoveMember { node } => {
            *node = if rng.random_bool(0.3) { LEADER } else { any };
        }
        FaultAction::TransferLeader { target } => {
            *target = if rng.random_bool(0.3) {
                None
            } else {
                Some(any)
            };
        }
        FaultAction::Promote { wait, .. } => *wait = !*wait,
        FaultAction::Replace { node, .. } => *node = any,
        FaultAction::AddLearner { .. } => {}
    }
}

/// Scales a fault's durations or counts.
fn rescale(rng: &mut ChaCha8Rng, action: &mut FaultAction) {
    let factor = [0.1, 0.5, 2.0, 5.0][rng.random_range(0..4)];
    let scale = |value: &mut u64| *value = ((*value as f64 * factor) as u64).clamp(1, 20_000_000);
    match action {
        FaultAction::Crash { down_us, .. } | FaultAction::Corrupt { down_us, .. } => scale(down_us),
        FaultAction::TornWriteCrash {
            ops_before_failure,
            down_us,
            ..
        }
        | FaultAction::RecoveryCrash {
            ops_before_failure,
            down_us,
            ..
        } => {
            scale(down_us);
            *ops_before_failure = rng.random_range(0..16);
        }
        FaultAction::Partition { duration_us, .. } => scale(duration_us),
        FaultAction::Flap {
            period_us, count, ..
        } => {
            scale(period_us);
            *count = rng.random_range(1..=20);
        }
        FaultAction::Pause { duration_us, .. }
        | FaultAction::LinkSplit { duration_us, .. }
        | FaultAction::PauseLeader { duration_us }
        | FaultAction::ClockRate { duration_us, .. }
        | FaultAction::ElectionBurst { duration_us, .. }
        | FaultAction::LeaderChurn { duration_us, .. } => scale(duration_us),
        FaultAction::PersistCrash { window_us, .. } => scale(window_us),
        FaultAction::DiskOpCrash { nth, down_us, .. } => {
            scale(down_us);
            *nth = rng.random_range(0..8);
        }
        // Membership steps have no durations; moving them in time is `move`.
        FaultAction::AddLearner { .. }
        | FaultAction::Promote { .. }
        | FaultAction::RemoveMember { .. }
        | FaultAction::TransferLeader { .. }
        | FaultAction::Replace { .. } => {}
        FaultAction::RotSnapshot { offset_pick, .. } => *offset_pick = rng.random(),
    }
}

/// Runs scenarios on `jobs` threads (each simulation single-threaded); outcomes in input
/// order. With `examples`, each outcome's coverage keeps readable states.
pub fn run_all(
    scenarios: &[&Scenario],
    jobs: usize,
    examples: bool,
    seed_budget: crate::budget::Budget,
) -> Vec<RunOutcome> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<RunOutcome>>> = Mutex::new(vec![None; scenarios.len()]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1).min(scenarios.len().max(1)) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(scenario) = scenarios.get(index) else {
                    break;
                };
                let outcome = crate::catch_panics(scenario, || {
                    let mut world = World::new(scenario, Tracer::silent()).with_budget(seed_budget);
                    if examples {
                        world = world.keep_coverage_examples();
                    }
                    world.run()
                });
                // A poisoned lock means another worker panicked; the scope re-raises
                // that panic, so this worker may simply stop.
                let Ok(mut results) = results.lock() else {
                    break;
                };
                results[index] = Some(outcome);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}
