//! The snapshot heal (part of `leader-isolation`): a leader cut off from its peers while
//! clients still reach it keeps appending their writes in its term, entries no one else
//! has; its successor commits other entries at the same indexes and, with a small
//! snapshot threshold, soon compacts past them. Healing the cut the moment the
//! successor's first snapshot past the cut point is durable makes the successor catch
//! the old leader up by InstallSnapshot, whose last index the old leader holds with an
//! entry of another term: the follower must then drop its whole log, not keep the suffix
//! after that index (it continues a different history). With the cut's fixed duration the
//! successor is usually many snapshots further by then, past the old leader's last entry,
//! and the install replaces a log that has nothing at its last index.
//!
//! Drawn for half of the leader-cut splits that open no stale-read window (in which the
//! clients leave the old leader and it appends nothing), from the stale-read stream.

use super::*;

/// A heal waiting for the successor's snapshot.
#[derive(Clone, Copy, Debug)]
pub(super) struct SnapshotHeal {
    /// The cut-off leader.
    leader: NodeId,
    /// Its last index when it was cut: its entries after it are its own.
    cut_index: u64,
    partition: u64,
}

impl World<'_> {
    /// Called as a split cuts `leader` off from its peers (partition `partition`) and
    /// opened no stale-read window: maybe heals it early, at the successor's snapshot.
    pub(super) fn maybe_arm_snapshot_heal(&mut self, leader: NodeId, partition: u64) {
        if !self.stale_rng.random_bool(0.5) {
            return;
        }
        let Some(replica) = self.node(leader).replica.as_ref() else {
            return;
        };
        let cut_index = replica.last_log_index().0;
        self.tracer.line(self.now, || {
            format!(
                "FAULT snapshot heal: partition #{partition} heals at a snapshot past {cut_index}"
            )
        });
        self.snapshot_heal = Some(SnapshotHeal {
            leader,
            cut_index,
            partition,
        });
    }

    /// `id` made a snapshot through `index` durable: if it leads in the old leader's
    /// place and compacted past the cut point, the cut heals now.
    pub(super) fn maybe_heal_at_snapshot(&mut self, id: NodeId, index: u64) {
        let Some(heal) = self.snapshot_heal else {
            return;
        };
        let leads = self
            .node(id)
            .replica
            .as_ref()
            .is_some_and(|r| r.role() == Role::Leader);
        if id == heal.leader || !leads || index <= heal.cut_index || self.phase != Phase::Chaos {
            return;
        }
        self.snapshot_heal = None;
        let held = self
            .node(heal.leader)
            .replica
            .as_ref()
            .map(|r| r.last_log_index().0);
        self.tracer.line(self.now, || {
            format!(
                "FAULT snapshot heal: {id} compacted through {index}, partition #{} heals \
                 ({} holds entries through {held:?})",
                heal.partition, heal.leader
            )
        });
        self.heal_partition(heal.partition);
    }

    /// Partition `partition` healed: a heal still waiting on it is moot.
    pub(super) fn disarm_snapshot_heal(&mut self, partition: Option<u64>) {
        if self
            .snapshot_heal
            .is_some_and(|h| partition.is_none_or(|p| p == h.partition))
        {
            self.snapshot_heal = None;
        }
    }
}
