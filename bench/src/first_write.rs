//! `chatbench first-write`: after every server was killed and restarted, how long until
//! the cluster acknowledges a write again. Retries until one is acknowledged or the
//! timeout passes, and prints the time from `--since-unix-ms` (when the script started
//! the servers again) or else from its own start.
//!
//! - Ours: log in as an existing account (`--user`, made by the fill), open a session
//!   and `Send` one message: the time is to the `Send`'s acknowledgement, so it counts
//!   the login (a password check) and the session (itself a replicated write), what a
//!   client coming back after the outage does before its first message.
//! - etcd: `KV.Put` of one key, each member in turn until one acknowledges.

use crate::chat::ChatBench;
use crate::etcd::EtcdBench;
use crate::fill::system_name;
use crate::fill_report::FirstWrite;
use crate::System;
use anyhow::{bail, Context};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Args, Debug)]
pub struct FirstWriteArgs {
    #[arg(long, value_enum)]
    system: System,
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Give up (and fail) after this long.
    #[arg(long, default_value_t = 30.0)]
    timeout_secs: f64,
    /// Ours: the account to log in as (it must exist, e.g. `PREFIX-0` of the fill).
    #[arg(long)]
    user: Option<String>,
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Count from this wall-clock time (ms since the Unix epoch, `date +%s%3N`)
    /// instead of from the command's start.
    #[arg(long)]
    since_unix_ms: Option<u64>,
    #[arg(long)]
    json: bool,
}

/// Between two failed attempts.
const ATTEMPT_PAUSE: Duration = Duration::from_millis(10);
/// One attempt's own retries (leader hints followed, the next node tried) stop after
/// this, so that the client's growing backoff does not blur the measure.
const ATTEMPT_BUDGET: Duration = Duration::from_millis(300);
/// How long one etcd call may take before the next member is tried.
const ETCD_CALL_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn first_write(args: FirstWriteArgs) -> anyhow::Result<()> {
    let timeout = Duration::try_from_secs_f64(args.timeout_secs)
        .context("--timeout-secs must be a non-negative number")?;
    let started_unix_ms = match args.since_unix_ms {
        Some(ms) => ms,
        None => unix_ms()?,
    };
    let deadline = Instant::now() + timeout;
    let mut steps = Steps {
        started_unix_ms,
        login_ms: None,
        session_ms: None,
    };
    let attempts = match args.system {
        System::Chat => chat_first_write(&args, deadline, &mut steps).await?,
        System::Etcd => etcd_first_write(&args, deadline).await?,
    };
    let result = FirstWrite {
        system: system_name(args.system).to_owned(),
        first_write_ms: steps.now_ms()?,
        attempts,
        login_ms: steps.login_ms,
        session_ms: steps.session_ms,
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{}: first write acknowledged after {} ms ({} failed attempts before; login {} ms, session {} ms)",
            result.system,
            result.first_write_ms,
            result.attempts,
            result.login_ms.map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
            result.session_ms.map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
        );
    }
    Ok(())
}

/// When each step of ours was acknowledged, in ms from the start.
struct Steps {
    started_unix_ms: u64,
    login_ms: Option<u64>,
    session_ms: Option<u64>,
}

impl Steps {
    fn now_ms(&self) -> anyhow::Result<u64> {
        Ok(unix_ms()?.saturating_sub(self.started_unix_ms))
    }
}

fn unix_ms() -> anyhow::Result<u64> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?;
    Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// After a failed attempt: pauses and returns Ok to try again, or fails once the
/// deadline has passed. Counts the attempt.
async fn again(
    what: &str,
    deadline: Instant,
    attempts: &mut u64,
    error: impl std::fmt::Display,
) -> anyhow::Result<()> {
    if Instant::now() >= deadline {
        bail!("no {what} acknowledged before the timeout: {error}");
    }
    *attempts += 1;
    if *attempts == 1 {
        eprintln!("chatbench: first-write: {what}: {error} (retrying)");
    }
    tokio::time::sleep(ATTEMPT_PAUSE).await;
    Ok(())
}

async fn chat_first_write(
    args: &FirstWriteArgs,
    deadline: Instant,
    steps: &mut Steps,
) -> anyhow::Result<u64> {
    let Some(user) = &args.user else {
        bail!("--user is required for --system chat (an account of the fill)");
    };
    let mut attempts = 0;
    let mut bench = loop {
        let login = ChatBench::login(
            &args.endpoints,
            user.clone(),
            args.payload_bytes,
            ATTEMPT_BUDGET,
        );
        match login.await {
            Ok(bench) => break bench,
            Err(error) => again("login", deadline, &mut attempts, format!("{error:#}")).await?,
        }
    };
    steps.login_ms = Some(steps.now_ms()?);
    // One stamp for every try of the one write, as a client must: exactly-once.
    let session = loop {
        match bench.session().await {
            Ok(session) => break session,
            Err(status) => again("open session", deadline, &mut attempts, status).await?,
        }
    };
    steps.session_ms = Some(steps.now_ms()?);
    let body = "x".repeat(args.payload_bytes);
    while let Err(status) = bench.send_to(session, user, &body).await {
        again("send", deadline, &mut attempts, status).await?;
    }
    Ok(attempts)
}

async fn etcd_first_write(args: &FirstWriteArgs, deadline: Instant) -> anyhow::Result<u64> {
    let mut members = args
        .endpoints
        .iter()
        .map(|endpoint| EtcdBench::new(endpoint, String::new(), 0, ETCD_CALL_TIMEOUT))
        .collect::<anyhow::Result<Vec<EtcdBench>>>()?;
    if members.is_empty() {
        bail!("no etcd endpoint given");
    }
    let value = vec![b'x'; args.payload_bytes];
    let mut attempts = 0u64;
    let member_count = members.len();
    for next in 0.. {
        // The remainder is below member_count, which is not zero (checked above).
        let member = &mut members[next % member_count];
        match member
            .put(b"chatbench/first-write".to_vec(), value.clone())
            .await
        {
            Ok(()) => break,
            Err(status) => again("put", deadline, &mut attempts, status).await?,
        }
    }
    Ok(attempts)
}
