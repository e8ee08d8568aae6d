//! The operator (fault kind `membership`): carries out membership procedures one step at
//! a time, through the leader, like a careful human with `chatctl`. Each scheduled
//! `FaultAction` of the kind becomes a procedure (a list of steps); procedures run one
//! after the other. A change request is retried on `NotLeader` (following the hint),
//! `Busy`, `LeaderNotReady`, `ChangeInProgress` and `TransferInProgress`, and after a
//! timeout; a promotion that waits for catch-up and a removal refused as `BelowQuorum`
//! are retried a bounded number of times. Every outcome is recorded in the trace and
//! counted in `RunStats`.
//!
//! The operator keeps a model of the membership: the founding voters, changed by every
//! change it saw succeed. Only it changes the membership, one change at a time, so the
//! model is exact, with one subtlety: after an attempt whose answer was lost (or was
//! `NotLeader`, which a leader also answers when it loses its leadership after appending
//! the change, whose fate is then unknown), a retry
//! refused as already done (`AlreadyMember` for an add, `AlreadyVoter` for a promotion,
//! `IdRemoved` for a removal) means the lost attempt was applied. Check `membership`
//! compares every answer, and at the end every member's configuration, with the model.

use super::*;
use chat_core::membership::{Membership, MembershipChange, MembershipError};
use chat_core::LogIndex;
use rand::SeedableRng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The operator's index in `World::requests` (clients use their own indexes).
pub(super) const OPERATOR: usize = usize::MAX;
/// Refusals retried before the operator gives up: a promotion waiting for its learner
/// to catch up, or a removal waiting for enough voters to be reachable. At up to
/// `RETRY_US_MAX` apart, about 20 s: longer than any generated outage.
const REFUSALS_MAX: u32 = 80;
const RETRY_US_MIN: u64 = 50_000;
const RETRY_US_MAX: u64 = 250_000;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Start a new node with an empty disk (a joiner: no founding members).
    Start(NodeId),
    /// The node's disk is lost: it stops for good. Aborts the procedure if that could
    /// cost the cluster its quorum, or if the node is no member.
    Retire(NodeId),
    Change {
        change: MembershipChange,
        wait: bool,
    },
    /// Remove whichever node leads when the step runs.
    RemoveLeader,
    Transfer(Option<NodeId>),
}

#[derive(Clone, Debug)]
struct Attempt {
    change: MembershipChange,
    wait: bool,
    request_id: RequestId,
    /// An earlier attempt's answer was lost: it may have been applied.
    ambiguous: bool,
    refusals: u32,
}

pub(super) struct Operator {
    procedures: VecDeque<VecDeque<Step>>,
    current: VecDeque<Step>,
    attempt: Option<Attempt>,
    /// Whether a step is under way or a wake-up is scheduled.
    busy: bool,
    token: u64,
    target: NodeId,
    /// The membership as the operator's successful changes made it.
    pub(super) model: Membership,
    /// Impatient promotions sent outside the queue (by a second operator, say), by
    /// request, and the learners they promote whose fate is not known yet.
    /// Changes sent beside the queue, never retried (by an impatient or a second
    /// operator), by request.
    side_requests: BTreeMap<RequestId, MembershipChange>,
    pub(super) impatient_unknown: BTreeSet<NodeId>,
    /// Nodes whose removal has a fate not known yet: by the second operator, or given
    /// up by the first after a lost answer.
    removal_unknown: BTreeSet<NodeId>,
    /// Changes made beside the queue that the model took on while the current attempt
    /// was out: their entries may follow the attempt's, whose answer then shows the
    /// membership before them.
    side_applied: Vec<MembershipChange>,
    rng: ChaCha8Rng,
    /// The change-window nemesis's choices (`world/change_split.rs`).
    pub(super) split_rng: ChaCha8Rng,
}

impl Operator {
    pub(super) fn new(scenario: &Scenario) -> Operator {
        let founding: Vec<NodeId> = (1..=scenario.nodes).map(NodeId).collect();
        Operator {
            procedures: VecDeque::new(),
            current: VecDeque::new(),
            attempt: None,
            busy: false,
            token: 0,
            target: NodeId(1),
            model: Membership::founding(&founding),
            side_requests: BTreeMap::new(),
            impatient_unknown: BTreeSet::new(),
            side_applied: Vec::new(),
            removal_unknown: BTreeSet::new(),
            rng: ChaCha8Rng::seed_from_u64(derive_seed(scenario.seed, Stream::Membership, 2)),
            split_rng: ChaCha8Rng::seed_from_u64(derive_seed(scenario.seed, Stream::Membership, 3)),
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        !self.busy && self.procedures.is_empty() && self.current.is_empty()
    }
}

/// The address an added node is given: unique per id, as the core requires.
fn address_of(id: NodeId) -> String {
    format!("n{}.sim:7000", id.0)
}

/// Whether `error`, answering a retry of `change`, says the change is already in force.
fn already_done(change: &MembershipChange, error: &MembershipError) -> bool {
    matches!(
        (change, error),
        (MembershipChange::AddLearner { id, .. }, MembershipError::AlreadyMember(other))
        | (MembershipChange::Promote { id }, MembershipError::AlreadyVoter(other))
        | (MembershipChange::Remove { id }, MembershipError::IdRemoved(other))
        if id == other
    )
}

/// Whether `membership` has `change` in force.
fn in_force(change: &MembershipChange, membership: &Membership) -> bool {
    match change {
        MembershipChange::AddLearner { id, .. } => membership.contains(*id),
        MembershipChange::Promote { id } => membership.is_voter(*id),
        MembershipChange::Remove { id } => membership.is_removed(*id),
    }
}

impl World<'_> {
    /// A scheduled membership action becomes a procedure for the operator.
    pub(super) fn operator_enqueue(&mut self, action: &FaultAction) {
        let change = |change, wait| Step::Change { change, wait };
        let steps: Vec<Step> = match *action {
            FaultAction::AddLearner { node } => {
                let id = NodeId(node);
                let address = address_of(id);
                vec![
                    Step::Start(id),
                    change(MembershipChange::AddLearner { id, address }, false),
                ]
            }
            FaultAction::Promote { node, wait: false } => {
                return self.operator_impatient_promote(NodeId(node));
            }
            FaultAction::Promote { node, wait: true } => {
                vec![change(MembershipChange::Promote { id: NodeId(node) }, true)]
            }
            FaultAction::RemoveMember { node: LEADER } => vec![Step::RemoveLeader],
            FaultAction::RemoveMember { node } => {
                vec![change(MembershipChange::Remove { id: NodeId(node) }, false)]
            }
            FaultAction::TransferLeader { target } => {
                vec![Step::Transfer(target.filter(|&t| t != LEADER).map(NodeId))]
            }
            FaultAction::Replace { node, new_node } => {
                let (old, new) = (NodeId(node), NodeId(new_node));
                vec![
                    Step::Retire(old),
                    change(MembershipChange::Remove { id: old }, false),
                    Step::Start(new),
                    change(
                        MembershipChange::AddLearner {
                            id: new,
                            address: address_of(new),
                        },
                        false,
                    ),
                    change(MembershipChange::Promote { id: new }, true),
                ]
            }
            _ => return,
        };
        self.operator.procedures.push_back(steps.into());
        if !self.operator.busy {
            self.operator.busy = true;
            self.operator_wake_after(0);
        }
    }

    /// A node refused to start on its damaged disk: a new node with a new id replaces
    /// it, as an operator would after "wipe and rejoin".
    pub(super) fn operator_replace_refused(&mut self, old: NodeId) {
        let new = NodeId(self.nodes.len() as u64 + 1);
        if new.0 > NODE_ID_MAX || !self.operator.model.contains(old) {
            return;
        }
        self.nodes.push(SimNode::new(new, 0));
        self.nodes[new.0 as usize - 1].disk = None;
        self.tracer.line(self.now, || {
            format!("OPERATOR {old} refuses to start: replace it by {new}")
        });
        self.operator_enqueue(&FaultAction::Replace {
            node: old.0,
            new_node: new.0,
        });
    }

    fn operator_wake_after(&mut self, delay_us: u64) {
        self.operator.token += 1;
        let token = self.operator.token;
        self.push(
            self.now.saturating_add_us(delay_us),
            Event::OperatorWake { token },
        );
    }

    fn operator_retry_later(&mut self) {
        let delay_us = self.operator.rng.random_range(RETRY_US_MIN..=RETRY_US_MAX);
        self.operator_wake_after(delay_us);
    }

    pub(super) fn operator_wake(&mut self, token: u64) {
        if token != self.operator.token {
            return;
        }
        if self.operator.attempt.is_some() {
            return self.operator_send();
        }
        self.operator_next_step();
    }

    /// Runs steps until one waits for an answer or a retry, or none is left.
    fn operator_next_step(&mut self) {
        loop {
            if self.operator.current.is_empty() {
                match self.operator.procedures.pop_front() {
                    Some(steps) => self.operator.current = steps,
                    None => {
                        self.operator.busy = false;
                        return;
                    }
                }
            }
            let Some(step) = self.operator.current.pop_front() else {
                continue;
            };
            match step {
                Step::Start(id) => self.operator_start(id),
                Step::Retire(id) => self.operator_retire(id),
                Step::Change { change, wait } => {
                    if let Some(why) = self.change_pointless(&change) {
                        self.operator_record(&format!("{change:?}"), &format!("skipped: {why}"));
                        self.operator.current.clear();
                        continue;
                    }
                    self.operator.side_applied.clear();
                    self.operator.attempt = Some(Attempt {
                        change,
                        wait,
                        request_id: RequestId(0),
                        ambiguous: false,
                        refusals: 0,
                    });
                    return self.operator_send();
                }
                Step::RemoveLeader => {
                    let Some(leader) = self.resolve(LEADER) else {
                        self.operator_record("remove the leader", "skipped: no leader");
                        continue;
                    };
                    let change = MembershipChange::Remove { id: leader };
                    self.operator.current.push_front(Step::Change {
                        change,
                        wait: false,
                    });
                }
                Step::Transfer(target) => self.operator_transfer(target),
            }
        }
    }

    /// Why a change makes no sense to send (its node was never started, or cannot run):
    /// adding a node that will never run would leave a member down for good.
    fn change_pointless(&self, change: &MembershipChange) -> Option<&'static str> {
        let MembershipChange::AddLearner { id, .. } = change else {
            return None;
        };
        let node = self.nodes.get(id.0 as usize - 1)?;
        if node.retired {
            Some("the node is gone")
        } else if node.starts == 0 && node.disk.is_none() {
            Some("the node was never started")
        } else {
            None
        }
    }

    fn operator_start(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(id.0 as usize - 1) else {
            return;
        };
        if node.founding || node.starts > 0 || node.retired || node.disk.is_some() {
            // Already started once (a duplicated step): its disk is not empty any more.
            return;
        }
        node.disk = Some(MemDisk::new());
        self.tracer.line(self.now, || {
            format!("OPERATOR start {id} with an empty disk")
        });
        self.restart(id);
    }

    /// The node's disk is lost for good. Refused (and the procedure dropped) when the
    /// voters that are down for good would then be more than the model tolerates.
    fn operator_retire(&mut self, id: NodeId) {
        let model = &self.operator.model;
        let gone = |n: &SimNode| n.retired || n.failed.is_some() || n.corrupted;
        let loses_quorum = |voters: Vec<NodeId>| {
            let gone_after = voters
                .iter()
                .filter(|&&v| v == id || self.nodes.get(v.0 as usize - 1).is_some_and(gone))
                .count();
            gone_after > voters.len().saturating_sub(1) / 2
        };
        // The model's configuration, and every configuration a replica holds in its log
        // (a change the operator does not know of yet, such as the second operator's,
        // may still take force): the disk loss must leave each of them a quorum.
        let at_risk = loses_quorum(model.voters().collect())
            || self
                .nodes
                .iter()
                .filter_map(|n| n.replica.as_ref())
                .any(|r| loses_quorum(r.membership().voters().collect()));
        if !model.contains(id) || at_risk {
            self.operator_record(&format!("replace {id}"), "skipped: would cost the quorum");
            self.operator.current.clear();
            return;
        }
        self.tracer.line(self.now, || {
            format!("OPERATOR {id} loses its disk for good")
        });
        self.stop_for_good(id);
        self.nodes[id.0 as usize - 1].disk = None;
    }

    fn operator_transfer(&mut self, target: Option<NodeId>) {
        let Some(leader) = self.resolve(LEADER) else {
            self.operator_record("transfer leadership", "skipped: no leader");
            return;
        };
        let mut result = None;
        self.with_replica(leader, |replica, now| {
            result = Some(replica.transfer_leadership(now, target));
        });
        let outcome = match result {
            Some(Ok(chosen)) => {
                self.stats.leadership_transfers += 1;
                format!("ok: {leader} hands over to {chosen}")
            }
            Some(Err(error)) => format!("refused: {error}"),
            None => "the leader is gone".to_string(),
        };
        let target = target.map_or("the most caught-up voter".to_string(), |t| t.to_string());
        self.operator_record(&format!("transfer leadership to {target}"), &outcome);
    }

    /// A careful operator removes a voter only while every other voter is up, and only
    /// if the voters that are gone for good (disk lost, or refusing to start) stay a
    /// minority of the configuration after it: otherwise the removal can leave the
    /// cluster without a quorum for good (the leader's `BelowQuorum` rule sees only who
    /// it heard from lately, and a node that just crashed with a damaged disk looks
    /// alive to it for an election timeout).
    fn removal_unsafe(&self, change: &MembershipChange) -> Option<String> {
        let MembershipChange::Remove { id } = change else {
            return None;
        };
        let model = &self.operator.model;
        if !model.is_voter(*id) {
            return None;
        }
        let others: Vec<&SimNode> = model
            .voters()
            .filter(|v| v != id)
            .filter_map(|v| self.nodes.get(v.0 as usize - 1))
            .collect();
        let gone = others
            .iter()
            .filter(|n| n.retired || n.failed.is_some() || n.corrupted)
            .count();
        if gone > others.len().saturating_sub(1) / 2 {
            return Some(format!(
                "{gone} of the {} other voters are gone",
                others.len()
            ));
        }
        let down = others
            .iter()
            .filter(|n| !n.is_up() && !n.retired && n.failed.is_none())
            .count();
        (down > 0).then(|| format!("{down} other voters are down"))
    }

    fn operator_send(&mut self) {
        if let Some(attempt) = self.operator.attempt.as_ref() {
            if let Some(why) = self.removal_unsafe(&attempt.change) {
                let change = attempt.change.clone();
                if attempt.refusals >= REFUSALS_MAX {
                    self.abandon_attempt();
                    self.operator.current.clear();
                    self.operator_record(&format!("{change:?}"), &format!("skipped: {why}"));
                    return self.operator_wake_after(0);
                }
                self.count_refusal();
                return self.operator_retry_later();
            }
        }
        let request_id = self.new_request_id(OPERATOR);
        let Some(attempt) = self.operator.attempt.as_mut() else {
            return;
        };
        if attempt.request_id != RequestId(0) {
            self.requests.remove(&attempt.request_id);
        }
        attempt.request_id = request_id;
        let change = attempt.change.clone();
        let request = ClientRequest::ChangeMembership(change.clone());
        let node = self.operator.target;
        self.maybe_split_change_window(node, &change);
        self.tracer.line(self.now, || {
            format!("operator -> {node} request #{} {request:?}", request_id.0)
        });
        let at = self.now.saturating_add_us(self.network.latency_us());
        self.push(
            at,
            Event::Request {
                node,
                request_id,
                request,
            },
        );
        // Until an answer comes: a wake-up then means it timed out.
        self.operator.token += 1;
        let token = self.operator.token;
        self.push(
            self.now.saturating_add_us(REQUEST_TIMEOUT_US),
            Event::OperatorTimeout { token },
        );
    }

    /// No answer in time: the attempt may or may not have been applied; ask another node.
    pub(super) fn operator_timeout(&mut self, token: u64) {
        if token != self.operator.token {
            return;
        }
        let Some(attempt) = self.operator.attempt.as_mut() else {
            return;
        };
        attempt.ambiguous = true;
        self.operator.target = self.any_node();
        self.operator_send();
    }

    fn any_node(&mut self) -> NodeId {
        let members: Vec<NodeId> = self.operator.model.members().keys().copied().collect();
        members[self.operator.rng.random_range(0..members.len())]
    }

    /// A promotion sent at once, whatever the operator is doing, and never retried: a
    /// second operator, or an impatient one, in parallel with the first. The leader must
    /// refuse it cleanly while another change is in flight (`ChangeInProgress`) or while
    /// the learner lags (`LearnerLagging`); if it is applied, the model follows.
    fn operator_impatient_promote(&mut self, id: NodeId) {
        let Some(leader) = self.resolve(LEADER) else {
            return self.operator_record(&format!("impatient promote {id}"), "skipped: no leader");
        };
        self.side_request_at(leader, MembershipChange::Promote { id });
    }

    /// Right after a failover, half the time, the second operator changes the
    /// membership through the new leader at once: it promotes a learner, or removes the
    /// leader that just failed over (an automation replacing a dead node would), while
    /// the first may have a change in flight that the old leader appended and nobody
    /// committed: the interleaving of the 2015 single-server bug, which a new leader must
    /// refuse (`LeaderNotReady`) until an entry of its own term has committed.
    pub(super) fn maybe_hasty_change(&mut self, leader: NodeId, previous: Option<NodeId>) {
        if self.phase != Phase::Chaos
            || !self
                .scenario
                .faults
                .contains(crate::faults::FaultKind::Membership)
        {
            return;
        }
        // Another change than the first operator's in flight, if any.
        let in_flight = match self.operator.attempt.as_ref().map(|a| &a.change) {
            Some(MembershipChange::Promote { id }) => Some(*id),
            _ => None,
        };
        let learners: Vec<NodeId> = self
            .operator
            .model
            .members()
            .keys()
            .copied()
            .filter(|&id| !self.operator.model.is_voter(id) && Some(id) != in_flight)
            .filter(|id| !self.operator.impatient_unknown.contains(id))
            .collect();
        if !self.operator.rng.random_bool(0.5) {
            return;
        }
        let model = &self.operator.model;
        let removable = previous.filter(|&p| {
            p != leader
                && model.is_voter(p)
                && model.voters().count() > 2
                && !self.operator.removal_unknown.contains(&p)
        });
        let remove = match removable {
            Some(_) if learners.is_empty() => removable,
            Some(_) if self.operator.split_rng.random_bool(0.5) => removable,
            _ => None,
        };
        if let Some(id) = remove {
            return self.side_request_at(leader, MembershipChange::Remove { id });
        }
        if learners.is_empty() {
            return;
        }
        let id = learners[self.operator.rng.random_range(0..learners.len())];
        self.side_request_at(leader, MembershipChange::Promote { id });
    }

    /// Sends `change` (a promotion or a removal) to `leader` beside the queue, once.
    fn side_request_at(&mut self, leader: NodeId, change: MembershipChange) {
        let request_id = self.new_request_id(operator::OPERATOR);
        let who = match change {
            MembershipChange::Remove { id } => {
                self.operator.removal_unknown.insert(id);
                "second"
            }
            MembershipChange::Promote { id } | MembershipChange::AddLearner { id, .. } => {
                self.operator.impatient_unknown.insert(id);
                "impatient"
            }
        };
        let request = ClientRequest::ChangeMembership(change.clone());
        self.operator.side_requests.insert(request_id, change);
        self.tracer.line(self.now, || {
            format!(
                "{who} operator -> {leader} request #{} {request:?}",
                request_id.0
            )
        });
        let at = self.now.saturating_add_us(self.network.latency_us());
        self.push(
            at,
            Event::Request {
                node: leader,
                request_id,
                request,
            },
        );
    }

    /// The answer to a change sent beside the queue: the model follows what it shows.
    fn side_reply(&mut self, change: MembershipChange, outcome: Result<Response, ClientError>) {
        let (what, id) = match change {
            MembershipChange::Remove { id } => (format!("second operator removes {id}"), id),
            MembershipChange::Promote { id } | MembershipChange::AddLearner { id, .. } => {
                (format!("impatient promote {id}"), id)
            }
        };
        let forget = |operator: &mut Operator| match change {
            MembershipChange::Remove { .. } => operator.removal_unknown.remove(&id),
            _ => operator.impatient_unknown.remove(&id),
        };
        match outcome {
            Ok(Response::Membership(answered)) => {
                self.reconcile_impatient(&answered);
                self.operator_record(&what, "ok");
            }
            // Lost leadership after appending: the change may still commit.
            Err(ClientError::NotLeader { .. }) => {
                self.operator_record(&what, "unknown: not the leader")
            }
            Err(ClientError::Membership(error)) => {
                forget(&mut self.operator);
                // Refused as already done: an earlier one whose answer was lost took
                // effect (the first operator's own changes keep the model up to date, so
                // it was not one of them).
                let lost_applied = already_done(&change, &error)
                    .then(|| self.operator.model.apply(&change).ok())
                    .flatten();
                if let Some(next) = lost_applied {
                    self.operator.model = next;
                    self.operator.side_applied.push(change.clone());
                    self.stats.membership_changes += 1;
                    self.operator_record(&what, &format!("refused: {error} (a lost one applied)"));
                } else {
                    self.operator_record(&what, &format!("refused: {error}"));
                }
            }
            Err(error) => {
                forget(&mut self.operator);
                self.operator_record(&what, &format!("refused: {error}"));
            }
            Ok(other) => self.operator_record(&what, &format!("answered {other:?}")),
        }
    }

    /// A committed membership (an answer, or a member's at the end) tells the fate of
    /// impatient promotions: a learner it shows a voter was promoted by one.
    pub(super) fn reconcile_impatient(&mut self, committed: &Membership) {
        let promoted: Vec<NodeId> = self
            .operator
            .impatient_unknown
            .iter()
            .copied()
            .filter(|&id| committed.is_voter(id) && !self.operator.model.is_voter(id))
            .collect();
        for id in promoted {
            // Not yet a learner in the model (the add's answer is still to come): the
            // next committed membership seen settles it.
            if let Ok(next) = self.operator.model.apply(&MembershipChange::Promote { id }) {
                self.operator.impatient_unknown.remove(&id);
                self.operator.model = next;
                self.operator
                    .side_applied
                    .push(MembershipChange::Promote { id });
                self.stats.membership_changes += 1;
            }
        }
        // Likewise a removal by the second operator whose answer was lost.
        let removed: Vec<NodeId> = self
            .operator
            .removal_unknown
            .iter()
            .copied()
            .filter(|&id| committed.is_removed(id))
            .collect();
        for id in removed {
            self.operator.removal_unknown.remove(&id);
            if let Ok(next) = self.operator.model.apply(&MembershipChange::Remove { id }) {
                self.operator.model = next;
                self.operator
                    .side_applied
                    .push(MembershipChange::Remove { id });
                self.stats.membership_changes += 1;
            }
        }
    }

    pub(super) fn operator_reply(
        &mut self,
        request_id: RequestId,
        outcome: Result<Response, ClientError>,
    ) {
        self.requests.remove(&request_id);
        if let Some(change) = self.operator.side_requests.remove(&request_id) {
            return self.side_reply(change, outcome);
        }
        let Some(attempt) = self.operator.attempt.clone() else {
            return;
        };
        if attempt.request_id != request_id {
            return;
        }
        self.tracer
            .digest(&[self.now.0, 14, request_id.0, u64::from(outcome.is_ok())]);
        self.tracer.line(self.now, || {
            format!("operator <- reply #{} {outcome:?}", request_id.0)
        });
        let change = attempt.change.clone();
        let retry = match &outcome {
            Ok(Response::Membership(applied)) => {
                return self.operator_applied(&change, Some(applied));
            }
            Ok(other) => {
                return self.fail(Violation {
                    check: "membership",
                    detail: format!("{change:?} was answered {other:?}"),
                });
            }
            Err(ClientError::NotLeader { leader_hint }) => {
                // Also the answer of a leader that appended the change and then lost
                // its leadership: the change may still commit.
                if let Some(attempt) = self.operator.attempt.as_mut() {
                    attempt.ambiguous = true;
                }
                let hint = *leader_hint;
                self.operator.target = match hint {
                    Some(hint) => hint,
                    None => self.any_node(),
                };
                true
            }
            Err(ClientError::Busy { .. })
            | Err(ClientError::Membership(
                MembershipError::LeaderNotReady
                | MembershipError::ChangeInProgress { .. }
                | MembershipError::TransferInProgress(_),
            )) => true,
            // Already so before this attempt: a plain refusal, handled below.
            Err(ClientError::Membership(error))
                if attempt.ambiguous
                    && already_done(&change, error)
                    && self.operator.model.apply(&change).is_ok() =>
            {
                return self.operator_applied(&change, None);
            }
            Err(ClientError::Membership(MembershipError::LearnerLagging { .. }))
                if attempt.wait && attempt.refusals < REFUSALS_MAX =>
            {
                self.count_refusal();
                true
            }
            Err(ClientError::Membership(MembershipError::BelowQuorum { .. }))
                if attempt.refusals < REFUSALS_MAX =>
            {
                self.count_refusal();
                true
            }
            Err(_) => false,
        };
        if retry {
            return self.operator_retry_later();
        }
        let Err(error) = outcome else {
            return;
        };
        self.stats.membership_refused += 1;
        self.abandon_attempt();
        self.operator_record(&format!("{change:?}"), &format!("refused: {error}"));
        // What followed in the procedure depended on this step.
        self.operator.current.clear();
        self.operator_wake_after(0);
    }

    /// The voters a permanent fault must leave a majority of: the model's, without a
    /// voter the operator is removing right now (the configuration it makes may already
    /// be in force).
    pub(super) fn voters_at_risk(&self) -> Vec<NodeId> {
        let removing = match self.operator.attempt.as_ref().map(|a| &a.change) {
            Some(MembershipChange::Remove { id }) => Some(*id),
            _ => None,
        };
        self.operator
            .model
            .voters()
            .filter(|&v| Some(v) != removing)
            .collect()
    }

    fn count_refusal(&mut self) {
        if let Some(attempt) = self.operator.attempt.as_mut() {
            attempt.refusals += 1;
        }
    }

    /// Gives up the attempt under way. If an earlier attempt's answer was lost, the
    /// change may be in the log (appended by a leader that then lost office, committed
    /// by its successor): its fate is then learned from committed memberships, as that
    /// of the second operator's changes is (seed 4148: a removal given up as unsafe
    /// after a lost attempt had been committed, and the model kept the node).
    fn abandon_attempt(&mut self) {
        let Some(attempt) = self.operator.attempt.take() else {
            return;
        };
        if !attempt.ambiguous {
            return;
        }
        match attempt.change {
            MembershipChange::Remove { id } => {
                self.operator.removal_unknown.insert(id);
            }
            MembershipChange::Promote { id } => {
                self.operator.impatient_unknown.insert(id);
            }
            // Adds and transfers are not reconciled: no sweep has given one up after a
            // lost answer yet; `membership` would report it.
            _ => {}
        }
    }

    /// The change is in force: the model follows, and the answer must match it.
    fn operator_applied(&mut self, change: &MembershipChange, answered: Option<&Membership>) {
        self.operator.attempt = None;
        if let Some(answered) = answered {
            // What this change did is not an impatient promotion's doing.
            if let MembershipChange::Promote { id } = change {
                self.operator.impatient_unknown.remove(id);
            }
            self.reconcile_impatient(answered);
        }
        let expected = match self.operator.model.apply(change) {
            Ok(expected) => expected,
            // The second operator made the same change, and the model already follows
            // it (its answer, or a committed membership, came first).
            // (The answer shows the membership just after this change's entry, which may
            // precede a later change the model already follows.)
            Err(error)
                if already_done(change, &error) && answered.is_none_or(|a| in_force(change, a)) =>
            {
                self.operator_record(
                    &format!("{change:?}"),
                    "ok (also done by the second operator)",
                );
                return self.operator_wake_after(0);
            }
            Err(error) => {
                return self.fail(Violation {
                    check: "membership",
                    detail: format!(
                        "{change:?} succeeded although the operator's model refuses it: {error}"
                    ),
                })
            }
        };
        if let Some(answered) = answered {
            // The answer shows the membership right after this change's entry: a change
            // made beside the queue that it does not show yet came after it (explore,
            // with bug 17 planted: an add answered after the second operator's removal,
            // committed just after the add, had been answered and taken on).
            let then_later = self
                .operator
                .side_applied
                .iter()
                .filter(|c| !in_force(c, answered))
                .fold(answered.clone(), |m, c| m.apply(c).unwrap_or(m));
            if then_later != expected {
                return self.fail(Violation {
                    check: "membership",
                    detail: format!(
                        "{change:?} was answered with {answered:?}, expected {expected:?}"
                    ),
                });
            }
        }
        self.operator.model = expected;
        self.stats.membership_changes += 1;
        let how = if answered.is_some() {
            "ok"
        } else {
            "ok (a lost attempt applied)"
        };
        self.operator_record(&format!("{change:?}"), how);
        self.operator_wake_after(0);
    }

    fn operator_record(&mut self, what: &str, outcome: &str) {
        self.tracer
            .line(self.now, || format!("OPERATOR {what}: {outcome}"));
        self.tracer.fault(self.now, &format!("{what}: {outcome}"));
    }

    /// The node stops for good, as a removed node's shell does or a machine whose disk
    /// is gone: what it sent is already on the wire (a graceful exit, not a crash).
    pub(super) fn stop_for_good(&mut self, id: NodeId) {
        self.tracer.digest(&[self.now.0, 13, id.0]);
        self.tracer.role(self.now, id, None);
        let node = self.node_mut(id);
        node.retired = true;
        node.replica = None;
        node.timer = None;
        node.last_role = None;
        node.incarnation += 1;
        if let Some(store) = node.store.take() {
            node.disk = Some(store.into_disk());
        }
    }
}

/// What a leader saw when a promotion reached it: (learner, its actual last log index,
/// the leader's last log index).
pub(super) struct PromotionWatch {
    learner: NodeId,
    learner_last: LogIndex,
    leader_last: LogIndex,
}

impl World<'_> {
    /// Before a leader handles a promotion of an up learner: what the lag rule needs.
    pub(super) fn promotion_watch(
        &self,
        node: NodeId,
        request: &ClientRequest,
    ) -> Option<PromotionWatch> {
        let ClientRequest::ChangeMembership(MembershipChange::Promote { id }) = request else {
            return None;
        };
        let leader = self.node(node).replica.as_ref()?;
        let learner = self.nodes.get((id.0 as usize).checked_sub(1)?)?;
        let learner_replica = learner.replica.as_ref()?;
        let is_learner = leader.membership().contains(*id) && !leader.membership().is_voter(*id);
        // A learner that has heard from a newer leader may have lost entries the stale
        // leader saw it acknowledge; that leader's promotion cannot commit anyway.
        let newer_leader_seen = learner_replica.term() > leader.term();
        (leader.role() == Role::Leader && is_learner && !newer_leader_seen).then(|| {
            PromotionWatch {
                learner: *id,
                learner_last: learner_replica.last_log_index(),
                leader_last: leader.last_log_index(),
            }
        })
    }

    /// A leader that accepted a promotion must have had the learner within the bound:
    /// the learner's own log is at least what the leader knew it held.
    pub(super) fn check_promotion(&mut self, node: NodeId, watch: PromotionWatch) {
        let Some(leader) = self.node(node).replica.as_ref() else {
            return;
        };
        if !leader.membership().is_voter(watch.learner) {
            return;
        }
        let bound = self
            .scenario
            .tuning
            .promotion_lag_entries_max
            .unwrap_or(chat_core::Config::new(node, Vec::new()).promotion_lag_entries_max);
        let behind = watch.leader_last.0.saturating_sub(watch.learner_last.0);
        if behind > bound {
            self.fail(Violation {
                check: "membership",
                detail: format!(
                    "{node} promoted learner {} while it was {behind} entries behind (its log ends at {}, the leader's at {}; bound {bound})",
                    watch.learner, watch.learner_last, watch.leader_last
                ),
            });
        }
    }
}
