//! What the replicated state costs in memory and what a snapshot of it costs in time, at
//! a given size: `cargo run --release -p chat-core --example state_memory -- [messages]
//! [users]` (default 1,000,000 messages of 256 B over 10,000 users).
//!
//! A measurement, not a test: it asserts nothing about speed. It prints
//! - resident memory per stored message (the RSS growth of filling the state, read from
//!   `/proc/self/statm`, so allocator overhead counts, as it does on a node);
//! - the pause a snapshot costs the core thread: before (encoding the whole state and
//!   cloning the bytes, as `maybe_snapshot` did) and now (a copy-on-write clone);
//! - saving a snapshot as the node's writer thread does (CPU time of the encoding);
//! - what the copy-on-write costs afterwards: writes to accounts the image still shares
//!   copy those accounts' inbox trees, and the memory that takes;
//! - recovery: decoding the snapshot (which recomputes the state digest), in CPU time.
//!
//! Linux only (`/proc`). Time is wall time on an otherwise idle process, and CPU time of
//! this thread from `/proc/thread-self/schedstat`.

use chat_core::app::{ApplyContext, Auth, ChatState, Command};
use chat_core::machine::{MachineState, SnapshotImage};
use chat_core::{Config, LogIndex, NodeId, Term, Time};
use std::time::{Duration, Instant};

const BODY_BYTES: usize = 256;
/// An argon2id PHC string is about this long; the node stores one per account.
const PASSWORD_HASH_BYTES: usize = 97;
/// Snapshot clones timed to report a median and a maximum.
const CLONE_REPEATS: usize = 21;
/// Rounds of writes to every account, with and without an image alive.
const WRITE_ROUNDS: usize = 5;
/// Snapshot saves timed, the fastest reported.
const STAGE_REPEATS: usize = 3;

fn main() {
    let mut args = std::env::args().skip(1);
    let message_count: u64 = parse_arg(args.next(), 1_000_000);
    let user_count: u64 = parse_arg(args.next(), 10_000);

    let mut state = MachineState::new(&Config::new(NodeId(1), vec![NodeId(1)]));
    let rss_empty_bytes = rss_bytes();
    let filled = Instant::now();
    let mut index = 0;
    let users: Vec<Auth> = (0..user_count).map(user_auth).collect();
    for auth in &users {
        index += 1;
        let command = Command::CreateAccount {
            user: auth.user.clone(),
            password_hash: "h".repeat(PASSWORD_HASH_BYTES),
            registration: u128::from(index),
        };
        apply(&mut state, index, &command);
    }
    let rss_accounts_bytes = rss_bytes();
    for n in 0..message_count {
        index += 1;
        let command = send(&users, n, index);
        apply(&mut state, index, &command);
    }
    let fill_time = filled.elapsed();
    let rss_full_bytes = rss_bytes();
    assert_eq!(state.chat.message_count() as u64, message_count);

    let per_message = |bytes: u64| bytes as f64 / message_count.max(1) as f64;
    println!(
        "state: {message_count} messages of {BODY_BYTES} B over {user_count} users \
         (filled in {:.1} s)",
        fill_time.as_secs_f64()
    );
    println!(
        "resident: {:.1} MB for accounts, {:.1} MB for messages = {:.0} B per message \
         ({:.2}x its body)",
        mb(rss_accounts_bytes.saturating_sub(rss_empty_bytes)),
        mb(rss_full_bytes.saturating_sub(rss_accounts_bytes)),
        per_message(rss_full_bytes.saturating_sub(rss_accounts_bytes)),
        per_message(rss_full_bytes.saturating_sub(rss_accounts_bytes)) / BODY_BYTES as f64,
    );

    // Before: the core thread encoded the whole state and cloned the bytes.
    let cpu_before_ns = thread_cpu_ns();
    let started = Instant::now();
    let data = state.encode();
    let encode_time = started.elapsed();
    let encode_cpu_ns = thread_cpu_ns().saturating_sub(cpu_before_ns);
    let cpu_before_ns = thread_cpu_ns();
    let started = Instant::now();
    let data_copy = data.clone();
    let copy_time = started.elapsed();
    let copy_cpu_ns = thread_cpu_ns().saturating_sub(cpu_before_ns);
    drop(data_copy);
    println!(
        "snapshot bytes: {:.1} MB = {:.0} B per message",
        mb(data.len() as u64),
        per_message(data.len() as u64)
    );
    println!(
        "core-thread pause per snapshot, before: encode {} + copy the bytes {} = {} wall; \
         {:.1} ms CPU",
        ms(encode_time),
        ms(copy_time),
        ms(encode_time + copy_time),
        (encode_cpu_ns + copy_cpu_ns) as f64 / 1e6,
    );

    // Now: the core thread clones the state (a pointer per account and session).
    let mut clone_times: Vec<Duration> = (0..CLONE_REPEATS)
        .map(|_| {
            let started = Instant::now();
            let image = SnapshotImage {
                meta: chat_core::entry::SnapshotMeta {
                    last_index: LogIndex(index),
                    last_term: Term(1),
                },
                state: state.clone(),
            };
            let took = started.elapsed();
            drop(image);
            took
        })
        .collect();
    clone_times.sort();
    println!(
        "core-thread pause per snapshot, now: image (copy-on-write clone) min {}, median {}, \
         max {} wall (the encoding, {:.1} ms CPU, runs on the snapshot writer's thread)",
        ms(clone_times[0]),
        ms(clone_times[CLONE_REPEATS / 2]),
        ms(clone_times[CLONE_REPEATS - 1]),
        encode_cpu_ns as f64 / 1e6,
    );

    // Saving: what the node's snapshot writer does with an image, encoding it straight
    // into the staged file (here the simulator's in-memory disk, so no I/O is timed).
    // The fastest of a few rounds, in this thread's CPU time.
    let mut stage_cpu_ns = u64::MAX;
    for _ in 0..STAGE_REPEATS {
        let mut disk = chat_core::storage::MemDisk::new();
        let image = SnapshotImage {
            meta: chat_core::entry::SnapshotMeta {
                last_index: LogIndex(index),
                last_term: Term(1),
            },
            state: state.clone(),
        };
        let cpu_before_ns = thread_cpu_ns();
        let staged_bytes = match chat_core::storage::stage_snapshot_image(&mut disk, &image) {
            Ok(staged_bytes) => staged_bytes,
            Err(error) => panic!("staging into memory failed: {error}"),
        };
        stage_cpu_ns = stage_cpu_ns.min(thread_cpu_ns().saturating_sub(cpu_before_ns));
        assert_eq!(staged_bytes, data.len() as u64);
    }
    println!(
        "saving a snapshot on the writer's thread (encoded into the staged file, an \
         in-memory disk here): {:.1} ms CPU, fastest of {STAGE_REPEATS}",
        stage_cpu_ns as f64 / 1e6
    );

    // What sharing costs: while the writer holds the image, the first write to each
    // account copies its inbox tree (pointers to messages, not the messages). Each
    // account reads (and marks read) one message, so full inboxes stay full.
    // The fastest of a few rounds: on a shared machine, the slower ones measure the
    // neighbours.
    let mut shared_writes_time = Duration::MAX;
    let mut unshared_writes_time = Duration::MAX;
    let mut rss_shared_bytes = 0;
    for _ in 0..WRITE_ROUNDS {
        let image = state.clone();
        let rss_before_writes_bytes = rss_bytes();
        let started = Instant::now();
        for auth in &users {
            index += 1;
            apply(&mut state, index, &read_one(auth));
        }
        shared_writes_time = shared_writes_time.min(started.elapsed());
        // Later rounds reuse what the first one freed: the first one counts.
        rss_shared_bytes =
            rss_shared_bytes.max(rss_bytes().saturating_sub(rss_before_writes_bytes));
        drop(image);
        let started = Instant::now();
        for auth in &users {
            index += 1;
            apply(&mut state, index, &read_one(auth));
        }
        unshared_writes_time = unshared_writes_time.min(started.elapsed());
    }
    let per_write_us = |time: Duration| time.as_secs_f64() * 1e6 / user_count.max(1) as f64;
    println!(
        "a write to every account once (read one message): while an image is alive \
         {:.1} us each ({:.1} MB copied in all); with no image {:.1} us each",
        per_write_us(shared_writes_time),
        mb(rss_shared_bytes),
        per_write_us(unshared_writes_time),
    );

    // Recovery: decoding the snapshot, which rebuilds every digest from the items.
    let cpu_before_ns = thread_cpu_ns();
    let started = Instant::now();
    let decoded = match MachineState::decode(&data) {
        Ok(decoded) => decoded,
        Err(error) => panic!("the snapshot just encoded does not decode: {error}"),
    };
    let decode_time = started.elapsed();
    let decode_cpu_ns = thread_cpu_ns().saturating_sub(cpu_before_ns);
    assert_eq!(decoded.chat.message_count() as u64, message_count);
    // Decoding recomputes every item hash, each inbox's while its messages are in the
    // cache; a check does that work again as a separate pass over the decoded state.
    let cpu_before_ns = thread_cpu_ns();
    if let Err(problem) = decoded.check_hash() {
        panic!("the decoded state's digest: {problem}");
    }
    let digest_cpu_ns = thread_cpu_ns().saturating_sub(cpu_before_ns);
    println!(
        "recovery: decode {:.1} MB in {} wall, {:.3} s CPU = {:.2} us CPU per message \
         (a separate pass recomputing every digest: {:.3} s)",
        mb(data.len() as u64),
        ms(decode_time),
        decode_cpu_ns as f64 / 1e9,
        decode_cpu_ns as f64 / 1e3 / message_count.max(1) as f64,
        digest_cpu_ns as f64 / 1e9,
    );
}

fn parse_arg(arg: Option<String>, default: u64) -> u64 {
    match arg {
        None => default,
        Some(text) => match text.replace('_', "").parse() {
            Ok(value) => value,
            Err(error) => panic!("{text:?} is not a count: {error}"),
        },
    }
}

fn user_auth(n: u64) -> Auth {
    Auth {
        user: format!("user{n:05}"),
        // Generations are the log indexes of the accounts' creation, 1 up.
        generation: n + 1,
        token_epoch: 0,
    }
}

/// Message `n`: from user n to user n * 7 + 1 (so every inbox fills evenly), with a body
/// of `BODY_BYTES` that differs from message to message.
fn send(users: &[Auth], n: u64, index: u64) -> Command {
    let count = users.len() as u64;
    let from = &users[(n % count) as usize];
    let to = &users[((n * 7 + 1) % count) as usize];
    let mut body = format!("message {index} ");
    body.extend(std::iter::repeat_n(
        'x',
        BODY_BYTES.saturating_sub(body.len()),
    ));
    Command::Send {
        auth: from.clone(),
        to: to.user.clone(),
        body,
    }
}

fn read_one(auth: &Auth) -> Command {
    Command::ReadMessages {
        auth: auth.clone(),
        limit: 1,
    }
}

fn apply(state: &mut MachineState, index: u64, command: &Command) {
    let ctx = ApplyContext {
        index: LogIndex(index),
        timestamp: Time(index),
    };
    let mut deliveries = Vec::new();
    if let Err(error) = ChatState::apply(&mut state.chat, ctx, command, &mut deliveries) {
        panic!("entry {index} refused: {error}");
    }
    state.log_time = ctx.timestamp;
}

/// Resident set size from `/proc/self/statm` (pages of 4 KiB, as on x86-64 Linux).
fn rss_bytes() -> u64 {
    const PAGE_BYTES: u64 = 4_096;
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * PAGE_BYTES
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .unwrap_or(0)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn ms(time: Duration) -> String {
    format!("{:.1} ms", time.as_secs_f64() * 1e3)
}
