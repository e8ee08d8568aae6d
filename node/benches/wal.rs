//! Write-ahead log throughput on real files, beside a raw baseline that writes the same
//! bytes to a plain file with the same number of fsyncs.
//!
//! Run with `cargo bench -p chat-node --bench wal`. Files go under the target directory
//! (a real disk; /tmp may be tmpfs, where fsync costs nothing).

use chat_core::entry::{Entry, Persist};
use chat_core::storage::testing::send_entry;
use chat_core::storage::{encode_entry_record, LogStore};
use chat_node::disk::FsDisk;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes of each message body: a typical chat line.
const BODY_BYTES: usize = 100;
/// Batch sizes and how many batches (syncs) each runs.
const RUNS: [(usize, usize); 3] = [(1, 400), (16, 300), (256, 100)];
/// Each measurement is repeated and the best kept: fsync latency on shared machines is
/// noisy, and the best run is the one least disturbed by neighbours.
const REPEATS: usize = 3;

struct Measurement {
    elapsed: Duration,
    entry_count: usize,
    bytes: usize,
}

impl Measurement {
    fn entries_per_s(&self) -> f64 {
        self.entry_count as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// The persist that creates the first segment, outside the timed loop.
fn warm_up() -> Persist {
    Persist {
        entries: vec![send_entry(1, 1, BODY_BYTES)],
        ..Persist::default()
    }
}

/// Timed batches, from index 2 on (after the warm-up entry).
fn batches(batch_size: usize, batch_count: usize) -> Vec<Persist> {
    (0..batch_count)
        .map(|b| Persist {
            entries: (0..batch_size)
                .map(|k| send_entry((b * batch_size + k + 2) as u64, 1, BODY_BYTES))
                .collect(),
            ..Persist::default()
        })
        .collect()
}

/// The exact bytes the log writes for each batch, for the raw baseline.
fn record_bytes(batches: &[Persist]) -> Vec<Vec<u8>> {
    batches
        .iter()
        .map(|p| {
            let mut buf = Vec::new();
            for entry in &p.entries {
                encode_entry_record(&mut buf, entry).expect("bench entries are small");
            }
            buf
        })
        .collect()
}

/// Steady-state appends: the store is open and its first segment exists before the
/// clock starts, as on a running node, where creating a segment (two extra syncs, one
/// of the directory) happens once per `SEGMENT_BYTES_MAX` of log.
fn measure_log(dir: &Path, batches: &[Persist], bytes: usize) -> Measurement {
    let disk = FsDisk::open(dir).expect("open bench dir");
    let (mut store, _) = LogStore::open(disk).expect("open store");
    store.persist(&warm_up()).expect("warm-up persist");
    let start = Instant::now();
    for p in batches {
        store.persist(p).expect("persist");
    }
    Measurement {
        elapsed: start.elapsed(),
        entry_count: batches.iter().map(|p| p.entries.len()).sum(),
        bytes,
    }
}

/// The plain file is likewise created before the clock starts.
fn measure_raw(path: &Path, records: &[Vec<u8>], entry_count: usize) -> Measurement {
    let mut file = File::create(path).expect("create raw file");
    let start = Instant::now();
    for batch in records {
        file.write_all(batch).expect("write");
        file.sync_data().expect("fdatasync");
    }
    Measurement {
        elapsed: start.elapsed(),
        entry_count,
        bytes: records.iter().map(Vec::len).sum(),
    }
}

fn best(runs: impl Iterator<Item = Measurement>) -> Measurement {
    runs.min_by_key(|m| m.elapsed)
        .expect("REPEATS is at least one")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn main() {
    let root = target_dir().join("bench-wal");
    std::fs::create_dir_all(&root).expect("create bench root");
    let scratch = tempfile::tempdir_in(&root).expect("bench temp dir");
    println!("wal bench in {}", scratch.path().display());
    println!(
        "{:>6} {:>8} {:>6} {:>12} {:>9} {:>12} {:>9} {:>8}",
        "batch", "entries", "syncs", "log ent/s", "log MB/s", "raw ent/s", "raw MB/s", "log/raw"
    );
    for (batch_size, batch_count) in RUNS {
        let batches: Vec<Persist> = batches(batch_size, batch_count);
        let records = record_bytes(&batches);
        let bytes: usize = records.iter().map(Vec::len).sum();
        let entry_count = batch_size * batch_count;
        let mut run = 0;
        let mut fresh = |name: &str| {
            run += 1;
            scratch.path().join(format!("{name}-{batch_size}-{run}"))
        };
        // Interleaved so that drift in the disk's speed hits both alike.
        let (mut log_runs, mut raw_runs) = (Vec::new(), Vec::new());
        for _ in 0..REPEATS {
            raw_runs.push(measure_raw(&fresh("raw"), &records, entry_count));
            log_runs.push(measure_log(&fresh("log"), &batches, bytes));
        }
        let log = best(log_runs.into_iter());
        let raw = best(raw_runs.into_iter());
        println!(
            "{:>6} {:>8} {:>6} {:>12.0} {:>9.2} {:>12.0} {:>9.2} {:>7.0}%",
            batch_size,
            entry_count,
            batch_count,
            log.entries_per_s(),
            log.mb_per_s(),
            raw.entries_per_s(),
            raw.mb_per_s(),
            100.0 * raw.elapsed.as_secs_f64() / log.elapsed.as_secs_f64(),
        );
    }
    let dir = scratch.path().join("first-segment");
    let (mut store, _) = LogStore::open(FsDisk::open(&dir).expect("open")).expect("open store");
    let start = Instant::now();
    store.persist(&warm_up()).expect("persist");
    println!(
        "one-time cost of the first persist (creates the segment: 2 file syncs, 1 dir sync): {:.2} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let entry: Entry = send_entry(1, 1, BODY_BYTES);
    let mut one = Vec::new();
    encode_entry_record(&mut one, &entry).expect("small entry");
    println!(
        "one entry with a {BODY_BYTES}-byte body is a {}-byte record",
        one.len()
    );
}
