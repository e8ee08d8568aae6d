//! One simulated cluster member: its replica (while up), its disk, its clock.

use chat_core::storage::{LogStore, MemDisk};
use chat_core::{NodeId, Replica, Role, Term, Time};

pub struct SimNode {
    pub id: NodeId,
    pub replica: Option<Replica>,
    pub store: Option<LogStore<MemDisk>>,
    /// The disk while the node is down.
    pub disk: Option<MemDisk>,
    /// Bumped on every crash, so that a stale restart does nothing.
    pub incarnation: u64,
    pub starts: u64,
    /// How fast this node's clock runs, in parts per million off true time.
    pub drift_ppm: i64,
    /// The clock's anchor: at virtual time `.0` it read `.1`; it runs at `drift_ppm`
    /// from there (the rate can change at run time, the reading never goes back).
    clock_base: (Time, Time),
    /// A clock-rate fault is active until this time, after which the rate returns to
    /// the first value (the scenario's drift).
    pub clock_fault: Option<(Time, i64)>,
    /// Armed persist crash: (vote rather than append ack, lose the messages, until).
    pub persist_crash: Option<(bool, bool, Time, u64)>,
    pub paused_until: Time,
    /// The timer event scheduled for this node: (virtual time, event sequence number).
    pub timer: Option<(Time, u64)>,
    /// Recovery refused to start on a damaged disk; the node stays down.
    pub failed: Option<String>,
    /// Damage was injected on purpose, so a refusal to start is the expected outcome.
    pub corrupted: bool,
    /// The file the corruption fault damaged.
    pub corrupted_file: Option<String>,
    /// The snapshot whose file `RotSnapshot` damaged while the node ran; cleared (with
    /// `corrupted`) once a newer snapshot replaces the file.
    pub rotted_snapshot: Option<chat_core::entry::SnapshotMeta>,
    /// Disk operations allowed during the next recovery before the disk fails.
    pub recovery_crash_after_ops: Option<u64>,
    /// A torn-write crash is armed: the node goes down for this long when its disk fails.
    pub torn_write_down_us: Option<u64>,
    pub last_role: Option<(Role, Term)>,
    /// The last input changed the role, the vote or the commit index.
    pub at_milestone: bool,
    /// Leader churn: crash this leader as soon as its commit index passes this one (its
    /// first commit as leader), before the news spreads.
    pub churn_commit_watch: Option<chat_core::LogIndex>,
    /// A founding member (started with the founding voters); otherwise a node the
    /// operator added, started with none.
    pub founding: bool,
    /// Stopped for good: removed from the cluster, or its disk is gone. Never restarts.
    pub retired: bool,
}

impl SimNode {
    pub fn new(id: NodeId, drift_ppm: i64) -> SimNode {
        SimNode {
            id,
            replica: None,
            store: None,
            disk: Some(MemDisk::new()),
            incarnation: 0,
            starts: 0,
            drift_ppm,
            clock_base: (Time(0), Time(0)),
            clock_fault: None,
            persist_crash: None,
            paused_until: Time(0),
            timer: None,
            failed: None,
            corrupted: false,
            corrupted_file: None,
            rotted_snapshot: None,
            recovery_crash_after_ops: None,
            torn_write_down_us: None,
            last_role: None,
            at_milestone: false,
            churn_commit_watch: None,
            founding: true,
            retired: false,
        }
    }

    pub fn is_up(&self) -> bool {
        self.replica.is_some()
    }

    /// The node's own clock at virtual time `now`.
    pub fn local_time(&self, now: Time) -> Time {
        let (base_virtual, base_local) = self.clock_base;
        let elapsed = i128::from(now.0.saturating_sub(base_virtual.0));
        let skew = (elapsed * i128::from(self.drift_ppm)) / 1_000_000;
        Time((i128::from(base_local.0) + elapsed + skew).max(0) as u64)
    }

    /// Changes the clock's rate from virtual time `now` on; local time stays monotonic.
    pub fn set_drift(&mut self, now: Time, drift_ppm: i64) {
        self.clock_base = (now, self.local_time(now));
        self.drift_ppm = drift_ppm;
    }

    /// The earliest virtual time (not before the clock's anchor) at which the node's
    /// clock reads at least `local`.
    pub fn virtual_time(&self, local: Time) -> Time {
        let (base_virtual, base_local) = self.clock_base;
        let rate = 1_000_000 + i128::from(self.drift_ppm);
        let ahead = i128::from(local.0.saturating_sub(base_local.0));
        let mut guess = Time(base_virtual.0 + ((ahead * 1_000_000) / rate).max(0) as u64);
        while self.local_time(guess) < local {
            guess = Time(guess.0 + 1);
        }
        guess
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_rate_changes_keep_local_time_monotonic() {
        let mut node = SimNode::new(NodeId(1), 10_000);
        let before = node.local_time(Time(1_000_000));
        node.set_drift(Time(1_000_000), -500_000);
        assert_eq!(node.local_time(Time(1_000_000)), before);
        assert_eq!(node.local_time(Time(3_000_000)).0, before.0 + 1_000_000);
        let v = node.virtual_time(Time(before.0 + 1_000_000));
        assert_eq!(v, Time(3_000_000));
        node.set_drift(Time(3_000_000), 0);
        assert_eq!(node.local_time(Time(4_000_000)).0, before.0 + 2_000_000);
    }

    #[test]
    fn clock_conversion_is_consistent_under_drift() {
        for drift_ppm in [-50_000, -7, 0, 13, 50_000] {
            let node = SimNode::new(NodeId(1), drift_ppm);
            for local in [0, 1, 999, 1_000_000, 123_456_789] {
                let v = node.virtual_time(Time(local));
                assert!(node.local_time(v) >= Time(local));
                assert!(
                    v.0 == 0 || node.local_time(Time(v.0 - 1)) < Time(local),
                    "earliest"
                );
            }
        }
    }
}
