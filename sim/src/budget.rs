//! Per-seed budgets: a seed that runs away (a livelock that multiplies messages, a
//! phase that never ends) fails with check `budget` instead of holding up a sweep. Every
//! budget is counted in simulated quantities (events, virtual time, queued events), never
//! in wall time, so a budget failure replays exactly like any other failure.

use crate::scenario::Scenario;
use crate::world::LIVENESS_BOUND_US;

/// Events one seed may take. A healthy default seed takes about 8,000 on average and at
/// most 35,000 (seeds 0..2000, measured when this was set): a 30x margin, and a livelock
/// running a million events per wall second hits it in about a second.
pub const EVENTS_MAX_DEFAULT: u64 = 1_000_000;
/// Virtual time a seed may run past its chaos phase: the liveness phase and the power-loss
/// phase each have [`LIVENESS_BOUND_US`], plus slack for the final checks.
pub const VIRTUAL_US_AFTER_CHAOS_MAX_DEFAULT: u64 = 2 * LIVENESS_BOUND_US + 10_000_000;
/// Events waiting in the queue at once. This bounds the simulator's memory: a message
/// storm (every reply answered by two messages) grows the queue, not the event count,
/// when virtual time stands still. Healthy seeds stay below 3,000 (seeds 0..2000).
pub const QUEUED_EVENTS_MAX: usize = 100_000;

/// Events one seed may take within one second of virtual time. A storm of messages that
/// answer each other (a leader resending on every rejection) makes virtual time crawl
/// while each event stays expensive; this catches it after a bounded amount of work,
/// where the total budget would take minutes. Healthy seeds peak at 8,000 (seeds 0..2000), a 12x margin.
pub const EVENTS_PER_VIRTUAL_SEC_MAX_DEFAULT: u64 = 100_000;

/// Log entries that the delivered messages of one seed may carry in all. An event that
/// carries a thousand entries costs a thousand times one that carries none; a leader
/// resending its whole log on every rejection hits this long before the event budget.
/// Healthy seeds carry at most 12,400 (seeds 0..2000), a 40x margin.
pub const ENTRIES_DELIVERED_MAX_DEFAULT: u64 = 500_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub events_max: u64,
    pub entries_delivered_max: u64,
    pub events_per_virtual_sec_max: u64,
    /// Virtual time, in µs from the start, after which the seed fails. `None`: the
    /// scenario's chaos duration plus [`VIRTUAL_US_AFTER_CHAOS_MAX_DEFAULT`].
    pub virtual_us_max: Option<u64>,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            events_max: EVENTS_MAX_DEFAULT,
            entries_delivered_max: ENTRIES_DELIVERED_MAX_DEFAULT,
            events_per_virtual_sec_max: EVENTS_PER_VIRTUAL_SEC_MAX_DEFAULT,
            virtual_us_max: None,
        }
    }
}

impl Budget {
    /// The virtual-time limit that applies to `scenario`, in µs.
    pub fn virtual_us_max_for(&self, scenario: &Scenario) -> u64 {
        self.virtual_us_max.unwrap_or_else(|| {
            scenario
                .chaos_duration_us
                .saturating_add(VIRTUAL_US_AFTER_CHAOS_MAX_DEFAULT)
        })
    }

    /// For summaries: how the budget reads.
    pub fn describe(&self) -> String {
        let virtual_limit = match self.virtual_us_max {
            Some(us) => format!("{:.1}s", us as f64 / 1e6),
            None => format!(
                "chaos+{:.0}s",
                VIRTUAL_US_AFTER_CHAOS_MAX_DEFAULT as f64 / 1e6
            ),
        };
        format!(
            "{} events ({} per virtual second), {} log entries in messages, {virtual_limit} virtual, {QUEUED_EVENTS_MAX} queued events per seed",
            self.events_max, self.events_per_virtual_sec_max, self.entries_delivered_max
        )
    }
}
