//! `chatbench`: one load generator for two systems, so both get the same clients,
//! concurrency, payload and measurements.
//!
//! - `chatbench run --system chat|etcd --endpoints ...`: C closed-loop clients (each its
//!   own account and session, or its own etcd key) run phases of replicated writes and
//!   linearizable reads; each phase reports ops/s, p50/p95/p99/max latency and errors,
//!   as text or (`--json`) one JSON document per line.
//! - `chatbench compare --ours FILE --etcd FILE [--sim FILE]`: the side-by-side table,
//!   with the ratios ours/etcd, as Markdown.
//! - `chatbench fill --system chat|etcd ...`: grows the state to N messages (or keys)
//!   and reports each window and the totals (the scale benchmark, `bench/scale.sh`).
//! - `chatbench first-write --system chat|etcd ...`: retries one write until it is
//!   acknowledged and prints how long that took (after a restart of every server).
//! - `chatbench scale-report --ours FILE --etcd FILE ...`: the scale table, Markdown.

mod chat;
mod etcd;
mod fill;
mod fill_report;
mod first_write;
mod load;
mod procstat;
mod report;
mod scrape;
mod stats;

/// Our copy of etcd's KV service (see `proto/etcd_kv.proto`).
#[allow(clippy::all, clippy::pedantic)]
mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use load::{Client, Limit, Op};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "chatbench",
    version,
    about = "Load generator for the chat cluster and etcd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs phases of load against one system and reports each.
    Run(RunArgs),
    /// Prints ours vs etcd side by side (Markdown) from two `run --json` outputs.
    Compare {
        #[arg(long, value_name = "FILE")]
        ours: PathBuf,
        #[arg(long, value_name = "FILE")]
        etcd: PathBuf,
        /// The JSON summary of `chatsim run --json`.
        #[arg(long, value_name = "FILE")]
        sim: Option<PathBuf>,
    },
    /// Grows the state to N messages (keys) and reports each window and the totals.
    Fill(fill::FillArgs),
    /// Retries a write until it is acknowledged; prints how long that took.
    FirstWrite(first_write::FirstWriteArgs),
    /// Prints the scale benchmark's side-by-side table (Markdown) from `fill --json`
    /// and `first-write --json` outputs.
    ScaleReport {
        #[arg(long, value_name = "FILE")]
        ours: PathBuf,
        #[arg(long, value_name = "FILE")]
        etcd: PathBuf,
        #[arg(long, value_name = "FILE")]
        ours_first_write: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        etcd_first_write: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum System {
    Chat,
    Etcd,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[arg(long, value_enum)]
    system: System,
    /// Client addresses HOST:PORT,... For chat: any members (the leader is found and
    /// followed). For etcd: client i uses endpoint i mod N.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Concurrent clients, each with one operation outstanding.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Size of each written message body / value.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// The phases to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "write,read")]
    ops: Vec<Op>,
    /// Length of each phase's measurement window.
    #[arg(long, default_value_t = 3.0, conflicts_with = "count")]
    duration_secs: f64,
    /// Unrecorded load before each window, so connections and caches are warm.
    #[arg(long, default_value_t = 0.5, conflicts_with = "count")]
    warmup_secs: f64,
    /// Instead of a duration: this many operations per phase, spread over the clients.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON document per phase, one per line.
    #[arg(long)]
    json: bool,
    /// Process ids of the servers (Linux): also report their CPU time and context
    /// switches per operation over each measurement window.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
}

/// Accounts and keys a run creates carry this many hex digits of a fresh UUID, so runs
/// against the same cluster never collide.
const RUN_TAG_DIGITS: usize = 8;
const CLIENTS_MAX: usize = 4_096;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => block_on(run(args)),
        Command::Compare { ours, etcd, sim } => report::compare(&ours, &etcd, sim.as_deref()),
        Command::Fill(args) => block_on(fill::fill(args)),
        Command::FirstWrite(args) => block_on(first_write::first_write(args)),
        Command::ScaleReport {
            ours,
            etcd,
            ours_first_write,
            etcd_first_write,
        } => fill_report::scale_report(&fill_report::ScaleFiles {
            ours: &ours,
            etcd: &etcd,
            ours_first_write: ours_first_write.as_deref(),
            etcd_first_write: etcd_first_write.as_deref(),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chatbench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(work)
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("{flag} must be a non-negative number"))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if !(1..=CLIENTS_MAX).contains(&args.clients) {
        bail!("--clients must be between 1 and {CLIENTS_MAX}");
    }
    let limit = match args.count {
        Some(0) => bail!("--count must be positive"),
        Some(total) => Limit::Count { total },
        None => Limit::Time {
            warmup: seconds(args.warmup_secs, "--warmup-secs")?,
            measure: seconds(args.duration_secs, "--duration-secs")?,
        },
    };
    let system = match args.system {
        System::Chat => "chat",
        System::Etcd => "etcd",
    };
    let clients = connect(&args).await?;
    let mut clients = clients;
    for &op in &args.ops {
        let (back, result) = load::run_phase(
            clients,
            op,
            limit,
            system,
            args.payload_bytes,
            &args.server_pids,
        )
        .await?;
        clients = back;
        if args.json {
            println!("{}", serde_json::to_string(&result)?);
        } else {
            println!("{}", report::line(&result));
        }
    }
    Ok(())
}

/// Sets up every client at once: accounts and logins for chat, a first put for etcd.
async fn connect(args: &RunArgs) -> anyhow::Result<Vec<Client>> {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    let tag = &uuid[..RUN_TAG_DIGITS];
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.clients {
        let endpoints = args.endpoints.clone();
        let payload_bytes = args.payload_bytes;
        let system = args.system;
        let name = format!("b{tag}-{index}");
        tasks.spawn(async move {
            let client = match system {
                System::Chat => {
                    Client::Chat(chat::ChatBench::connect(&endpoints, name, payload_bytes).await?)
                }
                System::Etcd => {
                    let endpoint = &endpoints[index % endpoints.len()];
                    let key = format!("chatbench/{name}");
                    Client::Etcd(etcd::EtcdBench::connect(endpoint, key, payload_bytes).await?)
                }
            };
            anyhow::Ok((index, client))
        });
    }
    let mut clients = Vec::with_capacity(args.clients);
    while let Some(joined) = tasks.join_next().await {
        clients.push(joined??);
    }
    clients.sort_by_key(|(index, _)| *index);
    Ok(clients.into_iter().map(|(_, client)| client).collect())
}
