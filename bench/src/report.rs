//! Human output: one line per phase, and the side-by-side comparison.

use crate::stats::{ms, PhaseResult};
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::Path;

pub fn line(r: &PhaseResult) -> String {
    let l = &r.latency_us;
    let server = match &r.server {
        Some(s) => format!(
            "; servers {:.2} cores, {:.0} us CPU and {:.1} context switches per op",
            s.cpus, s.cpu_us_per_op, s.context_switches_per_op
        ),
        None => String::new(),
    };
    format!(
        "{} {} clients={} payload={}B: {} ops in {:.2}s = {:.0} ops/s; latency ms p50 {} p95 {} p99 {} max {}; errors {}{}",
        r.system,
        r.op,
        r.clients,
        r.payload_bytes,
        r.ops,
        r.elapsed_secs,
        r.ops_per_sec,
        ms(l.p50),
        ms(l.p95),
        ms(l.p99),
        ms(l.max),
        r.errors,
        server
    )
}

/// Phases of one file by (op, clients); the last one wins if a phase repeats.
fn load(path: &Path) -> anyhow::Result<Phases> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut phases = BTreeMap::new();
    for (number, row) in text.lines().enumerate() {
        if row.trim().is_empty() {
            continue;
        }
        let phase: PhaseResult = serde_json::from_str(row)
            .with_context(|| format!("{} line {}", path.display(), number + 1))?;
        phases.insert((phase.op.clone(), phase.clients), phase);
    }
    Ok(phases)
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}", ours / theirs)
    } else {
        "n/a".to_owned()
    }
}

type Phases = BTreeMap<(String, usize), PhaseResult>;

/// What each operation cost the servers, where both runs measured it.
fn server_costs(ours: &Phases, etcd: &Phases) {
    let mut rows: Vec<(&PhaseResult, &PhaseResult)> = ours
        .iter()
        .filter_map(|(key, a)| Some((a, etcd.get(key)?)))
        .filter(|(a, b)| a.server.is_some() && b.server.is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    rows.sort_by_key(|(a, _)| (a.op != "write", a.clients));
    println!();
    println!("| op | clients | ours server cores | etcd server cores | ours CPU us/op | etcd CPU us/op | ours ctx switches/op | etcd ctx switches/op |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (a, b) in rows {
        // Filtered above: both have a server cost.
        let (Some(x), Some(y)) = (&a.server, &b.server) else {
            continue;
        };
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {:.1} | {:.1} |",
            a.op,
            a.clients,
            x.cpus,
            y.cpus,
            x.cpu_us_per_op,
            y.cpu_us_per_op,
            x.context_switches_per_op,
            y.context_switches_per_op
        );
    }
}

pub fn compare(ours: &Path, etcd: &Path, sim: Option<&Path>) -> anyhow::Result<()> {
    let ours = load(ours)?;
    let etcd = load(etcd)?;
    println!("| op | clients | payload B | ours ops/s | etcd ops/s | ratio ops/s | ours p50 ms | etcd p50 ms | ours p99 ms | etcd p99 ms | ratio p99 | errors ours/etcd | goal met |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    // Writes first, then reads, each by concurrency.
    let mut keys: Vec<&(String, usize)> = ours.keys().filter(|k| etcd.contains_key(*k)).collect();
    keys.sort_by_key(|(op, clients)| (op != "write", *clients));
    for key in keys {
        let (a, b) = (&ours[key], &etcd[key]);
        let goal = a.ops_per_sec >= b.ops_per_sec && a.latency_us.p99 <= b.latency_us.p99;
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {}/{} | {} |",
            a.op,
            a.clients,
            a.payload_bytes,
            a.ops_per_sec,
            b.ops_per_sec,
            ratio(a.ops_per_sec, b.ops_per_sec),
            ms(a.latency_us.p50),
            ms(b.latency_us.p50),
            ms(a.latency_us.p99),
            ms(b.latency_us.p99),
            ratio(a.latency_us.p99 as f64, b.latency_us.p99 as f64),
            a.errors,
            b.errors,
            if goal { "yes" } else { "no" }
        );
    }
    println!();
    println!("ratio ops/s = ours/etcd (higher is better); ratio p99 = ours/etcd (lower is better)");
    server_costs(&ours, &etcd);
    if let Some(sim) = sim {
        let text = std::fs::read_to_string(sim)
            .with_context(|| format!("cannot read {}", sim.display()))?;
        let doc: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not chatsim's JSON", sim.display()))?;
        let number = |key: &str| {
            doc.get(key)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        println!();
        println!(
            "simulator (chatsim run --jobs {} --json): {} seeds, {} failures, {} events in {:.2}s wall = {:.0} events/s; {:.1} simulated s, acceleration {:.0}x",
            number("jobs"),
            number("seeds"),
            number("failures"),
            number("events"),
            number("wall_secs"),
            number("events_per_sec"),
            number("simulated_secs"),
            number("acceleration")
        );
    }
    Ok(())
}
