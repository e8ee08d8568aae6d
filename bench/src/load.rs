//! The load loop: C clients, each one operation outstanding at a time (closed loop),
//! all starting together; each records the latency of every operation it starts inside
//! the measurement window.

use crate::chat::ChatBench;
use crate::etcd::EtcdBench;
use crate::procstat;
use crate::stats::{micros, LatencySummary, PhaseResult, ServerCost};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    /// A replicated, durable write.
    Write,
    /// A linearizable read.
    Read,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Write => "write",
            Op::Read => "read",
        }
    }
}

/// When a phase ends.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    /// Run `warmup` unrecorded, then record for `measure`.
    Time { warmup: Duration, measure: Duration },
    /// Every client runs its share of `total` operations, all recorded.
    Count { total: u64 },
}

pub enum Client {
    Chat(ChatBench),
    Etcd(EtcdBench),
}

impl Client {
    async fn run(&mut self, op: Op) -> Result<(), tonic::Status> {
        match (self, op) {
            (Client::Chat(c), Op::Write) => c.write().await,
            (Client::Chat(c), Op::Read) => c.read().await,
            (Client::Etcd(c), Op::Write) => c.write().await,
            (Client::Etcd(c), Op::Read) => c.read().await,
        }
    }
}

/// After a failed operation a client pauses this long, so a down system is not spun on.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

struct ClientOutcome {
    samples_us: Vec<u64>,
    errors: u64,
    first_error: Option<tonic::Status>,
    last_finish: Option<Instant>,
}

/// What one client does in a phase: `quota` operations or until `stop`.
async fn drive(
    client: &mut Client,
    op: Op,
    record_from: Instant,
    stop: Option<Instant>,
    quota: Option<u64>,
) -> ClientOutcome {
    let mut outcome = ClientOutcome {
        samples_us: Vec::new(),
        errors: 0,
        first_error: None,
        last_finish: None,
    };
    let mut done = 0u64;
    loop {
        let began = Instant::now();
        if stop.is_some_and(|stop| began >= stop) || quota.is_some_and(|quota| done >= quota) {
            return outcome;
        }
        let result = client.run(op).await;
        let finished = Instant::now();
        done += 1;
        let recorded = began >= record_from;
        match result {
            Ok(()) if recorded => {
                outcome.samples_us.push(micros(finished - began));
                outcome.last_finish = Some(finished);
            }
            Ok(()) => {}
            Err(status) => {
                if recorded {
                    outcome.errors += 1;
                    outcome.last_finish = Some(finished);
                }
                outcome.first_error.get_or_insert(status);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
}

/// Runs one phase on every client at once and hands the clients back for the next one.
/// With `server_pids`, also measures what the servers spent in the window.
pub async fn run_phase(
    clients: Vec<Client>,
    op: Op,
    limit: Limit,
    system: &str,
    payload_bytes: usize,
    server_pids: &[u32],
) -> anyhow::Result<(Vec<Client>, PhaseResult)> {
    let client_count = clients.len();
    let start = Instant::now();
    let (record_from, stop) = match limit {
        Limit::Time { warmup, measure } => (start + warmup, Some(start + warmup + measure)),
        Limit::Count { .. } => (start, None),
    };
    let pids = server_pids.to_vec();
    let usage_before = tokio::spawn(async move {
        tokio::time::sleep_until(record_from.into()).await;
        (!pids.is_empty())
            .then(|| procstat::sample(&pids))
            .transpose()
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (index, mut client) in clients.into_iter().enumerate() {
        let quota = match limit {
            Limit::Count { total } => {
                let count = client_count as u64;
                let i = index as u64;
                Some(total / count + u64::from(i < total % count))
            }
            Limit::Time { .. } => None,
        };
        tasks.spawn(async move {
            let outcome = drive(&mut client, op, record_from, stop, quota).await;
            (index, client, outcome)
        });
    }
    let mut returned: Vec<(usize, Client)> = Vec::with_capacity(client_count);
    let mut samples_us = Vec::new();
    let mut errors = 0;
    let mut last_finish = record_from;
    while let Some(joined) = tasks.join_next().await {
        let (index, client, mut outcome) = joined?;
        returned.push((index, client));
        samples_us.append(&mut outcome.samples_us);
        errors += outcome.errors;
        if let Some(finish) = outcome.last_finish {
            last_finish = last_finish.max(finish);
        }
        if let Some(status) = outcome.first_error {
            eprintln!(
                "chatbench: {system} {} client {index}: first error: {}: {}",
                op.name(),
                status.code(),
                status.message()
            );
        }
    }
    let usage = match usage_before.await?? {
        Some(before) => Some(procstat::sample(server_pids)?.since(before)),
        None => None,
    };
    returned.sort_by_key(|(index, _)| *index);
    let window_end = match stop {
        Some(stop) => stop.max(last_finish),
        None => last_finish,
    };
    let elapsed_secs = (window_end - record_from).as_secs_f64().max(1e-9);
    let ops = samples_us.len() as u64;
    let result = PhaseResult {
        system: system.to_owned(),
        op: op.name().to_owned(),
        clients: client_count,
        payload_bytes,
        ops,
        errors,
        elapsed_secs,
        ops_per_sec: ops as f64 / elapsed_secs,
        latency_us: LatencySummary::of(&mut samples_us),
        server: usage.map(|u| ServerCost::of(u, ops + errors, elapsed_secs)),
    };
    Ok((returned.into_iter().map(|(_, c)| c).collect(), result))
}
