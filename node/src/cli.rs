//! `chatnode`: one member of the chat cluster, or (`chatnode local`) a whole cluster on
//! loopback. Errors end the process with one line and a non-zero status. This is its
//! `main`; the binary is a one-line wrapper.

use crate::config::{NodeArgs, NodeConfig};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(
    name = "chatnode",
    bin_name = "chatnode",
    version,
    about = "A member of the replicated chat cluster",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
    /// Threads that serve clients and peers [default: half the cores, at least 1].
    ///
    /// The async runtime's workers (config key `io_threads`). The replica runs on a
    /// thread of its own, and snapshots and password hashes on others; the rest is
    /// network and gRPC. More threads than that work needs cost wakeups between them:
    /// on a 2-core machine running five nodes, one thread each cut the write p99 from
    /// 21-25 ms to 14-16 ms and raised throughput by 12-17% (BENCHMARKS.md). With a
    /// subcommand, give it after the subcommand's name (`chatnode local --io-threads 2`).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::config::IO_THREADS_MAX)))]
    io_threads: Option<u16>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a whole cluster on loopback (node i on 127.0.0.1:BASE_PORT+i-1) until Ctrl-C.
    Local {
        #[arg(long, default_value_t = 5)]
        nodes: u64,
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(long, value_name = "P", default_value_t = 7001)]
        base_port: u16,
        /// Node i serves Prometheus metrics at http://127.0.0.1:M+i-1/metrics
        /// [default: BASE_PORT + 1000].
        #[arg(long, value_name = "M")]
        metrics_base_port: Option<u16>,
        /// Also start a spare node (id NODES+1, empty data dir) that joins the cluster
        /// and waits to be added, for trying `chatctl member add` (the command is
        /// printed).
        #[arg(long)]
        spare: bool,
    },
    /// Seeds a new single-member cluster from a backup (`chatctl snapshot save`):
    /// writes the backed-up state, with node ID as its only member, into an empty data
    /// dir. Then start the node as usual (`chatnode --id ID --data-dir DIR ...`, no
    /// --peers) and grow the cluster with `chatctl member add`.
    Restore {
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// A new, empty data dir.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The id of the restored node.
        #[arg(long)]
        id: u64,
        /// The cluster name stamped on the data dir.
        #[arg(long, default_value = crate::config::CLUSTER_ID_DEFAULT)]
        cluster_id: String,
    },
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in files and journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let in_file = match (cli.io_threads, &cli.node.config) {
        (None, Some(path)) => match crate::config::io_threads_in_file(path) {
            Ok(threads) => threads,
            Err(error) => {
                eprintln!("chatnode: {error:#}");
                return std::process::ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let io_threads = cli
        .io_threads
        .or(in_file)
        .map_or_else(crate::half_the_cores, usize::from);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chatnode: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chatnode: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Local {
            nodes,
            dir,
            base_port,
            metrics_base_port,
            spare,
        }) => crate::local::run(nodes, dir, base_port, metrics_base_port, spare).await,
        Some(Command::Restore {
            from,
            data_dir,
            id,
            cluster_id,
        }) => {
            let backup = crate::backup::Backup::read_from(&from)?;
            let hash = crate::backup::restore(&backup, &data_dir, id, &cluster_id)?;
            println!(
                "restored {} into {} as node {id}: state through index {} (source state hash \
                 {:016x}; with node {id} as the only member {hash:016x}); start it with \
                 chatnode --id {id} --data-dir {} --listen ADDR --secret-file SECRET",
                from.display(),
                data_dir.display(),
                backup.last_index,
                backup.state_hash,
                data_dir.display(),
            );
            Ok(())
        }
        None => {
            let config = NodeConfig::from_args(&cli.node)?;
            let (stop, shutdown) = watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("signal received; shutting down");
                // The node may have stopped on its own already.
                let _ = stop.send(true);
            });
            crate::server::run(config, shutdown).await
        }
    }
}

/// SIGTERM (systemd, kill) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            // Without a SIGTERM handler Ctrl-C still works.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
