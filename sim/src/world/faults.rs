//! Fault injection: the scheduled faults, quick restarts and milestone crashes, and
//! disk corruption.

use super::*;

/// A leader-churn window in force (see `FaultAction::LeaderChurn`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Churn {
    until: Time,
    reach_peers: u64,
    cut_us_max: u64,
    settle_us_max: u64,
    down_us: u64,
}

impl World<'_> {
    /// A crash at an arbitrary point of the protocol, with a quick return.
    pub(super) fn maybe_quick_restart(&mut self, id: NodeId) -> bool {
        let at_milestone = std::mem::take(&mut self.node_mut(id).at_milestone);
        let rate = if at_milestone {
            100 * self.scenario.milestone_crash_percent
        } else {
            self.scenario.quick_restart_per_10k
        };
        if self.phase != Phase::Chaos || rate == 0 || self.chaos_rng.random_range(0..10_000) >= rate
        {
            return false;
        }
        if at_milestone && self.chaos_rng.random_bool(0.5) {
            // Or cut it off for a moment: what it just sent is lost, it stays up.
            let isolated_us = self.chaos_rng.random_range(1_000..=300_000);
            self.tracer.line(self.now, || {
                format!("FAULT isolate {id} for {isolated_us}us")
            });
            self.isolate_for(id, isolated_us);
            return false;
        }
        let down_us = self.chaos_rng.random_range(1_000..=20_000);
        self.tracer.line(self.now, || {
            format!("FAULT quick restart of {id} in {down_us}us")
        });
        self.crash_for(id, down_us);
        true
    }

    pub(super) fn inject(&mut self, index: usize) {
        if self.phase != Phase::Chaos {
            return;
        }
        let action = self.scenario.fault_events[index].action.clone();
        if action
            .node_ids()
            .iter()
            .any(|&id| id > self.nodes.len() as u64)
        {
            // Beyond the ids this world holds (an edited scenario): nothing to strike.
            return;
        }
        self.tracer.digest(&[self.now.0, 5, index as u64]);
        self.tracer.line(self.now, || format!("FAULT {action:?}"));
        self.tracer.fault(self.now, &format!("{:?}", action.kind()));
        match action {
            FaultAction::Crash { node, down_us } => {
                if let Some(node) = self.resolve(node) {
                    self.crash_for(node, down_us);
                }
            }
            FaultAction::TornWriteCrash {
                node,
                ops_before_failure,
                down_us,
            } => {
                let node = self.node_mut(NodeId(node));
                if let Some(store) = node.store.as_mut() {
                    store
                        .disk_mut()
                        .set_fail_after_ops(Some(ops_before_failure));
                    node.torn_write_down_us = Some(down_us);
                }
            }
            FaultAction::RecoveryCrash {
                node,
                ops_before_failure,
                down_us,
            } => {
                let id = NodeId(node);
                if self.node(id).is_up() {
                    self.node_mut(id).recovery_crash_after_ops = Some(ops_before_failure);
                    self.crash_for(id, down_us);
                }
            }
            FaultAction::Corrupt {
                node,
                file_pick,
                offset_pick,
                mask,
                down_us,
            } => self.corrupt(NodeId(node), file_pick, offset_pick, mask, down_us),
            FaultAction::RotSnapshot { offset_pick, mask } => {
                self.rot_leader_snapshot(offset_pick, mask)
            }
            FaultAction::Partition {
                blocked,
                duration_us,
                ..
            } => {
                let Some(links) = self.resolve_links(&blocked) else {
                    return;
                };
                self.next_partition += 1;
                let id = self.next_partition;
                self.network.add_partition(id, links);
                self.push(
                    self.now.saturating_add_us(duration_us),
                    Event::HealPartition { id },
                );
            }
            FaultAction::Flap {
                blocked,
                period_us,
                count,
                ..
            } => {
                // The leader at the start of the flapping stays the flapping node.
                let Some(links) = self.resolve_links(&blocked) else {
                    return;
                };
                self.next_partition += 1;
                let id = self.next_partition;
                for k in 0..u64::from(count) {
                    let on = self.now.saturating_add_us(2 * k * period_us);
                    let links = links.clone();
                    self.push(on, Event::AddPartition { id, links });
                    self.push(on.saturating_add_us(period_us), Event::HealPartition { id });
                }
            }
            FaultAction::Pause { node, duration_us } => self.pause(NodeId(node), duration_us),
            FaultAction::LinkSplit {
                blocked,
                client_cut,
                duration_us,
                ..
            } => {
                let Some(links) = self.resolve_links(&blocked) else {
                    return;
                };
                let Some(cut) = client_cut
                    .iter()
                    .map(|&n| self.resolve(n))
                    .collect::<Option<Vec<NodeId>>>()
                else {
                    return;
                };
                // The leader cut from its peers (and still reachable by clients) runs on its
                // own clock: half the time that clock is also slow for the cut, so its
                // lease and check-quorum outlast its successor's election in true time,
                // the stale-read window of a leader that skips its quorum round.
                let stale_leader = blocked
                    .iter()
                    .any(|&(a, b)| a == LEADER || b == LEADER)
                    .then(|| self.resolve(LEADER))
                    .flatten();
                if let Some(leader) = stale_leader {
                    if self.skew_rng.random_bool(0.5) {
                        let rate_ppm = -self.skew_rng.random_range(300_000..=600_000);
                        self.slow_clock(leader, rate_ppm, duration_us);
                    }
                }
                self.next_partition += 1;
                let id = self.next_partition;
                self.network.add_partition(id, links);
                self.network.add_client_cut(id, cut);
                if let Some(leader) = stale_leader {
                    if !self.maybe_open_stale_window(leader, id) {
                        self.maybe_arm_snapshot_heal(leader, id);
                    }
                }
                self.push(
                    self.now.saturating_add_us(duration_us),
                    Event::HealPartition { id },
                );
            }
            FaultAction::PauseLeader { duration_us } => {
                if let Some(leader) = self.resolve(LEADER) {
                    self.tracer
                        .line(self.now, || format!("FAULT pause leader {leader}"));
                    self.pause(leader, duration_us);
                }
            }
            FaultAction::ClockRate {
                node,
                rate_ppm,
                duration_us,
            } => {
                let Some(id) = self.resolve(node) else {
                    return;
                };
                self.slow_clock(id, rate_ppm, duration_us);
            }
            FaultAction::ElectionBurst {
                duration_us,
                delay_us,
                crash,
                down_us,
            } => {
                let until = self.now.saturating_add_us(duration_us);
                self.burst = Some((until, delay_us, crash, down_us));
                if let Some(leader) = self.resolve(LEADER) {
                    self.maybe_strike_new_leader(leader);
                }
            }
            FaultAction::LeaderChurn {
                duration_us,
                reach_peers,
                cut_us_max,
                settle_us_max,
                down_us,
            } => {
                self.churn = Some(Churn {
                    until: self.now.saturating_add_us(duration_us),
                    reach_peers,
                    cut_us_max,
                    settle_us_max,
                    down_us,
                });
                // The churn starts with the leader in office.
                if let Some(leader) = self.resolve(LEADER) {
                    self.maybe_churn_new_leader(leader);
                }
            }
            FaultAction::PersistCrash {
                node,
                vote,
                lose_messages,
                window_us,
                down_us,
            } => {
                let until = self.now.saturating_add_us(window_us);
                self.node_mut(NodeId(node)).persist_crash =
                    Some((vote, lose_messages, until, down_us));
            }
            FaultAction::DiskOpCrash {
                node,
                op,
                nth,
                down_us,
            } => {
                let Some(id) = self.resolve(node) else {
                    return;
                };
                let node = self.node_mut(id);
                if let Some(store) = node.store.as_mut() {
                    store.disk_mut().set_fail_at_kind(Some((op, nth)));
                    node.torn_write_down_us = Some(down_us);
                }
            }
            FaultAction::AddLearner { .. }
            | FaultAction::Promote { .. }
            | FaultAction::RemoveMember { .. }
            | FaultAction::TransferLeader { .. }
            | FaultAction::Replace { .. } => self.operator_enqueue(&action),
        }
    }

    /// Runs `id`'s clock at `rate_ppm` off true time for `duration_us`, then at its old
    /// rate again (local time stays monotonic).
    fn slow_clock(&mut self, id: NodeId, rate_ppm: i64, duration_us: u64) {
        let now = self.now;
        let sim_node = self.node_mut(id);
        let original = match sim_node.clock_fault {
            Some((_, original)) => original,
            None => sim_node.drift_ppm,
        };
        let until = now.saturating_add_us(duration_us);
        sim_node.clock_fault = Some((until, original));
        sim_node.set_drift(now, rate_ppm);
        // Timeouts stretch in true time: the re-election bound no longer applies.
        self.liveness.reelection.void();
        self.tracer.line(self.now, || {
            format!("FAULT clock of {id} runs at {rate_ppm} ppm")
        });
        self.schedule_timer(id);
        self.push(until, Event::RestoreClock { node: id });
    }

    pub(super) fn restore_clock(&mut self, id: NodeId) {
        let now = self.now;
        let node = self.node_mut(id);
        match node.clock_fault {
            Some((until, original)) if until <= now => {
                node.clock_fault = None;
                node.set_drift(now, original);
                self.liveness.reelection.void();
                self.tracer
                    .line(self.now, || format!("FAULT clock of {id} back to normal"));
                self.schedule_timer(id);
            }
            _ => {}
        }
    }

    /// During an election burst, schedules a strike on a node that just won; during a
    /// leader churn, cuts it off from all but a minority now and schedules its crash.
    pub(super) fn maybe_strike_new_leader(&mut self, id: NodeId) {
        self.maybe_churn_new_leader(id);
        let Some((until, delay_us, _, _)) = self.burst else {
            return;
        };
        if self.now >= until || self.phase != Phase::Chaos {
            return;
        }
        let incarnation = self.node(id).incarnation;
        self.push(
            self.now.saturating_add_us(delay_us),
            Event::StrikeLeader {
                node: id,
                incarnation,
            },
        );
    }

    pub(super) fn strike_leader(&mut self, id: NodeId, incarnation: u64) {
        let Some((_, _, crash, down_us)) = self.burst else {
            return;
        };
        let node = self.node(id);
        let leads = node
            .replica
            .as_ref()
            .is_some_and(|r| r.role() == Role::Leader);
        if node.incarnation != incarnation || !leads || self.phase != Phase::Chaos {
            return;
        }
        if crash {
            self.tracer
                .line(self.now, || format!("FAULT burst: crash new leader {id}"));
            self.crash_for(id, down_us);
        } else {
            self.tracer
                .line(self.now, || format!("FAULT burst: cut off new leader {id}"));
            self.isolate_for(id, down_us);
        }
    }

    fn maybe_churn_new_leader(&mut self, id: NodeId) {
        let Some(churn) = self.churn else {
            return;
        };
        if self.now >= churn.until || self.phase != Phase::Chaos {
            return;
        }
        // The peers it still reaches: `reach_peers` of the others, picked at random. The
        // cut is in force before anything this leader sent on winning is delivered (a
        // message is checked against partitions when it arrives).
        // Picked among the voters it knows of (the others stay cut off too).
        let voters: Vec<NodeId> = match self.node(id).replica.as_ref() {
            Some(replica) => replica.membership().voters().filter(|&v| v != id).collect(),
            None => return,
        };
        let mut reached = Vec::new();
        let mut candidates = voters;
        for _ in 0..churn.reach_peers.min(candidates.len() as u64) {
            let pick = self.chaos_rng.random_range(0..candidates.len());
            reached.push(candidates.swap_remove(pick));
        }
        let others: Vec<NodeId> = (1..=self.nodes.len() as u64)
            .map(NodeId)
            .filter(|other| *other != id && !reached.contains(other))
            .collect();
        if self.chaos_rng.random_bool(0.5) {
            // Or sooner: at its first commit, the moment Figure 8 is about.
            let commit = self.node(id).replica.as_ref().map(|r| r.commit_index());
            self.node_mut(id).churn_commit_watch = commit;
        }
        // Half the winners are cut off (their entries stay on a minority), the others
        // replicate freely until their crash (an older term's entries reach a majority).
        let cut_us = if self.chaos_rng.random_bool(0.5) {
            self.chaos_rng
                .random_range(1_000..=churn.cut_us_max.max(1_000))
        } else {
            0
        };
        let crash_after_us = if self.chaos_rng.random_bool(0.5) {
            self.chaos_rng.random_range(0..=cut_us)
        } else {
            cut_us + self.chaos_rng.random_range(0..=churn.settle_us_max)
        };
        self.tracer.line(self.now, || {
            format!(
                "FAULT churn: new leader {id} cut off from {others:?} for {cut_us}us, \
                 crash in {crash_after_us}us"
            )
        });
        if cut_us > 0 {
            self.cut_off_for(id, &others, cut_us);
        }
        let incarnation = self.node(id).incarnation;
        self.push(
            self.now.saturating_add_us(crash_after_us),
            Event::ChurnCrash {
                node: id,
                incarnation,
            },
        );
    }

    /// Whether a churned leader just made its first commit, and so crashed.
    pub(super) fn churn_crash_at_commit(&mut self, id: NodeId) -> bool {
        let node = self.node(id);
        let (Some(watch), Some(replica)) = (node.churn_commit_watch, node.replica.as_ref()) else {
            return false;
        };
        if replica.commit_index() <= watch || self.phase != Phase::Chaos {
            return false;
        }
        let Some(churn) = self.churn else {
            return false;
        };
        self.tracer.line(self.now, || {
            format!("FAULT churn: crash {id} at its first commit")
        });
        self.crash_for(id, churn.down_us);
        true
    }

    pub(super) fn churn_crash(&mut self, id: NodeId, incarnation: u64) {
        let Some(churn) = self.churn else {
            return;
        };
        if self.node(id).incarnation != incarnation || self.phase != Phase::Chaos {
            return;
        }
        self.tracer
            .line(self.now, || format!("FAULT churn: crash {id}"));
        self.crash_for(id, churn.down_us);
    }

    /// Cuts `id` off from `others`, both ways, for `duration_us`; it stays up.
    fn cut_off_for(&mut self, id: NodeId, others: &[NodeId], duration_us: u64) {
        self.next_partition += 1;
        let partition = self.next_partition;
        let links = others
            .iter()
            .flat_map(|&other| [(id, other), (other, id)])
            .collect();
        self.network.add_partition(partition, links);
        self.push(
            self.now.saturating_add_us(duration_us),
            Event::HealPartition { id: partition },
        );
    }

    /// Cuts `id` off from every other node, both ways, for `duration_us`; it stays up.
    fn isolate_for(&mut self, id: NodeId, duration_us: u64) {
        self.split_off(&[id], self.now.saturating_add_us(duration_us));
    }

    /// Cuts `side` off from every other node, both ways, until `until`.
    pub(super) fn split_off(&mut self, side: &[NodeId], until: Time) -> u64 {
        self.next_partition += 1;
        let partition = self.next_partition;
        let links = (1..=self.nodes.len() as u64)
            .map(NodeId)
            .filter(|n| !side.contains(n))
            .flat_map(|other| side.iter().flat_map(move |&s| [(s, other), (other, s)]))
            .collect();
        self.network.add_partition(partition, links);
        self.push(until, Event::HealPartition { id: partition });
        partition
    }

    /// Whether an armed persist crash is due after this drive (it sent a granted vote,
    /// or an append ack): if so, drops the acks when it is meant to lose them, disarms,
    /// and returns how long the node stays down.
    pub(super) fn persist_crash_due(
        &mut self,
        id: NodeId,
        outbox: &mut Vec<Envelope>,
    ) -> Option<u64> {
        let (vote, lose_messages, until, down_us) = self.node(id).persist_crash?;
        if self.now >= until || self.phase != Phase::Chaos {
            self.node_mut(id).persist_crash = None;
            return None;
        }
        let is_ack = |envelope: &Envelope| match &envelope.message {
            chat_core::Message::RequestVoteResponse { granted, .. } => vote && *granted,
            chat_core::Message::AppendEntriesResponse { success, .. } => !vote && *success,
            _ => false,
        };
        if !outbox.iter().any(is_ack) {
            return None;
        }
        self.node_mut(id).persist_crash = None;
        if lose_messages {
            outbox.retain(|e| !is_ack(e));
        }
        Some(down_us)
    }

    /// The node a fault names: itself, or for `LEADER` the current leader (if any).
    pub(super) fn resolve(&self, node: u64) -> Option<NodeId> {
        if node != LEADER {
            return Some(NodeId(node));
        }
        self.current_leader().map(|r| r.id())
    }

    pub(super) fn resolve_links(&self, blocked: &[(u64, u64)]) -> Option<Vec<(NodeId, NodeId)>> {
        let mut resolved = Vec::with_capacity(blocked.len());
        for &(a, b) in blocked {
            let (a, b) = (self.resolve(a)?, self.resolve(b)?);
            if a != b {
                resolved.push((a, b));
            }
        }
        Some(resolved)
    }

    pub(super) fn pause(&mut self, id: NodeId, duration_us: u64) {
        let until = self.now.saturating_add_us(duration_us);
        let node = self.node_mut(id);
        node.paused_until = node.paused_until.max(until);
    }

    pub(super) fn crash_for(&mut self, id: NodeId, down_us: u64) {
        if !self.node(id).is_up() {
            return;
        }
        self.crash(id);
        let incarnation = self.node(id).incarnation;
        self.push(
            self.now.saturating_add_us(down_us),
            Event::Restart {
                node: id,
                incarnation,
            },
        );
    }

    /// Whether damaging one more node could leave a configuration without a quorum. A
    /// minority of the voters may be damaged or gone at once: of the operator's model
    /// (the founding voters, unless `membership` changed them), of the configuration
    /// a removal in progress makes, and of the configuration in force at every running
    /// replica (the latest in its log, committed or not), each of which must keep a
    /// quorum: any of them may be the one that wins. Without the last (explore, search
    /// seed 0, `seeds/liveness-uncommitted-removal-damage.json`): a removal of n2 from
    /// {n1, n2, n3}, appended by a leader that crashed before committing it, left n3
    /// in {n1, n3}; n1's disk was then corrupted, n3 could campaign only with n1, and n2
    /// could not win n3's vote (its log was behind): no leader ever again, a cluster
    /// harmed beyond its fault budget, not a bug.
    fn damage_would_cost_a_quorum(&self) -> bool {
        let damaged = |voters: &[NodeId]| {
            self.nodes
                .iter()
                .filter(|n| voters.contains(&n.id))
                .filter(|n| n.corrupted || n.failed.is_some() || n.retired)
                .count()
        };
        let model: Vec<NodeId> = self.operator.model.voters().collect();
        let in_force = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .map(|r| r.membership().voters().collect::<Vec<NodeId>>());
        [model, self.voters_at_risk()]
            .into_iter()
            .chain(in_force)
            .any(|voters| damaged(&voters) >= voters.len().saturating_sub(1) / 2)
    }

    /// Flips a byte of the state in the current leader's committed snapshot file while
    /// it runs, and has the leader read the file anew (as the node's open descriptor
    /// would see the damage): the leader streams the damaged bytes to any follower that
    /// needs a snapshot, which must refuse them by the checksum. The node counts as
    /// damaged until a newer snapshot replaces the file (`clear_rotted_snapshot`): a
    /// restart before then must refuse the file.
    pub(super) fn rot_leader_snapshot(&mut self, offset_pick: u64, mask: u8) {
        let Some(id) = self.current_leader().map(|r| r.id()) else {
            return;
        };
        let node = self.node(id);
        if self.damage_would_cost_a_quorum() || node.corrupted || node.retired || !node.is_up() {
            return;
        }
        let Some(store) = self.node_mut(id).store.as_mut() else {
            return;
        };
        let Ok(Some(source)) = store.snapshot_source() else {
            return;
        };
        if source.len_bytes == 0 {
            return;
        }
        let Ok(file_len) = store.disk().len(SNAPSHOT_FILE) else {
            return;
        };
        let offset = file_len - source.len_bytes + offset_pick % source.len_bytes;
        if store
            .disk_mut()
            .corrupt(SNAPSHOT_FILE, offset, mask)
            .is_err()
        {
            return;
        }
        let Ok(Some(rotted)) = store.snapshot_source() else {
            return;
        };
        let meta = rotted.meta.clone();
        let attached = self
            .node_mut(id)
            .replica
            .as_mut()
            .is_some_and(|replica| replica.attach_snapshot_source(rotted));
        self.tracer.line(self.now, || {
            format!(
                "{id} snapshot file rotted: byte {offset} ^= {mask:#04x} (through {}, read anew: {attached})",
                meta.last_index
            )
        });
        let node = self.node_mut(id);
        node.corrupted = true;
        node.corrupted_file = Some(SNAPSHOT_FILE.to_string());
        node.rotted_snapshot = Some(meta);
    }

    /// Crashes the node and damages a durable byte where recovery must notice it: the
    /// snapshot file or a log segment that is not the last (a damaged last record is
    /// indistinguishable from a torn write and is cut, by design).
    pub(super) fn corrupt(
        &mut self,
        id: NodeId,
        file_pick: u64,
        offset_pick: u64,
        mask: u8,
        down_us: u64,
    ) {
        let node = self.node(id);
        if self.damage_would_cost_a_quorum() || node.corrupted || node.retired {
            return;
        }
        self.crash_for(id, down_us);
        let Some(disk) = self.node_mut(id).disk.as_mut() else {
            return;
        };
        let files = disk.list().unwrap_or_default();
        let segments: Vec<&String> = files.iter().filter(|f| f.ends_with(".seg")).collect();
        let mut candidates: Vec<String> = segments
            .iter()
            .rev()
            .skip(1)
            .map(|f| f.to_string())
            .collect();
        if files.iter().any(|f| f == SNAPSHOT_FILE) {
            candidates.push(SNAPSHOT_FILE.to_string());
        }
        candidates.sort();
        if candidates.is_empty() {
            return;
        }
        let file = candidates[(file_pick % candidates.len() as u64) as usize].clone();
        let len = disk.len(&file).unwrap_or(0);
        if len == 0 {
            return;
        }
        let offset = offset_pick % len;
        if disk.corrupt(&file, offset, mask).is_ok() {
            self.tracer.line(self.now, || {
                format!("{id} disk corrupted: {file} byte {offset} ^= {mask:#04x}")
            });
            self.node_mut(id).corrupted = true;
            self.node_mut(id).corrupted_file = Some(file.clone());
        }
    }
}
