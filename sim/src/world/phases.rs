//! The end of a run: faults stop and everything restarts (liveness), then a
//! whole-cluster power loss, then the history check against the final state.

use super::*;
use crate::linearizability;

impl World<'_> {
    pub(super) fn end_chaos(&mut self) {
        self.tracer.line(self.now, || {
            "END OF CHAOS: faults stop, every node restarts, the network heals".to_string()
        });
        self.tracer.fault(self.now, "end of chaos");
        self.phase = Phase::Liveness;
        self.liveness.chaos_ended(self.now);
        self.network.calm();
        self.close_stale_window(None);
        self.disarm_snapshot_heal(None);
        for index in 0..self.nodes.len() {
            let id = NodeId(index as u64 + 1);
            let node = &mut self.nodes[index];
            node.paused_until = self.now;
            node.torn_write_down_us = None;
            node.recovery_crash_after_ops = None;
            if let Some(store) = node.store.as_mut() {
                store.disk_mut().set_fail_after_ops(None);
            }
            let never_started = node.starts == 0 && node.disk.is_none();
            if !node.is_up() && node.failed.is_none() && !node.retired && !never_started {
                node.incarnation += 1;
                let incarnation = node.incarnation;
                self.push(
                    self.now,
                    Event::Restart {
                        node: id,
                        incarnation,
                    },
                );
            }
        }
        self.deadline = self.now.saturating_add_us(LIVENESS_BOUND_US);
        self.push(self.now.saturating_add_us(PROBE_INTERVAL_US), Event::Probe);
    }

    /// What keeps the cluster from being settled, if anything.
    pub(super) fn unsettled(&self) -> Option<String> {
        if let Some(client) = self.clients.iter().find(|c| !c.is_idle()) {
            return Some(format!(
                "client c{} still has a request pending",
                client.index
            ));
        }
        if !self.operator.is_idle() {
            return Some("the operator is still at work".to_string());
        }
        // Members of the configuration the operator's changes made; removed nodes and
        // nodes that never joined do not count.
        let model = &self.operator.model;
        let members: Vec<&SimNode> = self.nodes.iter().filter(|n| model.contains(n.id)).collect();
        let live: Vec<&Replica> = members.iter().filter_map(|n| n.replica.as_ref()).collect();
        if let Some(down) = members
            .iter()
            .find(|n| !n.is_up() && n.failed.is_none() && !n.retired)
        {
            return Some(format!("{} is down", down.id));
        }
        let Some(leader) = self.current_leader() else {
            return Some("no leader".to_string());
        };
        if leader.term_at(leader.commit_index()) != Some(leader.term()) {
            // Until then the leader does not know what is committed.
            return Some(format!(
                "leader {} has not committed an entry of its term yet",
                leader.id()
            ));
        }
        for replica in &live {
            if replica.last_applied() != leader.commit_index()
                || replica.state_hash() != leader.state_hash()
            {
                // At the same index, unequal hashes mean diverged states or a hash that
                // drifted from its state: say which (linear, so only in that case).
                let same_index = replica.last_applied() == leader.commit_index();
                let drift = [replica, leader]
                    .iter()
                    .filter(|_| same_index)
                    .find_map(|r| {
                        r.check_state_hash()
                            .err()
                            .map(|e| format!("; {}: {e}", r.id()))
                    })
                    .unwrap_or_default();
                return Some(format!(
                    "{} applied {} (state {:016x}) but leader {} committed {} (state {:016x}){drift}",
                    replica.id(),
                    replica.last_applied(),
                    replica.state_hash(),
                    leader.id(),
                    leader.commit_index(),
                    leader.state_hash()
                ));
            }
        }
        None
    }

    pub(super) fn probe(&mut self) {
        match self.unsettled() {
            Some(reason) if self.now >= self.deadline => {
                let phase = self.phase;
                self.fail(Violation {
                    check: "liveness",
                    detail: format!(
                        "not settled {}s after faults stopped ({phase:?}): {reason}",
                        LIVENESS_BOUND_US / 1_000_000
                    ),
                });
            }
            Some(_) => {
                self.push(self.now.saturating_add_us(PROBE_INTERVAL_US), Event::Probe);
            }
            None if self.phase == Phase::Liveness => self.power_loss(),
            None => self.finish(),
        }
    }

    /// Every node loses power at once and restarts: nothing acknowledged may be lost.
    pub(super) fn power_loss(&mut self) {
        let leader = self.current_leader();
        self.chat_hash_before_power_loss = leader.map(|r| r.chat().state_hash());
        self.tracer.line(self.now, || {
            "POWER LOSS: every node crashes at once".to_string()
        });
        self.tracer.fault(self.now, "power loss");
        self.phase = Phase::PowerLoss;
        for index in 0..self.nodes.len() {
            let id = NodeId(index as u64 + 1);
            if self.nodes[index].is_up() {
                self.crash(id);
                if self.sabotage == Some(Sabotage::WipeDisksOnPowerLoss) {
                    self.nodes[index].disk = Some(MemDisk::new());
                    // Only the power-loss check is under test: forget the old terms and
                    // log, which the step checkers would rightly see reused.
                    self.safety = SafetyChecker::default();
                }
                let incarnation = self.nodes[index].incarnation;
                let at = self
                    .now
                    .saturating_add_us(self.client_rng.random_range(10_000..=500_000));
                self.push(
                    at,
                    Event::Restart {
                        node: id,
                        incarnation,
                    },
                );
            }
        }
        self.deadline = self.now.saturating_add_us(LIVENESS_BOUND_US);
        self.push(self.now.saturating_add_us(PROBE_INTERVAL_US), Event::Probe);
    }

    pub(super) fn finish(&mut self) {
        self.phase = Phase::Done;
        if let Some(membership) = self.current_leader().map(|r| r.membership().clone()) {
            self.reconcile_impatient(&membership);
        }
        if let Some(violation) = self.check_final_membership() {
            return self.fail(violation);
        }
        let Some(leader) = self.current_leader() else {
            return;
        };
        let chat_hash = leader.chat().state_hash();
        if let Some(before) = self.chat_hash_before_power_loss {
            if before != chat_hash {
                return self.fail(Violation {
                    check: "power-loss",
                    detail: format!("the chat state changed across a whole-cluster power loss ({before:016x} -> {chat_hash:016x})"),
                });
            }
        }
        let leader_id = leader.id();
        let state = final_state(leader, &self.clients);
        if let Err(violation) = check_history(&self.history, &state) {
            return self.fail(violation);
        }
        self.check_listeners(leader_id, &state);
        if self.failure.is_some() {
            return;
        }
        let report = linearizability::check(&self.history);
        self.stats.linearizability_steps = report.steps();
        self.stats.linearizability_unknown = report.unknown_count();
        if let Some((partition, window)) = report.failure() {
            self.fail(Violation {
                check: "linearizability",
                detail: format!(
                    "{partition} is not linearizable; shortest window ({} operations):\n{}",
                    window.ops.len(),
                    window.text
                ),
            });
        }
    }
}

/// Every client's inbox as the replica holds it, read through the same query API.
fn final_state(replica: &Replica, clients: &[Client]) -> FinalState {
    let mut state = FinalState::default();
    for client in clients {
        let Some(auth) = client.auth.clone() else {
            continue;
        };
        let mut after = chat_core::app::MessageId(0);
        let mut inbox = Vec::new();
        loop {
            let limit = chat_core::app::limits::READ_LIMIT_MAX;
            let query = Query::MessagesAfter {
                auth: auth.clone(),
                after,
                limit,
            };
            let Ok(QueryOutput::Messages(page)) = replica.chat().query(&query) else {
                break;
            };
            let Some(last) = page.last() else { break };
            after = last.id;
            let full = page.len() as u32 == limit;
            inbox.extend(page);
            if !full {
                break;
            }
        }
        state.inboxes.insert(client.user.clone(), inbox);
    }
    state
}

impl World<'_> {
    /// Every member ends with the same configuration in force, and it is the one the
    /// operator's successful changes made.
    fn check_final_membership(&self) -> Option<Violation> {
        let model = &self.operator.model;
        let problem = self
            .nodes
            .iter()
            .filter(|n| model.contains(n.id))
            .find_map(|n| {
                let replica = n.replica.as_ref()?;
                (replica.membership() != model).then(|| {
                    format!(
                        "{} ends with {:?}, but the operator's changes made {model:?}",
                        n.id,
                        replica.membership()
                    )
                })
            })?;
        Some(Violation {
            check: "membership",
            detail: problem,
        })
    }
}
