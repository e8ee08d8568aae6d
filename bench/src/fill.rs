//! `chatbench fill`: grows a system's state to N messages (ours) or N keys (etcd) with C
//! closed-loop clients, and reports every window (throughput, latency, leader changes,
//! each server's RSS) and the totals, the first half of the scale benchmark
//! (`bench/scale.sh`).
//!
//! - Ours: M accounts are registered first (not timed: each costs the leader a password
//!   hash); client i logs in as account i and sends message k of the fill (ordinal
//!   `k * C + i`) to account `ordinal mod M`, so every inbox gets N/M messages. A write
//!   is `Send` with the client's exactly-once session, as in `chatbench run`.
//! - etcd: `KV.Put` of the same number of unique keys (`PREFIX/ORDINAL`), values of the
//!   same size.
//!
//! Every body is unique (its ordinal, padded to the payload size), so that neither
//! system can store less than N distinct values.

use crate::chat::{self, ChatBench, Registrar};
use crate::etcd::{self, EtcdBench};
use crate::fill_report::{FillRecord, FillTotal, FillWindow};
use crate::scrape::{self, MemberView};
use crate::stats::{micros, LatencySummary};
use crate::{procstat, System};
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct FillArgs {
    #[arg(long, value_enum)]
    system: System,
    /// Client addresses HOST:PORT,... For chat: any members (the leader is found and
    /// followed). For etcd: client i uses endpoint i mod N.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Messages (chat) or keys (etcd) written in all.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Accounts the messages go to, round-robin (chat only). Registered before the
    /// fill, untimed; client i sends as account i, so at least --clients.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Concurrent clients, each with one write outstanding.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Size of each message body / value.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Length of each reported window.
    #[arg(long, default_value_t = 5.0)]
    window_secs: f64,
    /// Registrations in flight at once (chat setup). The leader hashes each password
    /// and refuses beyond 16 queued per hashing thread.
    #[arg(long, default_value_t = 8)]
    register_concurrency: usize,
    /// Names: accounts PREFIX-0 .. PREFIX-(M-1), keys PREFIX/ORDINAL. Default: "f" and
    /// a random tag, so fills of one cluster never collide.
    #[arg(long)]
    prefix: Option<String>,
    /// Process ids of the servers: RSS of each and CPU of all, per window.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// HOST:PORT of each member's `/metrics` (chatnode's --metrics-addr, an etcd
    /// member's client address): leader changes and term per window.
    #[arg(long, value_delimiter = ',')]
    metrics_endpoints: Vec<String>,
    /// Each member's data directory: its size on disk after the fill.
    #[arg(long, value_delimiter = ',')]
    data_dirs: Vec<PathBuf>,
    /// One JSON document per window and one for the totals, one per line (the lines
    /// for people then go to stderr).
    #[arg(long)]
    json: bool,
}

/// After a failed write a client pauses this long, so a down system is not spun on.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How often the registration progress is printed (stderr).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
const CLIENTS_MAX: usize = 4_096;
const REGISTER_CONCURRENCY_MAX: usize = 64;
const WINDOW_SECS_MIN: f64 = 0.1;
/// How often each server's RSS is read for its maximum.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// One fill client: what it writes with and where its writes go.
enum Writer {
    Chat {
        bench: ChatBench,
        users: Arc<Vec<String>>,
    },
    Etcd {
        bench: EtcdBench,
        prefix: Arc<str>,
    },
}

impl Writer {
    async fn write(&mut self, ordinal: u64, body: String) -> Result<(), tonic::Status> {
        match self {
            Writer::Chat { bench, users } => {
                // users is never empty (checked before the fill); the remainder is
                // below its length.
                let to = &users[(ordinal % users.len() as u64) as usize];
                let session = bench.session().await?;
                bench.send_to(session, to, &body).await
            }
            Writer::Etcd { bench, prefix } => {
                let key = format!("{prefix}/{ordinal:09}");
                bench.put(key.into_bytes(), body.into_bytes()).await
            }
        }
    }
}

/// The body of message `ordinal`: its number, padded with `x` to `payload_bytes`.
fn body_of(ordinal: u64, payload_bytes: usize) -> String {
    let mut body = format!("m{ordinal:011}-");
    body.truncate(payload_bytes);
    let padding = payload_bytes - body.len();
    body.extend(std::iter::repeat_n('x', padding));
    body
}

/// What the clients did since the last window ended.
#[derive(Default)]
struct Tally {
    latency_us: Vec<u64>,
    errors: u64,
}

type SharedTally = Arc<Mutex<Tally>>;

fn lock(tally: &SharedTally) -> std::sync::MutexGuard<'_, Tally> {
    // A client that panicked mid-push leaves whole samples only: keep counting.
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}

pub async fn fill(args: FillArgs) -> anyhow::Result<()> {
    check(&args)?;
    let window = Duration::from_secs_f64(args.window_secs);
    let prefix = match &args.prefix {
        Some(prefix) => prefix.clone(),
        None => format!("f{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    };
    let setup_started = Instant::now();
    let writers = match args.system {
        System::Chat => chat_writers(&args, &prefix).await?,
        System::Etcd => etcd_writers(&args, &prefix)?,
    };
    let setup_secs = setup_started.elapsed().as_secs_f64();
    eprintln!("chatbench: fill setup took {setup_secs:.1} s; filling");
    let mut observer = Observer::start(&args).await;
    let tally = SharedTally::default();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let client_count = writers.len() as u64;
    for (index, writer) in writers.into_iter().enumerate() {
        let index = index as u64;
        let quota = args.messages / client_count + u64::from(index < args.messages % client_count);
        let tally = Arc::clone(&tally);
        let payload_bytes = args.payload_bytes;
        tasks.spawn(async move {
            drive(writer, index, client_count, quota, payload_bytes, tally).await
        });
    }
    let mut all_latency_us: Vec<u64> = Vec::new();
    let mut errors = 0;
    let mut window_start = started;
    loop {
        let next_tick = window_start + window;
        let all_done = tokio::select! {
            () = tokio::time::sleep_until(next_tick.into()) => false,
            joined = tasks.join_next() => match joined {
                Some(joined) => {
                    joined.context("a fill client failed")?;
                    continue;
                }
                None => true,
            },
        };
        let window_end = Instant::now();
        let taken = std::mem::take(&mut *lock(&tally));
        let record = observer
            .window(
                &args,
                started,
                window_start,
                window_end,
                taken.errors,
                &taken.latency_us,
            )
            .await;
        errors += taken.errors;
        all_latency_us.extend_from_slice(&taken.latency_us);
        print(&FillRecord::Window(record), args.json)?;
        window_start = window_end;
        if all_done {
            break;
        }
    }
    let elapsed_secs = (window_start - started).as_secs_f64().max(1e-9);
    let total = observer.total(&args, setup_secs, elapsed_secs, errors, &mut all_latency_us)?;
    print(&FillRecord::Total(total), args.json)
}

fn check(args: &FillArgs) -> anyhow::Result<()> {
    if !(1..=CLIENTS_MAX).contains(&args.clients) {
        bail!("--clients must be between 1 and {CLIENTS_MAX}");
    }
    if args.messages == 0 {
        bail!("--messages must be positive");
    }
    if args.system == System::Chat && args.users < args.clients {
        bail!("--users must be at least --clients (client i sends as account i)");
    }
    if !(1..=REGISTER_CONCURRENCY_MAX).contains(&args.register_concurrency) {
        bail!("--register-concurrency must be between 1 and {REGISTER_CONCURRENCY_MAX}");
    }
    if !(args.window_secs >= WINDOW_SECS_MIN && args.window_secs.is_finite()) {
        bail!("--window-secs must be at least {WINDOW_SECS_MIN}");
    }
    if args.endpoints.is_empty() {
        bail!("no endpoint given");
    }
    Ok(())
}

/// With `json`, the line for people goes to stderr, to watch a fill whose JSON goes
/// to a file.
fn print(record: &FillRecord, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(record)?);
        eprintln!("{}", record.line());
    } else {
        println!("{}", record.line());
    }
    Ok(())
}

/// One client's share of the fill: `quota` writes, ordinals `index`, `index + count`, ...
async fn drive(
    mut writer: Writer,
    index: u64,
    client_count: u64,
    quota: u64,
    payload_bytes: usize,
    tally: SharedTally,
) {
    let mut first_error = true;
    for k in 0..quota {
        let ordinal = k * client_count + index;
        let body = body_of(ordinal, payload_bytes);
        let began = Instant::now();
        let result = writer.write(ordinal, body).await;
        let latency_us = micros(began.elapsed());
        match result {
            Ok(()) => lock(&tally).latency_us.push(latency_us),
            Err(status) => {
                lock(&tally).errors += 1;
                if std::mem::take(&mut first_error) {
                    eprintln!(
                        "chatbench: fill client {index}: first error: {}: {}",
                        status.code(),
                        status.message()
                    );
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
}

/// Registers the M accounts (untimed setup), then logs client i in as account i.
async fn chat_writers(args: &FillArgs, prefix: &str) -> anyhow::Result<Vec<Writer>> {
    let users: Arc<Vec<String>> =
        Arc::new((0..args.users).map(|i| format!("{prefix}-{i}")).collect());
    register_all(&args.endpoints, &users, args.register_concurrency).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.clients {
        let endpoints = args.endpoints.clone();
        let user = users[index].clone();
        let payload_bytes = args.payload_bytes;
        tasks.spawn(async move {
            let bench = ChatBench::login(&endpoints, user, payload_bytes, chat::RETRY_BUDGET);
            anyhow::Ok((index, bench.await?))
        });
    }
    let mut benches = Vec::with_capacity(args.clients);
    while let Some(joined) = tasks.join_next().await {
        benches.push(joined??);
    }
    benches.sort_by_key(|(index, _)| *index);
    Ok(benches
        .into_iter()
        .map(|(_, bench)| Writer::Chat {
            bench,
            users: Arc::clone(&users),
        })
        .collect())
}

async fn register_all(
    endpoints: &[String],
    users: &Arc<Vec<String>>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let registered = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for first in 0..concurrency {
        let mut registrar = Registrar::new(endpoints)?;
        let users = Arc::clone(users);
        let registered = Arc::clone(&registered);
        tasks.spawn(async move {
            for user in users.iter().skip(first).step_by(concurrency) {
                registrar.register(user).await?;
                registered.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let started = Instant::now();
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    loop {
        tokio::select! {
            _ = progress.tick() => eprintln!(
                "chatbench: registered {}/{} accounts in {:.0} s",
                registered.load(Ordering::Relaxed),
                users.len(),
                started.elapsed().as_secs_f64()
            ),
            joined = tasks.join_next() => match joined {
                Some(joined) => joined??,
                None => break,
            },
        }
    }
    eprintln!(
        "chatbench: registered {} accounts in {:.1} s",
        users.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn etcd_writers(args: &FillArgs, prefix: &str) -> anyhow::Result<Vec<Writer>> {
    let prefix: Arc<str> = Arc::from(prefix);
    (0..args.clients)
        .map(|index| {
            let endpoint = &args.endpoints[index % args.endpoints.len()];
            let bench = EtcdBench::new(endpoint, String::new(), 0, etcd::CALL_TIMEOUT)?;
            Ok(Writer::Etcd {
                bench,
                prefix: Arc::clone(&prefix),
            })
        })
        .collect()
}

/// What is read from outside the load, per window: the servers' memory and CPU, and
/// the members' metrics.
struct Observer {
    /// Each member's view at the start of the fill.
    views_first: Vec<Option<MemberView>>,
    /// Each member's last view that answered.
    views_last: Vec<Option<MemberView>>,
    /// Each server's highest RSS, sampled every [`RSS_SAMPLE_INTERVAL`] by `rss_sampler`
    /// (a snapshot's copies may come and go between two window ends).
    rss_bytes_max: Arc<Mutex<Vec<u64>>>,
    rss_sampler: tokio::task::JoinHandle<()>,
    usage_last: Option<procstat::Usage>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.rss_sampler.abort();
    }
}

/// Reads every server's RSS now (None: its process is gone) and raises the maxima.
fn sample_rss(pids: &[u32], maxima: &Mutex<Vec<u64>>) -> Vec<Option<u64>> {
    let rss: Vec<Option<u64>> = pids
        .iter()
        .map(|&pid| procstat::rss_bytes(pid).ok())
        .collect();
    let mut maxima = maxima.lock().unwrap_or_else(PoisonError::into_inner);
    for (max, now) in maxima.iter_mut().zip(&rss) {
        *max = (*max).max(now.unwrap_or(0));
    }
    rss
}

impl Observer {
    async fn start(args: &FillArgs) -> Observer {
        let views = scrape::scrape_all(args.system, &args.metrics_endpoints).await;
        let rss_bytes_max = Arc::new(Mutex::new(vec![0; args.server_pids.len()]));
        let rss_sampler = {
            let maxima = Arc::clone(&rss_bytes_max);
            let pids = args.server_pids.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(RSS_SAMPLE_INTERVAL);
                loop {
                    interval.tick().await;
                    sample_rss(&pids, &maxima);
                }
            })
        };
        Observer {
            views_first: views.clone(),
            views_last: views,
            rss_bytes_max,
            rss_sampler,
            usage_last: procstat::sample(&args.server_pids).ok(),
        }
    }

    async fn window(
        &mut self,
        args: &FillArgs,
        started: Instant,
        from: Instant,
        to: Instant,
        errors: u64,
        latency_us: &[u64],
    ) -> FillWindow {
        let views = scrape::scrape_all(args.system, &args.metrics_endpoints).await;
        let leader_changes = leader_changes(&self.views_last, &views);
        let term = views.iter().flatten().filter_map(|view| view.term).max();
        for (last, view) in self.views_last.iter_mut().zip(&views) {
            if view.is_some() {
                *last = *view;
            }
        }
        let rss_bytes = sample_rss(&args.server_pids, &self.rss_bytes_max);
        let elapsed_secs = (to - from).as_secs_f64().max(1e-9);
        let usage = procstat::sample(&args.server_pids).ok();
        let server_cpus = match (usage, self.usage_last) {
            (Some(now), Some(before)) => Some(now.since(before).cpu.as_secs_f64() / elapsed_secs),
            _ => None,
        };
        self.usage_last = usage;
        let mut sorted_us = latency_us.to_vec();
        FillWindow {
            system: system_name(args.system).to_owned(),
            from_secs: (from - started).as_secs_f64(),
            to_secs: (to - started).as_secs_f64(),
            ops: latency_us.len() as u64,
            errors,
            ops_per_sec: latency_us.len() as f64 / elapsed_secs,
            latency_us: LatencySummary::of(&mut sorted_us),
            leader_changes,
            term,
            rss_bytes,
            server_cpus,
        }
    }

    fn total(
        &self,
        args: &FillArgs,
        setup_secs: f64,
        elapsed_secs: f64,
        errors: u64,
        latency_us: &mut [u64],
    ) -> anyhow::Result<FillTotal> {
        let data_dir_bytes = args
            .data_dirs
            .iter()
            .map(|dir| disk_bytes(dir).with_context(|| format!("size of {}", dir.display())))
            .collect::<anyhow::Result<Vec<u64>>>()?;
        let ops = latency_us.len() as u64;
        let terms = |views: &[Option<MemberView>]| {
            views.iter().flatten().filter_map(|view| view.term).max()
        };
        Ok(FillTotal {
            system: system_name(args.system).to_owned(),
            messages: args.messages,
            users: (args.system == System::Chat).then_some(args.users),
            clients: args.clients,
            payload_bytes: args.payload_bytes,
            setup_secs,
            ops,
            errors,
            elapsed_secs,
            ops_per_sec: ops as f64 / elapsed_secs,
            latency_us: LatencySummary::of(latency_us),
            leader_changes: leader_changes(&self.views_first, &self.views_last),
            term_first: terms(&self.views_first),
            term_last: terms(&self.views_last),
            rss_bytes_max: self
                .rss_bytes_max
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            stored_payload_bytes: ops * args.payload_bytes as u64,
            data_dir_bytes,
        })
    }
}

/// Leader changes between two scrapes of the members: the most any one member saw
/// (each member counts each change it learns of; one cut off saw fewer). None when no
/// member answered both times.
fn leader_changes(before: &[Option<MemberView>], after: &[Option<MemberView>]) -> Option<u64> {
    before
        .iter()
        .zip(after)
        .filter_map(|(before, after)| {
            let (before, after) = (before.as_ref()?, after.as_ref()?);
            // A member restarted in between starts counting again.
            Some(after.leader_changes.saturating_sub(before.leader_changes))
        })
        .max()
}

pub fn system_name(system: System) -> &'static str {
    match system {
        System::Chat => "chat",
        System::Etcd => "etcd",
    }
}

/// The disk space under `dir` (allocated blocks, what `du` reports), symlinks not
/// followed.
fn disk_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    /// `st_blocks` counts 512-byte units whatever the file system's block size.
    const STAT_BLOCK_BYTES: u64 = 512;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?;
        total += metadata.blocks() * STAT_BLOCK_BYTES;
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path)
                .with_context(|| format!("cannot list {}", path.display()))?
            {
                pending.push(entry?.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_unique_and_of_the_payload_size() {
        assert_eq!(body_of(7, 256).len(), 256);
        assert!(body_of(7, 256).starts_with("m00000000007-x"));
        assert_ne!(body_of(7, 256), body_of(8, 256));
        assert_eq!(body_of(7, 4), "m000");
    }

    #[test]
    fn leader_changes_are_the_most_one_member_saw() {
        let view = |leader_changes| {
            Some(MemberView {
                leader_changes,
                term: None,
            })
        };
        let before = [view(1), view(1), None];
        let after = [view(3), view(2), view(9)];
        assert_eq!(leader_changes(&before, &after), Some(2));
        assert_eq!(leader_changes(&[None], &after[..1]), None);
        assert_eq!(leader_changes(&[view(5)], &[view(0)]), Some(0));
    }

    #[test]
    fn disk_bytes_counts_what_is_under_a_directory() {
        let dir = std::env::temp_dir().join(format!("chatbench-du-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a")).expect("temp dir");
        std::fs::write(dir.join("a/b"), vec![1u8; 10_000]).expect("temp file");
        let bytes = disk_bytes(&dir).expect("readable");
        std::fs::remove_dir_all(&dir).expect("temp dir");
        assert!(bytes >= 10_000, "{bytes}");
    }
}
