//! What `chatbench fill` and `chatbench first-write` report, as lines for people and as
//! JSON, and `chatbench scale-report`: the side-by-side table of `bench/scale.sh`.

use crate::stats::{ms, LatencySummary};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One line of `chatbench fill --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FillRecord {
    Window(FillWindow),
    Total(FillTotal),
}

/// One window of the fill: the writes that finished in it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FillWindow {
    pub system: String,
    /// Seconds since the fill started.
    pub from_secs: f64,
    pub to_secs: f64,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub latency_us: LatencySummary,
    /// Leader changes in the window (the most any member saw); None without metrics.
    pub leader_changes: Option<u64>,
    /// The highest term a member reported at the end of the window (ours only).
    pub term: Option<u64>,
    /// Each server's RSS at the end of the window (None: its process is gone).
    pub rss_bytes: Vec<Option<u64>>,
    /// Cores the servers kept busy in the window (CPU seconds per second).
    pub server_cpus: Option<f64>,
}

/// The whole fill.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FillTotal {
    pub system: String,
    pub messages: u64,
    pub users: Option<usize>,
    pub clients: usize,
    pub payload_bytes: usize,
    /// Untimed setup: registrations and logins (ours), connections (etcd).
    pub setup_secs: f64,
    pub ops: u64,
    pub errors: u64,
    pub elapsed_secs: f64,
    pub ops_per_sec: f64,
    pub latency_us: LatencySummary,
    pub leader_changes: Option<u64>,
    pub term_first: Option<u64>,
    pub term_last: Option<u64>,
    /// Each server's highest RSS, sampled every half second.
    pub rss_bytes_max: Vec<u64>,
    /// Bodies (values) acknowledged: ops x payload.
    pub stored_payload_bytes: u64,
    /// Each member's data directory on disk after the fill.
    pub data_dir_bytes: Vec<u64>,
}

/// What `chatbench first-write --json` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FirstWrite {
    pub system: String,
    /// From the restart (or the command's start) to the first acknowledged write.
    pub first_write_ms: u64,
    /// Calls made before the one acknowledged.
    pub attempts: u64,
    /// Ours: when the login, then the session (a write itself), were acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_ms: Option<u64>,
}

fn mb(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / 1e6)
}

fn option<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

impl FillRecord {
    pub fn line(&self) -> String {
        match self {
            FillRecord::Window(w) => {
                let rss: Vec<String> = w.rss_bytes.iter().map(|b| option(b.map(mb))).collect();
                format!(
                    "{} fill {:>6.1}-{:<6.1}s: {:>6} ops = {:>6.0} ops/s; latency ms p50 {} p99 {} max {}; errors {}; leader changes {}; term {}; RSS MB [{}]; servers {} cores",
                    w.system,
                    w.from_secs,
                    w.to_secs,
                    w.ops,
                    w.ops_per_sec,
                    ms(w.latency_us.p50),
                    ms(w.latency_us.p99),
                    ms(w.latency_us.max),
                    w.errors,
                    option(w.leader_changes),
                    option(w.term),
                    rss.join(" "),
                    option(w.server_cpus.map(|c| format!("{c:.2}"))),
                )
            }
            FillRecord::Total(t) => {
                let rss: Vec<String> = t.rss_bytes_max.iter().map(|&b| mb(b)).collect();
                let dirs: Vec<String> = t.data_dir_bytes.iter().map(|&b| mb(b)).collect();
                format!(
                    "{} fill total: {} of {} writes ok in {:.1} s = {:.0} ops/s; latency ms p50 {} p99 {} max {}; errors {}; leader changes {} (term {} -> {}); RSS MB max [{}] for {} MB of payload; data dirs MB [{}]; setup {:.1} s",
                    t.system,
                    t.ops,
                    t.messages,
                    t.elapsed_secs,
                    t.ops_per_sec,
                    ms(t.latency_us.p50),
                    ms(t.latency_us.p99),
                    ms(t.latency_us.max),
                    t.errors,
                    option(t.leader_changes),
                    option(t.term_first),
                    option(t.term_last),
                    rss.join(" "),
                    mb(t.stored_payload_bytes),
                    dirs.join(" "),
                    t.setup_secs,
                )
            }
        }
    }
}

/// The totals line of a `chatbench fill --json` output.
fn load_total(path: &Path) -> anyhow::Result<FillTotal> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut total = None;
    for (number, row) in text.lines().enumerate() {
        if row.trim().is_empty() {
            continue;
        }
        let record: FillRecord = serde_json::from_str(row)
            .with_context(|| format!("{} line {}", path.display(), number + 1))?;
        if let FillRecord::Total(t) = record {
            total = Some(t);
        }
    }
    match total {
        Some(total) => Ok(total),
        None => bail!(
            "{} has no totals line (did the fill finish?)",
            path.display()
        ),
    }
}

fn load_first_write(path: Option<&Path>) -> anyhow::Result<Option<FirstWrite>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // An empty file: the write was never acknowledged (first-write failed).
    if text.trim().is_empty() {
        return Ok(None);
    }
    let first = serde_json::from_str(text.trim())
        .with_context(|| format!("{} is not first-write's JSON", path.display()))?;
    Ok(Some(first))
}

/// The files `scale-report` reads.
pub struct ScaleFiles<'a> {
    pub ours: &'a Path,
    pub etcd: &'a Path,
    pub ours_first_write: Option<&'a Path>,
    pub etcd_first_write: Option<&'a Path>,
}

pub fn scale_report(files: &ScaleFiles) -> anyhow::Result<()> {
    let ours = load_total(files.ours)?;
    let etcd = load_total(files.etcd)?;
    let ours_first = load_first_write(files.ours_first_write)?;
    let etcd_first = load_first_write(files.etcd_first_write)?;
    for total in [&etcd, &ours] {
        println!("{}", FillRecord::Total(total.clone()).line());
    }
    println!();
    for row in scale_rows(&ours, &etcd, ours_first.as_ref(), etcd_first.as_ref()) {
        println!("{row}");
    }
    Ok(())
}

/// The Markdown table: one row per measure, ours, etcd, the target and whether ours
/// meets it.
fn scale_rows(
    ours: &FillTotal,
    etcd: &FillTotal,
    ours_first: Option<&FirstWrite>,
    etcd_first: Option<&FirstWrite>,
) -> Vec<String> {
    let (a, b) = (&ours.latency_us, &etcd.latency_us);
    let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    let yes = |met: bool| if met { "yes" } else { "**no**" }.to_owned();
    let tail = |l: &LatencySummary| ratio(l.max as f64, l.p99 as f64);
    let rss_max = |t: &FillTotal| t.rss_bytes_max.iter().copied().max().unwrap_or(0);
    let rss_ratio = |t: &FillTotal| ratio(rss_max(t) as f64, t.stored_payload_bytes as f64);
    let rss_list = |t: &FillTotal| {
        let list: Vec<String> = t.rss_bytes_max.iter().map(|&b| mb(b)).collect();
        format!("{} ({})", mb(rss_max(t)), list.join(", "))
    };
    let dirs = |t: &FillTotal| {
        let list: Vec<String> = t.data_dir_bytes.iter().map(|&b| mb(b)).collect();
        format!(
            "{} ({})",
            mb(t.data_dir_bytes.iter().sum()),
            list.join(", ")
        )
    };
    let first_ms = |f: Option<&FirstWrite>| option(f.map(|f| f.first_write_ms));
    let ours_elections = ours.leader_changes;
    let first_ok = ours_first.is_some_and(|f| f.first_write_ms < 2_000);
    let ops_ratio = ratio(ours.ops_per_sec, etcd.ops_per_sec);
    let p99_ratio = ratio(a.p99 as f64, b.p99 as f64);
    let mut rows = vec![
        "| | ours | etcd | ours/etcd | target (issue #12) | met |".to_owned(),
        "|---|---:|---:|---:|---|---|".to_owned(),
    ];
    let mut row = |name: &str, x: String, y: String, r: String, target: &str, met: String| {
        rows.push(format!("| {name} | {x} | {y} | {r} | {target} | {met} |"));
    };
    row(
        "writes acknowledged (errors)",
        format!("{} ({})", ours.ops, ours.errors),
        format!("{} ({})", etcd.ops, etcd.errors),
        String::new(),
        &format!("{} of {} B", ours.messages, ours.payload_bytes),
        yes(ours.errors == 0 && ours.ops == ours.messages),
    );
    row(
        "throughput, writes/s",
        format!("{:.0}", ours.ops_per_sec),
        format!("{:.0}", etcd.ops_per_sec),
        format!("{ops_ratio:.2}"),
        ">= 1.5x etcd",
        yes(ops_ratio >= 1.5),
    );
    row(
        "p50 ms",
        ms(a.p50),
        ms(b.p50),
        format!("{:.2}", ratio(a.p50 as f64, b.p50 as f64)),
        "",
        String::new(),
    );
    row(
        "p99 ms",
        ms(a.p99),
        ms(b.p99),
        format!("{p99_ratio:.2}"),
        "<= 0.5x etcd",
        yes(p99_ratio <= 0.5),
    );
    row(
        "max ms",
        ms(a.max),
        ms(b.max),
        format!("{:.2}", ratio(a.max as f64, b.max as f64)),
        "<= etcd's max",
        yes(a.max <= b.max),
    );
    row(
        "max / p99",
        format!("{:.1}", tail(a)),
        format!("{:.1}", tail(b)),
        String::new(),
        "<= 10",
        yes(tail(a) <= 10.0),
    );
    row(
        "leader changes during the fill (term)",
        format!(
            "{} ({} -> {})",
            option(ours_elections),
            option(ours.term_first),
            option(ours.term_last)
        ),
        option(etcd.leader_changes),
        String::new(),
        "0",
        yes(ours_elections == Some(0)),
    );
    row(
        "RSS per member, max MB (each)",
        rss_list(ours),
        rss_list(etcd),
        format!("{:.2}", ratio(rss_max(ours) as f64, rss_max(etcd) as f64)),
        "",
        String::new(),
    );
    row(
        "RSS max / bytes of stored messages",
        format!(
            "{:.2} ({} MB stored)",
            rss_ratio(ours),
            mb(ours.stored_payload_bytes)
        ),
        format!(
            "{:.2} ({} MB stored)",
            rss_ratio(etcd),
            mb(etcd.stored_payload_bytes)
        ),
        String::new(),
        "<= 3",
        yes(rss_ratio(ours) <= 3.0),
    );
    row(
        "data dirs MB, total (each)",
        dirs(ours),
        dirs(etcd),
        String::new(),
        "",
        String::new(),
    );
    row(
        "kill -9 all, restart: first write acked, ms",
        first_ms(ours_first),
        first_ms(etcd_first),
        String::new(),
        "< 2000",
        yes(first_ok),
    );
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(ops_per_sec: f64, p99: u64, max: u64) -> FillTotal {
        FillTotal {
            system: "x".to_owned(),
            messages: 100,
            users: None,
            clients: 1,
            payload_bytes: 256,
            setup_secs: 0.0,
            ops: 100,
            errors: 0,
            elapsed_secs: 1.0,
            ops_per_sec,
            latency_us: LatencySummary {
                p50: p99 / 2,
                p95: p99,
                p99,
                max,
                mean: p99 / 2,
            },
            leader_changes: Some(0),
            term_first: Some(2),
            term_last: Some(2),
            rss_bytes_max: vec![10_000, 20_000],
            stored_payload_bytes: 25_600,
            data_dir_bytes: vec![1, 2],
        }
    }

    #[test]
    fn the_table_says_which_targets_are_met() {
        let ours = total(3_000.0, 1_000, 5_000);
        let etcd = total(1_000.0, 4_000, 9_200);
        let first = FirstWrite {
            system: "chat".to_owned(),
            first_write_ms: 2_500,
            attempts: 3,
            login_ms: None,
            session_ms: None,
        };
        let rows = scale_rows(&ours, &etcd, Some(&first), None).join("\n");
        assert!(
            rows.contains("| throughput, writes/s | 3000 | 1000 | 3.00 | >= 1.5x etcd | yes |"),
            "{rows}"
        );
        assert!(
            rows.contains("| max / p99 | 5.0 | 2.3 |  | <= 10 | yes |"),
            "{rows}"
        );
        assert!(rows.contains("| 2500 | ? |  | < 2000 | **no** |"), "{rows}");
    }

    #[test]
    fn records_round_trip_through_json() {
        let record = FillRecord::Total(total(1.0, 1, 1));
        let text = serde_json::to_string(&record).expect("serializable");
        assert!(text.starts_with("{\"kind\":\"total\""), "{text}");
        let back: FillRecord = serde_json::from_str(&text).expect("parsable");
        assert!(matches!(back, FillRecord::Total(t) if t.ops == 100));
    }
}
