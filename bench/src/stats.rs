//! Latency summaries: exact percentiles over every recorded sample (a few hundred
//! thousand at most in a run of seconds, so sorting them all is cheap and honest).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What one phase (one operation kind against one system) measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseResult {
    pub system: String,
    pub op: String,
    pub clients: usize,
    pub payload_bytes: usize,
    /// Operations that succeeded inside the measurement window.
    pub ops: u64,
    /// Operations that failed (after the client's own retries) inside the window.
    pub errors: u64,
    pub elapsed_secs: f64,
    pub ops_per_sec: f64,
    pub latency_us: LatencySummary,
    /// What the server processes spent in the window, when their pids were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerCost>,
}

/// Server-side cost of the operations of one phase, summed over every server process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerCost {
    /// Cores busy on average (CPU seconds per second of the window).
    pub cpus: f64,
    pub cpu_us_per_op: f64,
    pub context_switches_per_op: f64,
}

impl ServerCost {
    pub fn of(usage: crate::procstat::Usage, ops: u64, elapsed_secs: f64) -> ServerCost {
        let ops = ops.max(1) as f64;
        ServerCost {
            cpus: usage.cpu.as_secs_f64() / elapsed_secs.max(1e-9),
            cpu_us_per_op: usage.cpu.as_secs_f64() * 1e6 / ops,
            context_switches_per_op: usage.context_switches as f64 / ops,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: u64,
}

impl LatencySummary {
    /// Nearest-rank percentiles of `samples` (sorted here).
    pub fn of(samples: &mut [u64]) -> LatencySummary {
        if samples.is_empty() {
            return LatencySummary::default();
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let n = samples.len();
            // ceil(p * n) is in 1..=n for p in (0, 1]; the index is one less.
            let index = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            samples[index]
        };
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        LatencySummary {
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
            mean: u64::try_from(sum / samples.len() as u128).unwrap_or(u64::MAX),
        }
    }
}

pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Microseconds as milliseconds with two decimals, for people.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u64> = (1..=100).rev().collect();
        let s = LatencySummary::of(&mut samples);
        assert_eq!(s.p50, 50);
        assert_eq!(s.p95, 95);
        assert_eq!(s.p99, 99);
        assert_eq!(s.max, 100);
        assert_eq!(s.mean, 50);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let s = LatencySummary::of(&mut [7]);
        assert_eq!((s.p50, s.p99, s.max), (7, 7, 7));
    }

    #[test]
    fn no_samples_is_zero() {
        assert_eq!(LatencySummary::of(&mut []).max, 0);
    }
}
