//! What a leader knows about each follower's log, and how it paces replication to it.

use crate::types::{LogIndex, Time};
use std::collections::VecDeque;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// The match point is unknown: one AppendEntries at a time until one succeeds.
    Probe { in_flight: bool },
    /// The follower is in sync: send optimistically, up to a bounded number in flight.
    Replicate,
    /// The follower needs entries the leader compacted: stream the snapshot to it.
    Snapshot {
        last_index: LogIndex,
        next_offset: u64,
        in_flight: bool,
    },
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be on the follower and to match the leader's log.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    pub state: ReplicationState,
    /// Last index and send time of each AppendEntries in flight (Replicate state), oldest
    /// first.
    pub in_flight: VecDeque<(LogIndex, Time)>,
    /// Heard from since the last check-quorum round.
    pub recently_active: bool,
    /// When this leader last heard from the follower (`None`: not in this term). Decides
    /// whether removing a voter would leave a reachable quorum.
    pub last_heard: Option<Time>,
    /// Highest heartbeat sequence this follower acknowledged in the current term.
    pub heartbeat_seq_acked: u64,
}

impl Progress {
    pub fn new(next_index: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex::ZERO,
            next_index,
            state: ReplicationState::Probe { in_flight: false },
            in_flight: VecDeque::new(),
            recently_active: false,
            last_heard: None,
            heartbeat_seq_acked: 0,
        }
    }

    /// The follower answered something at `now`.
    pub fn heard(&mut self, now: Time) {
        self.recently_active = true;
        self.last_heard = Some(now);
    }

    pub fn become_probe(&mut self) {
        self.state = ReplicationState::Probe { in_flight: false };
        self.in_flight.clear();
        self.next_index = self.next_index.max(self.match_index.next());
    }

    pub fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.in_flight.clear();
        self.next_index = self.match_index.next();
    }

    /// Records an acknowledged match. Returns whether it moved forward.
    pub fn acknowledge(&mut self, index: LogIndex) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
        }
        self.next_index = self.next_index.max(index.next());
        while self
            .in_flight
            .front()
            .is_some_and(|&(last, _)| last <= index)
        {
            self.in_flight.pop_front();
        }
        advanced
    }

    /// Can another AppendEntries go out now?
    pub fn can_send(&self, in_flight_max: usize) -> bool {
        match self.state {
            ReplicationState::Probe { in_flight } => !in_flight,
            ReplicationState::Replicate => self.in_flight.len() < in_flight_max,
            ReplicationState::Snapshot { .. } => false,
        }
    }

    /// Notes that an AppendEntries ending at `last_index` was sent at `now`.
    pub fn sent(&mut self, last_index: LogIndex, now: Time) {
        match &mut self.state {
            ReplicationState::Probe { in_flight } => *in_flight = true,
            ReplicationState::Replicate => {
                self.in_flight.push_back((last_index, now));
                self.next_index = last_index.next();
            }
            ReplicationState::Snapshot { .. } => {}
        }
    }

    /// In Replicate, an unanswered AppendEntries older than `timeout_us` was most likely
    /// lost (with it, every later one is rejected or never sent): fall back to probing.
    pub fn expire_in_flight(&mut self, now: Time, timeout_us: u64) {
        let stuck = self
            .in_flight
            .front()
            .is_some_and(|&(_, sent)| now.saturating_since_us(sent) > timeout_us);
        if self.state == ReplicationState::Replicate && stuck {
            self.next_index = self.match_index.next();
            self.become_probe();
        }
    }

    /// On a heartbeat tick: a probe whose answer was lost may be sent again.
    pub fn resume_probe(&mut self) {
        if let ReplicationState::Probe { in_flight } = &mut self.state {
            *in_flight = false;
        }
        if let ReplicationState::Snapshot { in_flight, .. } = &mut self.state {
            *in_flight = false;
        }
    }
}
