//! `chatsim`: seeded chaos runs of a simulated chat cluster, exact replay, and shrinking.

use anyhow::{bail, Context, Result};
use chat_sim::budget::{
    Budget, ENTRIES_DELIVERED_MAX_DEFAULT, EVENTS_MAX_DEFAULT, EVENTS_PER_VIRTUAL_SEC_MAX_DEFAULT,
};
use chat_sim::coverage::Coverage;
use chat_sim::faults::FaultSet;
use chat_sim::runner::{run_seeds_within, Summary};
use chat_sim::scenario::{
    GenerateOptions, Scenario, CHAOS_DURATION_US_DEFAULT, CLIENTS_DEFAULT, NODES_MAX,
};
use chat_sim::shrink::ScenarioFile;
use chat_sim::trace::Tracer;
use chat_sim::{RunOutcome, World};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufWriter, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

/// Deterministic simulation of a replicated chat cluster.
///
/// Each seed is one exact run: a 3- to 7-node Raft cluster, simulated clients, and faults
/// (crashes, torn writes, disk corruption, message loss, partitions, clock drift, pauses)
/// chosen by the seed. Every step is checked (one leader per term, committed entries never
/// change); at the end the client history is checked against the state, the faults stop
/// and the cluster must recover, and a whole-cluster power loss must lose nothing.
///
/// Examples:
///   chatsim run                         # seeds 0..256, all faults, all cores
///   chatsim run --seeds 1000..3000 --faults crash,partition --jobs 2
///   chatsim replay --seed 42 --trace run.log --chrome-trace run.json
///   chatsim shrink --seed 42            # writes seeds/<name>.json
///   chatsim coverage --seeds 0..64      # rare and never-seen abstract states
///   chatsim explore --budget-secs 60    # coverage-guided search for failures
#[derive(Parser)]
#[command(name = "chatsim", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run many seeds in parallel; exit 1 if any violates a check.
    Run(RunArgs),
    /// Re-run one seed (or a scenario file) exactly, optionally writing traces.
    Replay(ReplayArgs),
    /// Minimize a failing seed's (or scenario file's) faults and workload; write the
    /// scenario under seeds/.
    Shrink(ShrinkArgs),
    /// Run seeds and report state-space coverage: the rare abstract states (seen in few
    /// seeds) and the per-node value pairs never seen.
    ///
    /// The abstraction, per node: status (up, paused, down, refused), role, term relative
    /// to the highest, log relative to the leader's (equal, behind, ahead, divergent),
    /// commit and apply lag, pending reads, session table fullness, disk (clean, torn
    /// write armed, recovery crash armed, corrupt); and the partition shape (none,
    /// one-way, leader isolated, minority or majority isolated, split). Node tuples are
    /// sorted, so renaming nodes makes no new state.
    #[command(verbatim_doc_comment)]
    Coverage(CoverageArgs),
    /// Coverage-guided search: mutate scenarios that reached new abstract states.
    ///
    /// Starts from generated seeds, keeps every scenario that reached an abstract state
    /// or transition no earlier run reached (see `chatsim coverage --help`), and mutates
    /// the kept ones: fault events added, moved, dropped, retargeted, rescaled and
    /// duplicated; network parameters, replica tuning, background crash rates and clock
    /// drift changed; two schedules spliced; new randomness. Every choice comes from
    /// `--seed`, so a run-for-run repeat is exact with the same seed (the wall-clock
    /// budget only decides where it stops).
    ///
    /// A failing scenario is written to --out-dir as a scenario file with its replay and
    /// shrink commands. Exit 0 when the budget ends with no failure, 1 with failures,
    /// 2 on bad usage.
    ///
    /// Example:
    ///   chatsim explore --budget-secs 60 --jobs 2 --faults crash,partition
    #[command(verbatim_doc_comment)]
    Explore(ExploreArgs),
    /// The Raft paper's Figure 16: time to elect a new leader after the leader crashes,
    /// per election-timeout range, as a table.
    Elections(ElectionsArgs),
}

#[derive(Args)]
struct ElectionsArgs {
    /// Leader crashes per election-timeout range.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    trials: u64,
    /// Seed of the experiment.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the results as one JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct SimArgs {
    /// Founding cluster size (`--members` is the same flag). Default: drawn per seed,
    /// 5 for half the seeds and 3, 4, 6 or 7 for the others.
    #[arg(long, alias = "members", value_parser = clap::value_parser!(u64).range(1..=NODES_MAX))]
    nodes: Option<u64>,
    /// Fault kinds to draw from: `all`, `none`, or a comma-separated list of crash,
    /// torn-write, recovery-crash, corruption, drop, duplicate, delay, partition,
    /// clock-drift, pause, the targeted nemeses leader-isolation, leader-pause,
    /// slow-clock, election-burst, persist-crash, disk-op-crash, and client-abuse
    /// (misbehaving clients: session churn, made-up and foreign sessions, mismatched
    /// retries, late replays), and membership (an operator adds learners with new ids,
    /// promotes them, removes followers and the leader, transfers leadership, and
    /// replaces nodes whose disk is lost), and leader-churn (Figure 8 of the Raft paper:
    /// each new leader cut off to a minority and crashed, during the cut, after it, or
    /// at its first commit; small batches). Each seed turns on a random subset (swarm
    /// testing); a quarter of the seeds also run without pre-vote. One
    /// kind is opt-in, not in `all`: `large-state` (big state on a disk whose time grows
    /// with the bytes written; its seeds run about five times slower per virtual second,
    /// which would take the default sweep below 1,000x). Ask: `--faults all,large-state`.
    #[arg(long, default_value = "all")]
    faults: FaultSet,
    /// Simulated clients.
    #[arg(long, default_value_t = CLIENTS_DEFAULT)]
    clients: usize,
    /// Virtual seconds of chaos before faults stop and recovery is checked.
    #[arg(long, default_value_t = CHAOS_DURATION_US_DEFAULT as f64 / 1e6)]
    chaos_secs: f64,
    /// Event budget per seed: a seed that takes more events fails with check `budget`
    /// (a livelock or message storm), so that no seed can hold up a sweep.
    #[arg(long, default_value_t = EVENTS_MAX_DEFAULT)]
    max_events: u64,
    /// Event budget per second of virtual time: a storm of messages that answer each
    /// other makes virtual time crawl; it fails with check `budget` after bounded work.
    #[arg(long, default_value_t = EVENTS_PER_VIRTUAL_SEC_MAX_DEFAULT)]
    max_events_per_virtual_sec: u64,
    /// Budget of log entries carried by all delivered messages of a seed: bounds the work
    /// of a leader that resends its log in a loop (fails with check `budget`).
    #[arg(long, default_value_t = ENTRIES_DELIVERED_MAX_DEFAULT)]
    max_entries_delivered: u64,
    /// Virtual-time budget per seed, in seconds from the start; a seed still running then
    /// fails with check `budget`. Default: the chaos phase plus 70 s (30 s each for the
    /// recovery and power-loss phases, and slack).
    #[arg(long)]
    max_virtual_secs: Option<f64>,
}

impl SimArgs {
    fn generate_options(&self) -> Result<GenerateOptions> {
        if !(self.chaos_secs > 0.0 && self.chaos_secs <= 3600.0) {
            bail!("--chaos-secs must be in (0, 3600], got {}", self.chaos_secs);
        }
        if self.clients == 0 || self.clients > 1000 {
            bail!("--clients must be in 1..=1000, got {}", self.clients);
        }
        Ok(GenerateOptions {
            nodes: self.nodes,
            faults: self.faults.clone(),
            clients: self.clients,
            chaos_duration_us: (self.chaos_secs * 1e6) as u64,
        })
    }

    fn budget(&self) -> Result<Budget> {
        if self.max_events == 0
            || self.max_events_per_virtual_sec == 0
            || self.max_entries_delivered == 0
        {
            bail!("--max-events, --max-events-per-virtual-sec and --max-entries-delivered must be at least 1");
        }
        let virtual_us_max = match self.max_virtual_secs {
            None => None,
            Some(secs) if secs > 0.0 && secs <= 1e6 => Some((secs * 1e6) as u64),
            Some(secs) => bail!("--max-virtual-secs must be in (0, 1000000], got {secs}"),
        };
        Ok(Budget {
            events_max: self.max_events,
            events_per_virtual_sec_max: self.max_events_per_virtual_sec,
            entries_delivered_max: self.max_entries_delivered,
            virtual_us_max,
        })
    }

    /// The flags that differ from the defaults, for a replay command line.
    fn flags(&self) -> String {
        let mut flags = String::new();
        if let Some(nodes) = self.nodes {
            flags.push_str(&format!(" --nodes {nodes}"));
        }
        if self.faults != FaultSet::all() {
            flags.push_str(&format!(" --faults {}", self.faults));
        }
        if self.clients != CLIENTS_DEFAULT {
            flags.push_str(&format!(" --clients {}", self.clients));
        }
        if (self.chaos_secs * 1e6) as u64 != CHAOS_DURATION_US_DEFAULT {
            flags.push_str(&format!(" --chaos-secs {}", self.chaos_secs));
        }
        flags.push_str(&self.budget_flags());
        flags
    }

    /// The budget flags that differ from the defaults: a scenario file's replay needs
    /// them to stop where the failing run stopped.
    fn budget_flags(&self) -> String {
        let mut flags = String::new();
        if self.max_events != EVENTS_MAX_DEFAULT {
            flags.push_str(&format!(" --max-events {}", self.max_events));
        }
        if self.max_events_per_virtual_sec != EVENTS_PER_VIRTUAL_SEC_MAX_DEFAULT {
            flags.push_str(&format!(
                " --max-events-per-virtual-sec {}",
                self.max_events_per_virtual_sec
            ));
        }
        if self.max_entries_delivered != ENTRIES_DELIVERED_MAX_DEFAULT {
            flags.push_str(&format!(
                " --max-entries-delivered {}",
                self.max_entries_delivered
            ));
        }
        if let Some(secs) = self.max_virtual_secs {
            flags.push_str(&format!(" --max-virtual-secs {secs}"));
        }
        flags
    }
}

#[derive(Args)]
struct RunArgs {
    /// Run one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A half-open range of seeds, `A..B`.
    #[arg(long, value_parser = parse_range)]
    seeds: Option<(u64, u64)>,
    /// Worker threads (each simulation is single-threaded). Default: all cores.
    #[arg(long)]
    jobs: Option<usize>,
    /// Print the summary (and failures) as one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sim: SimArgs,
}

#[derive(Args)]
struct ReplayArgs {
    /// The seed to re-run.
    #[arg(long, required_unless_present = "scenario")]
    seed: Option<u64>,
    /// Run a scenario file (as written by `shrink`) instead of generating from a seed.
    #[arg(long, conflicts_with = "seed")]
    scenario: Option<PathBuf>,
    /// Write a readable event log here.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Write a Chrome trace event file here (open it in Perfetto or chrome://tracing).
    #[arg(long)]
    chrome_trace: Option<PathBuf>,
    /// Write the client history as an HTML timeline here, the shortest non-linearizable
    /// window highlighted.
    #[arg(long)]
    history_html: Option<PathBuf>,
    #[command(flatten)]
    sim: SimArgs,
}

#[derive(Args)]
struct ShrinkArgs {
    /// The failing seed to minimize.
    #[arg(long, required_unless_present = "scenario")]
    seed: Option<u64>,
    /// Minimize a failing scenario file instead (as written by `explore`).
    #[arg(long, conflicts_with = "seed")]
    scenario: Option<PathBuf>,
    /// Where to write the scenario file.
    #[arg(long, default_value = "seeds")]
    out_dir: PathBuf,
    #[command(flatten)]
    sim: SimArgs,
}

#[derive(Args)]
struct CoverageArgs {
    /// A half-open range of seeds, `A..B`.
    #[arg(long, value_parser = parse_range, default_value = "0..64")]
    seeds: (u64, u64),
    /// Worker threads. Default: all cores.
    #[arg(long)]
    jobs: Option<usize>,
    /// A state is rare if at most this many seeds reached it.
    #[arg(long, default_value_t = 1)]
    rare_seeds_max: usize,
    /// How many rare states and never-seen pairs to list.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print the report as one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sim: SimArgs,
}

#[derive(Args)]
struct ExploreArgs {
    /// Wall-clock seconds to search for.
    #[arg(long)]
    budget_secs: f64,
    /// Worker threads (each simulation is single-threaded). Default: all cores.
    #[arg(long)]
    jobs: Option<usize>,
    /// Seeds every choice of the search.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where failing scenarios are written.
    #[arg(long, default_value = "explore-out")]
    out_dir: PathBuf,
    /// Stop after the round in which this many failures were found.
    #[arg(long, default_value_t = 1)]
    failures_max: usize,
    /// Print the summary (and failures) as one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sim: SimArgs,
}

fn jobs_or_all_cores(jobs: Option<usize>) -> Result<usize> {
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    Ok(jobs)
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("expected A..B, got {text:?}"))?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|e| format!("bad range start {a:?}: {e}"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|e| format!("bad range end {b:?}: {e}"))?;
    if a >= b {
        return Err(format!("empty range {a}..{b}"));
    }
    Ok((a, b))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Replay(args) => replay(args),
        Command::Shrink(args) => shrink(args),
        Command::Coverage(args) => coverage(args),
        Command::Explore(args) => explore(args),
        Command::Elections(args) => elections(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("chatsim: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn describe_failure(outcome: &RunOutcome, flags: &str) -> Option<String> {
    let failure = outcome.failure.as_ref()?;
    Some(format!(
        "seed {} FAILED {} at t={} (event {}): {}\n  replay: chatsim replay --seed {}{flags}",
        outcome.seed,
        failure.violation.check,
        failure.at,
        failure.event,
        failure.violation.detail,
        outcome.seed
    ))
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let options = args.sim.generate_options()?;
    let budget = args.sim.budget()?;
    let seeds: Vec<u64> = match (args.seed, args.seeds) {
        (Some(seed), _) => vec![seed],
        (None, Some((a, b))) => (a..b).collect(),
        (None, None) => (0..256).collect(),
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let progress = if std::io::stderr().is_terminal() && !args.json && seeds.len() > 1 {
        let bar = ProgressBar::new(seeds.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} seeds, {msg} [{elapsed_precise}, eta {eta}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let flags = args.sim.flags();
    let failures_so_far = AtomicU64::new(0);
    // Each failure is printed the moment its seed ends (stdout, or stderr under --json so
    // that stdout stays one JSON document): a sweep that is stopped early has still said
    // everything it found.
    let on_done = |outcome: &RunOutcome| {
        if let Some(text) = describe_failure(outcome, &flags) {
            failures_so_far.fetch_add(1, Ordering::Relaxed);
            match (&progress, args.json) {
                (Some(bar), _) => bar.println(text),
                (None, true) => eprintln!("{text}"),
                (None, false) => println!("{text}"),
            }
        }
        if let Some(bar) = &progress {
            bar.set_message(format!(
                "{} failed",
                failures_so_far.load(Ordering::Relaxed)
            ));
            bar.inc(1);
        }
    };
    let (outcomes, wall) = run_seeds_within(&seeds, &options, budget, jobs, &on_done);
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    let mut summary = Summary::default();
    for outcome in &outcomes {
        summary.add(outcome);
    }
    let wall_secs = wall.as_secs_f64().max(1e-9);
    let simulated_secs = summary.simulated_us as f64 / 1e6;
    if args.json {
        let failures: Vec<serde_json::Value> = outcomes
            .iter()
            .filter_map(|o| {
                let f = o.failure.as_ref()?;
                Some(serde_json::json!({
                    "seed": o.seed,
                    "check": f.violation.check,
                    "detail": f.violation.detail,
                    "time_us": f.at.0,
                    "event": f.event,
                    "replay": format!("chatsim replay --seed {}{flags}", o.seed),
                }))
            })
            .collect();
        let document = serde_json::json!({
            "seeds": summary.seeds,
            "failures": summary.failures,
            "events": summary.events,
            "simulated_secs": simulated_secs,
            "wall_secs": wall_secs,
            "events_per_sec": summary.events as f64 / wall_secs,
            "acceleration": simulated_secs / wall_secs,
            "acceleration_per_job": simulated_secs / wall_secs / jobs as f64,
            "jobs": jobs,
            "budget": {
                "events_max": budget.events_max,
                "virtual_secs_max": budget.virtual_us_max.map(|us| us as f64 / 1e6),
                "events_per_seed_max_seen": summary.events_per_seed_max,
                "queued_events_max_seen": summary.queued_events_max,
                "events_per_virtual_sec_max": budget.events_per_virtual_sec_max,
                "events_per_virtual_sec_max_seen": summary.events_per_virtual_sec_max,
                "entries_delivered_max": budget.entries_delivered_max,
                "entries_delivered_max_seen": summary.entries_delivered_max,
            },
            "coverage": coverage_json(&summary.coverage),
            "linearizability_undecided": summary.linearizability_unknown,
            "liveness": summary.liveness_json(),
            "failed": failures,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        if summary.linearizability_unknown > 0 {
            println!(
                "linearizability: {} history partitions undecided (search budget), not failures",
                summary.linearizability_unknown
            );
        }
        println!(
            "budget: {}; most used by one seed: {} events, {} in a virtual second, {} entries, {} queued",
            budget.describe(),
            summary.events_per_seed_max,
            summary.events_per_virtual_sec_max,
            summary.entries_delivered_max,
            summary.queued_events_max
        );
        println!(
            "seeds: {}  failures: {}  events: {}  simulated: {:.1}s  wall: {:.2}s  events/s: {:.0}  acceleration: {:.0}x ({:.0}x per job, {jobs} jobs)  {}",
            summary.seeds,
            summary.failures,
            summary.events,
            simulated_secs,
            wall_secs,
            summary.events as f64 / wall_secs,
            simulated_secs / wall_secs,
            simulated_secs / wall_secs / jobs as f64,
            coverage_text(&summary.coverage)
        );
        println!("{}", summary.liveness_line());
    }
    Ok(if summary.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Coverage for the summary line: distinct abstract states and transitions.
fn coverage_text(coverage: &Coverage) -> String {
    format!(
        "coverage: {} states, {} transitions",
        coverage.states.len(),
        coverage.transitions.len()
    )
}

fn coverage_json(coverage: &Coverage) -> serde_json::Value {
    serde_json::json!({
        "states": coverage.states.len(),
        "transitions": coverage.transitions.len(),
        "node_values": coverage.node_values.len(),
    })
}

fn open_writer(path: &Option<PathBuf>) -> Result<Option<Box<dyn std::io::Write>>> {
    let Some(path) = path else { return Ok(None) };
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?; // determinism: ok (CLI file I/O, outside any simulation)
    Ok(Some(Box::new(BufWriter::new(file))))
}

fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let (scenario, replay_hint) = match (&args.scenario, args.seed) {
        (Some(path), _) => {
            let scenario = read_scenario(path)?;
            (
                scenario,
                format!("chatsim replay --scenario {}", path.display()),
            )
        }
        (None, Some(seed)) => {
            let options = args.sim.generate_options()?;
            (
                Scenario::generate(seed, &options),
                format!("chatsim replay --seed {seed}{}", args.sim.flags()),
            )
        }
        (None, None) => bail!("give --seed or --scenario"),
    };
    let tracer = Tracer::new(open_writer(&args.trace)?, open_writer(&args.chrome_trace)?);
    let (outcome, history) = World::new(&scenario, tracer)
        .with_budget(args.sim.budget()?)
        .run_with_history();
    if let Some(path) = &args.history_html {
        let page = chat_sim::linearizability::history_html(
            &history,
            &chat_sim::linearizability::check(&history),
        );
        let written = std::fs::write(path, page); // determinism: ok (CLI file I/O, outside any simulation)
        written.with_context(|| format!("cannot write {}", path.display()))?;
    }
    let stats = &outcome.stats;
    println!(
        "seed {}: {} events, {:.3}s simulated, {} crashes, {} elections, {} of {} operations acknowledged",
        scenario.seed,
        stats.events,
        stats.simulated_us as f64 / 1e6,
        stats.crashes,
        stats.elections,
        stats.ops_acknowledged,
        stats.ops_completed
    );
    println!(
        "linearizability: {} search steps, {} partitions undecided (budget)",
        stats.linearizability_steps, stats.linearizability_unknown
    );
    println!(
        "liveness: longest leaderless with a healthy quorum {:.3}s (bound {:.3}s), end of chaos to first new commit {}",
        stats.leaderless_us_max as f64 / 1e6,
        stats.leaderless_bound_us as f64 / 1e6,
        stats
            .first_commit_after_chaos_us
            .map_or("none".to_string(), |us| format!("{:.3}s", us as f64 / 1e6))
    );
    let code = match &outcome.failure {
        Some(failure) => {
            println!(
                "FAILED {} at t={} (event {}): {}\n  replay: {replay_hint}",
                failure.violation.check, failure.at, failure.event, failure.violation.detail
            );
            ExitCode::from(1)
        }
        None => {
            println!("passed");
            ExitCode::SUCCESS
        }
    };
    println!("fingerprint: {:016x}", outcome.fingerprint);
    Ok(code)
}

fn elections(args: ElectionsArgs) -> Result<ExitCode> {
    use chat_sim::elections::{json, run_elections, table, ElectionsOptions};
    let options = ElectionsOptions::paper(args.seed, args.trials as usize);
    let results = run_elections(&options)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json(&options, &results))?
        );
    } else {
        print!("{}", table(&results));
    }
    Ok(ExitCode::SUCCESS)
}

fn shrink(args: ShrinkArgs) -> Result<ExitCode> {
    let budget = args.sim.budget()?;
    let (scenario, source, name) = match (&args.scenario, args.seed) {
        (Some(path), _) => {
            let stem = path
                .file_stem()
                .map_or("scenario".into(), |s| s.to_string_lossy());
            (
                ScenarioFile::read(path)?,
                format!("--scenario {}", path.display()),
                stem.into_owned(),
            )
        }
        (None, Some(seed)) => (
            Scenario::generate(seed, &args.sim.generate_options()?),
            format!("--seed {seed}{}", args.sim.flags()),
            format!("seed{seed}"),
        ),
        (None, None) => bail!("give --seed or --scenario"),
    };
    let outcome = chat_sim::run_scenario_within(&scenario, budget);
    let Some(failure) = outcome.failure else {
        bail!("{source} passes every check; there is nothing to shrink");
    };
    let check = failure.violation.check;
    println!("{source} fails {check}: {}", failure.violation.detail);
    println!("shrinking (each step re-runs the scenario)...");
    let (shrunk, stats) = chat_sim::shrink::shrink(&scenario, check, &mut |s| {
        chat_sim::run_scenario_within(s, budget)
    });
    let final_outcome = chat_sim::run_scenario_within(&shrunk, budget);
    let Some(final_failure) = final_outcome.failure else {
        bail!("internal error: the shrunk scenario no longer fails");
    };
    let file = ScenarioFile {
        description: format!(
            "Found by `chatsim shrink {source}`: {check}. Say here which bug it caught."
        ),
        check: check.to_string(),
        detail: final_failure.violation.detail.clone(),
        scenario: shrunk,
    };
    let name = name.strip_prefix(&format!("{check}-")).unwrap_or(&name);
    let path = args.out_dir.join(format!("{check}-{name}.json"));
    file.write(&path)?;
    println!(
        "{} runs: fault events {} -> {}, client operations {} -> {}",
        stats.runs,
        stats.fault_events_before,
        stats.fault_events_after,
        stats.ops_before,
        stats.ops_after
    );
    println!("still fails {check}: {}", final_failure.violation.detail);
    println!(
        "wrote {}\n  replay: chatsim replay --scenario {}",
        path.display(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads a scenario file as written by `shrink` or `explore` (or a bare scenario).
fn read_scenario(path: &std::path::Path) -> Result<Scenario> {
    ScenarioFile::read(path)
}

fn coverage(args: CoverageArgs) -> Result<ExitCode> {
    let options = args.sim.generate_options()?;
    let jobs = jobs_or_all_cores(args.jobs)?;
    let (a, b) = args.seeds;
    let scenarios: Vec<Scenario> = (a..b).map(|s| Scenario::generate(s, &options)).collect();
    let refs: Vec<&Scenario> = scenarios.iter().collect();
    let outcomes = chat_sim::explore::run_all(&refs, jobs, true, args.sim.budget()?);
    let report = chat_sim::coverage::CoverageReport::new(&outcomes, args.rare_seeds_max);
    let never_seen = report.total.never_seen_pairs();
    if args.json {
        let rare: Vec<serde_json::Value> = report
            .rare
            .iter()
            .take(args.limit)
            .map(|(seed, state)| serde_json::json!({"seed": seed, "state": state.to_string()}))
            .collect();
        let document = serde_json::json!({
            "seeds": outcomes.len(),
            "coverage": coverage_json(&report.total),
            "rare_seeds_max": args.rare_seeds_max,
            "rare_count": report.rare.len(),
            "rare": rare,
            "never_seen_count": never_seen.len(),
            "never_seen": never_seen.iter().take(args.limit).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "seeds {a}..{b}: {} ({} per-node values)",
        coverage_text(&report.total),
        report.total.node_values.len()
    );
    println!(
        "{} states reached by at most {} seed(s); the first {}:",
        report.rare.len(),
        args.rare_seeds_max,
        args.limit.min(report.rare.len())
    );
    for (seed, state) in report.rare.iter().take(args.limit) {
        println!("  seed {seed}: {state}");
    }
    println!(
        "{} pairs of per-node values never seen together; the first {}:",
        never_seen.len(),
        args.limit.min(never_seen.len())
    );
    for pair in never_seen.iter().take(args.limit) {
        println!("  {pair}");
    }
    Ok(ExitCode::SUCCESS)
}

fn explore(args: ExploreArgs) -> Result<ExitCode> {
    use chat_sim::explore::{Budget, ExploreOptions};
    if !(args.budget_secs > 0.0 && args.budget_secs.is_finite()) {
        bail!("--budget-secs must be positive, got {}", args.budget_secs);
    }
    if args.failures_max == 0 {
        bail!("--failures-max must be at least 1");
    }
    let mut options = ExploreOptions::new(
        args.sim.generate_options()?,
        Budget::WallSecs(args.budget_secs),
    );
    options.jobs = jobs_or_all_cores(args.jobs)?;
    options.seed = args.seed;
    options.seed_budget = args.sim.budget()?;
    let budget_flags = args.sim.budget_flags();
    options.failures_max = args.failures_max;
    let report = chat_sim::explore::explore(&options, &|_| {});
    let mut failed = Vec::new();
    for (index, found) in report.failures.iter().enumerate() {
        let Some(failure) = &found.outcome.failure else {
            continue;
        };
        let check = failure.violation.check;
        let path = args
            .out_dir
            .join(format!("{check}-explore{}-{index}.json", args.seed));
        let file = ScenarioFile {
            description: format!(
                "Found by `chatsim explore --seed {}{}` ({}): {check}. Say here which bug it caught.",
                args.seed,
                args.sim.flags(),
                found.candidate.origin
            ),
            check: check.to_string(),
            detail: failure.violation.detail.clone(),
            scenario: found.candidate.scenario.clone(),
        };
        file.write(&path)?;
        failed.push((found, failure, path));
    }
    let wall_secs = report.wall.as_secs_f64().max(1e-9);
    let simulated_secs = report.simulated_us as f64 / 1e6;
    if args.json {
        let failures: Vec<serde_json::Value> = failed
            .iter()
            .map(|(found, failure, path)| {
                serde_json::json!({
                    "check": failure.violation.check,
                    "detail": failure.violation.detail,
                    "time_us": failure.at.0,
                    "event": failure.event,
                    "origin": found.candidate.origin,
                    "scenario_file": path.display().to_string(),
                    "replay": format!("chatsim replay --scenario {}{budget_flags}", path.display()),
                    "shrink": format!("chatsim shrink --scenario {}{budget_flags}", path.display()),
                })
            })
            .collect();
        let document = serde_json::json!({
            "runs": report.runs,
            "rounds": report.rounds,
            "corpus": report.corpus.len(),
            "failures": failed.len(),
            "events": report.events,
            "simulated_secs": simulated_secs,
            "wall_secs": wall_secs,
            "acceleration": simulated_secs / wall_secs,
            "jobs": options.jobs,
            "seed": args.seed,
            "coverage": coverage_json(&report.coverage),
            "failed": failures,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        for (found, failure, path) in &failed {
            println!(
                "FAILED {} at t={} (event {}): {}\n  found as: {}\n  replay: chatsim replay --scenario {}{budget_flags}\n  shrink: chatsim shrink --scenario {}{budget_flags}",
                failure.violation.check,
                failure.at,
                failure.event,
                failure.violation.detail,
                found.candidate.origin,
                path.display(),
                path.display()
            );
        }
        println!(
            "runs: {}  corpus: {}  failures: {}  simulated: {:.1}s  wall: {:.2}s  acceleration: {:.0}x  {}",
            report.runs,
            report.corpus.len(),
            failed.len(),
            simulated_secs,
            wall_secs,
            simulated_secs / wall_secs,
            coverage_text(&report.coverage)
        );
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
