//! Shrinking: reduce a failing scenario's faults and workload, by delta debugging, to a
//! small scenario that still fails the same check. The result is written as a scenario
//! file under `seeds/`, replayed by the test suite from then on.

use crate::scenario::Scenario;
use crate::world::RunOutcome;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A scenario file: the scenario and why it is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioFile {
    /// What this scenario caught, in words (edit it when you commit the file).
    pub description: String,
    /// The check that failed when the file was written.
    pub check: String,
    pub detail: String,
    pub scenario: Scenario,
}

impl ScenarioFile {
    /// Reads a scenario file (or a bare scenario in JSON).
    pub fn read(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path) // determinism: ok (CLI file I/O, outside any simulation)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if let Ok(file) = serde_json::from_str::<ScenarioFile>(&text) {
            return Ok(file.scenario);
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a scenario file", path.display()))
    }

    /// Writes the file (creating its directory).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir) // determinism: ok (CLI file I/O, outside any simulation)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n") // determinism: ok (CLI file I/O, outside any simulation)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShrinkStats {
    pub runs: u64,
    pub fault_events_before: usize,
    pub fault_events_after: usize,
    pub ops_before: usize,
    pub ops_after: usize,
}

/// Shrinks `scenario`, which must fail `check` when run by `run`.
pub fn shrink(
    scenario: &Scenario,
    check: &str,
    run: &mut dyn FnMut(&Scenario) -> RunOutcome,
) -> (Scenario, ShrinkStats) {
    let mut stats = ShrinkStats {
        fault_events_before: scenario.fault_events.len(),
        ops_before: scenario.clients.iter().map(|c| c.ops.len()).sum(),
        ..ShrinkStats::default()
    };
    let mut fails = |candidate: &Scenario| {
        stats.runs += 1;
        run(candidate)
            .failure
            .is_some_and(|f| f.violation.check == check)
    };
    let mut best = scenario.clone();
    // Shorter chaos first: everything after the failure is noise.
    while best.chaos_duration_us > 100_000 {
        let mut candidate = best.clone();
        candidate.chaos_duration_us /= 2;
        candidate
            .fault_events
            .retain(|e| e.at_us < candidate.chaos_duration_us);
        if !fails(&candidate) {
            break;
        }
        best = candidate;
    }
    let events = best.fault_events.clone();
    best.fault_events = minimize(events, &mut |events| {
        let mut candidate = best.clone();
        candidate.fault_events = events.to_vec();
        fails(&candidate)
    });
    for client in 0..best.clients.len() {
        let ops = best.clients[client].ops.clone();
        let kept = minimize(ops, &mut |ops| {
            let mut candidate = best.clone();
            candidate.clients[client].ops = ops.to_vec();
            fails(&candidate)
        });
        best.clients[client].ops = kept;
    }
    // Then the background noise, one knob at a time.
    let knobs: [fn(&mut Scenario); 6] = [
        |s| s.milestone_crash_percent = 0,
        |s| s.network.drop_per_mille = 0,
        |s| s.network.duplicate_per_mille = 0,
        |s| s.network.delay_per_mille = 0,
        |s| s.quick_restart_per_10k = 0,
        |s| s.clock_drift_ppm.iter_mut().for_each(|d| *d = 0),
    ];
    for knob in knobs {
        let mut candidate = best.clone();
        knob(&mut candidate);
        if candidate != best && fails(&candidate) {
            best = candidate;
        }
    }
    stats.fault_events_after = best.fault_events.len();
    stats.ops_after = best.clients.iter().map(|c| c.ops.len()).sum();
    (best, stats)
}

/// Delta debugging (ddmin): a 1-minimal subsequence of `items` for which `fails` holds,
/// assuming it holds for `items`.
pub fn minimize<T: Clone>(items: Vec<T>, fails: &mut dyn FnMut(&[T]) -> bool) -> Vec<T> {
    if fails(&[]) {
        return Vec::new();
    }
    let mut items = items;
    let mut granularity = 2;
    while items.len() >= 2 {
        let chunk = items.len().div_ceil(granularity);
        let mut reduced = false;
        for start in (0..items.len()).step_by(chunk) {
            let complement: Vec<T> = items[..start]
                .iter()
                .chain(items[(start + chunk).min(items.len())..].iter())
                .cloned()
                .collect();
            if fails(&complement) {
                items = complement;
                granularity = (granularity - 1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if granularity >= items.len() {
                break;
            }
            granularity = (granularity * 2).min(items.len());
        }
    }
    if items.len() == 1 && fails(&[]) {
        items.clear();
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimize_finds_the_failure_inducing_pair() {
        let items: Vec<u32> = (0..40).collect();
        let mut runs = 0;
        let kept = minimize(items, &mut |subset| {
            runs += 1;
            subset.contains(&7) && subset.contains(&31)
        });
        assert_eq!(kept, vec![7, 31]);
        assert!(runs < 200, "ddmin took {runs} runs");
    }

    #[test]
    fn minimize_returns_empty_when_nothing_is_needed() {
        assert!(minimize(vec![1, 2, 3], &mut |_| true).is_empty());
    }
}
