//! `chatsim`: seeded chaos runs of a simulated chat cluster, exact replay, and shrinking.

use anyhow::{bail, Context, Result};
use chat_sim::faults::FaultSet;
use chat_sim::runner::{run_seeds, Summary};
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

/// Deterministic simulation of a replicated chat cluster.
///
/// Each seed is one exact run: a 5-node Raft cluster, simulated clients, and faults
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
    /// Minimize a failing seed's faults and workload; write the scenario under seeds/.
    Shrink(ShrinkArgs),
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
    /// Cluster size.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=NODES_MAX))]
    nodes: u64,
    /// Fault kinds to draw from: `all`, `none`, or a comma-separated list of crash,
    /// torn-write, recovery-crash, corruption, drop, duplicate, delay, partition,
    /// clock-drift, pause. Each seed turns on a random subset (swarm testing).
    #[arg(long, default_value = "all")]
    faults: FaultSet,
    /// Simulated clients.
    #[arg(long, default_value_t = CLIENTS_DEFAULT)]
    clients: usize,
    /// Virtual seconds of chaos before faults stop and recovery is checked.
    #[arg(long, default_value_t = CHAOS_DURATION_US_DEFAULT as f64 / 1e6)]
    chaos_secs: f64,
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

    /// The flags that differ from the defaults, for a replay command line.
    fn flags(&self) -> String {
        let mut flags = String::new();
        if self.nodes != 5 {
            flags.push_str(&format!(" --nodes {}", self.nodes));
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
    #[command(flatten)]
    sim: SimArgs,
}

#[derive(Args)]
struct ShrinkArgs {
    /// The failing seed to minimize.
    #[arg(long)]
    seed: u64,
    /// Where to write the scenario file.
    #[arg(long, default_value = "seeds")]
    out_dir: PathBuf,
    #[command(flatten)]
    sim: SimArgs,
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
    let failures_so_far = std::sync::atomic::AtomicU64::new(0);
    let on_done = |outcome: &RunOutcome| {
        if let Some(bar) = &progress {
            if outcome.failure.is_some() {
                failures_so_far.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            bar.set_message(format!(
                "{} failed",
                failures_so_far.load(std::sync::atomic::Ordering::Relaxed)
            ));
            bar.inc(1);
        }
    };
    let (outcomes, wall) = run_seeds(&seeds, &options, jobs, &on_done);
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    let mut summary = Summary::default();
    for outcome in &outcomes {
        summary.add(outcome);
    }
    let wall_secs = wall.as_secs_f64().max(1e-9);
    let simulated_secs = summary.simulated_us as f64 / 1e6;
    let flags = args.sim.flags();
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
            "jobs": jobs,
            "liveness": summary.liveness_json(),
            "failed": failures,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        for outcome in &outcomes {
            if let Some(text) = describe_failure(outcome, &flags) {
                println!("{text}");
            }
        }
        println!(
            "seeds: {}  failures: {}  events: {}  simulated: {:.1}s  wall: {:.2}s  events/s: {:.0}  acceleration: {:.0}x",
            summary.seeds,
            summary.failures,
            summary.events,
            simulated_secs,
            wall_secs,
            summary.events as f64 / wall_secs,
            simulated_secs / wall_secs
        );
        println!("{}", summary.liveness_line());
    }
    Ok(if summary.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
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
    let outcome = World::new(&scenario, tracer).run();
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
        "liveness: longest leaderless with a healthy quorum {:.3}s (bound {:.3}s), end of chaos to first new commit {}",
        stats.leaderless_us_max as f64 / 1e6,
        chat_sim::world::leaderless_bound_us(&scenario) as f64 / 1e6,
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
    let options = args.sim.generate_options()?;
    let scenario = Scenario::generate(args.seed, &options);
    let outcome = chat_sim::run_scenario(&scenario);
    let Some(failure) = outcome.failure else {
        bail!(
            "seed {} passes every check; there is nothing to shrink",
            args.seed
        );
    };
    let check = failure.violation.check;
    println!(
        "seed {} fails {check}: {}",
        args.seed, failure.violation.detail
    );
    println!("shrinking (each step re-runs the scenario)...");
    let (shrunk, stats) =
        chat_sim::shrink::shrink(&scenario, check, &mut |s| chat_sim::run_scenario(s));
    let final_outcome = chat_sim::run_scenario(&shrunk);
    let Some(final_failure) = final_outcome.failure else {
        bail!("internal error: the shrunk scenario no longer fails");
    };
    let file = ScenarioFile {
        description: format!(
            "Found by `chatsim shrink --seed {}{}`: {check}. Say here which bug it caught.",
            args.seed,
            args.sim.flags()
        ),
        check: check.to_string(),
        detail: final_failure.violation.detail.clone(),
        scenario: shrunk,
    };
    std::fs::create_dir_all(&args.out_dir) // determinism: ok (CLI file I/O, outside any simulation)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let path = args.out_dir.join(format!("{check}-seed{}.json", args.seed));
    std::fs::write(&path, serde_json::to_string_pretty(&file)? + "\n") // determinism: ok (CLI file I/O, outside any simulation)
        .with_context(|| format!("cannot write {}", path.display()))?;
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

/// Reads a scenario file as written by `shrink` (or a bare scenario).
fn read_scenario(path: &std::path::Path) -> Result<Scenario> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?; // determinism: ok (CLI file I/O, outside any simulation)
    if let Ok(file) = serde_json::from_str::<ScenarioFile>(&text) {
        return Ok(file.scenario);
    }
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a scenario file", path.display()))
}
