//! The change-window nemesis (part of `membership`): a leader is cut off just after it
//! appends a membership change, with the change's subject and sometimes one more node;
//! when the other side elects a leader, one voter that has just voted for it crosses to
//! the old leader's side before hearing anything more from it. This is the interleaving
//! of the 2015 single-server bug: two leaders of successive terms, each with its own
//! uncommitted change over the same old configuration, and a voter each side can count.
//! A correct new leader proposes nothing before an entry of its term has committed.

use super::*;
use chat_core::membership::MembershipChange;

/// A change-window split in force.
pub(super) struct ChangeSplit {
    partition: u64,
    /// The old leader's side.
    side: Vec<NodeId>,
    until: Time,
    moved: bool,
}

impl World<'_> {
    /// The operator sends `change` to `target`: if it leads, half the time, cut it off.
    pub(super) fn maybe_split_change_window(&mut self, target: NodeId, change: &MembershipChange) {
        if self.phase != Phase::Chaos
            || self
                .change_split
                .as_ref()
                .is_some_and(|s| self.now < s.until)
        {
            return;
        }
        let leads = self
            .node(target)
            .replica
            .as_ref()
            .is_some_and(|r| r.role() == Role::Leader);
        if !leads || !self.operator.split_rng.random_bool(0.5) {
            return;
        }
        let mut side = vec![target];
        if let MembershipChange::AddLearner { id, .. } | MembershipChange::Promote { id } = change {
            if *id != target {
                side.push(*id);
            }
        }
        if self.operator.split_rng.random_bool(0.5) {
            let others: Vec<NodeId> = (1..=self.nodes.len() as u64)
                .map(NodeId)
                .filter(|n| !side.contains(n))
                .collect();
            if !others.is_empty() {
                side.push(others[self.operator.split_rng.random_range(0..others.len())]);
            }
        }
        let timeout_us = self.scenario.tuning.election_timeout_us_max();
        let hold_us = self
            .operator
            .split_rng
            .random_range(2 * timeout_us..=6 * timeout_us);
        let until = self.now.saturating_add_us(hold_us);
        self.tracer.line(self.now, || {
            format!("FAULT change window: {target} cut off with {side:?} for {hold_us}us")
        });
        let partition = self.split_off(&side, until);
        self.change_split = Some(ChangeSplit {
            partition,
            side,
            until,
            moved: false,
        });
    }

    /// The other side elected `leader`: one of its voters crosses to the old side.
    pub(super) fn maybe_cross_to_old_side(&mut self, leader: NodeId) {
        let Some(split) = self.change_split.as_ref() else {
            return;
        };
        if split.moved || self.now >= split.until || split.side.contains(&leader) {
            return;
        }
        let Some(replica) = self.node(leader).replica.as_ref() else {
            return;
        };
        let voters: Vec<NodeId> = replica
            .membership()
            .voters()
            .filter(|v| *v != leader && !split.side.contains(v))
            .collect();
        if voters.is_empty() {
            return;
        }
        let crossing = voters[self.operator.split_rng.random_range(0..voters.len())];
        let (old_partition, until) = (split.partition, split.until);
        let mut side = split.side.clone();
        side.push(crossing);
        self.tracer.line(self.now, || {
            format!("FAULT change window: {crossing} crosses to {side:?}")
        });
        self.network.remove_partition(old_partition);
        let partition = self.split_off(&side, until);
        self.change_split = Some(ChangeSplit {
            partition,
            side,
            until,
            moved: true,
        });
    }
}
