//! The node's clock: Unix-epoch microseconds that never go back.
//!
//! The wall clock is read once, at start; after that time advances by the monotonic
//! clock. So log timestamps are meaningful (close to wall time) and monotonic even if
//! the wall clock is stepped while the node runs.

use chat_core::Time;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall_start_us: u64,
    start: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        // A clock set before 1970 reads as the epoch: time then only moves forward.
        let wall_start_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Clock {
            wall_start_us,
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> Time {
        let elapsed_us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        Time(self.wall_start_us.saturating_add(elapsed_us))
    }
}

/// The current wall-clock time in Unix microseconds, for token expiry (which must agree
/// across nodes, so it cannot use a node's private monotonic origin).
pub fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
