//! The discrete-event simulation of one scenario: an event queue ordered by (virtual
//! time, insertion sequence), the replicas with their disks and clocks, the network, the
//! clients, the fault schedule, and the checkers. One run is single-threaded and a pure
//! function of the scenario.

use crate::checker::{check_history, FinalState, SafetyChecker, Violation};
use crate::history::{History, OpKind};
use crate::network::Network;
use crate::node::SimNode;
use crate::rng::{derive_seed, stream, Stream};
use crate::scenario::{FaultAction, Scenario, LEADER};
use crate::trace::{digest_str, Tracer};
use crate::workload::{Client, InFlight, REQUEST_TIMEOUT_US};
use chat_core::app::{Delivery, Query, QueryOutput};
use chat_core::entry::Persist;
use chat_core::storage::{Disk, LogStore, MemDisk, StorageError, SNAPSHOT_FILE};
use chat_core::{
    drive, ClientError, ClientId, ClientRequest, Config, Envelope, NodeId, Recovered, Replica,
    Reply, RequestId, Response, Role, Shell, Time,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// After the faults stop, the cluster must recover and finish every request within this.
pub const LIVENESS_BOUND_US: u64 = 30_000_000;
const PROBE_INTERVAL_US: u64 = 100_000;
/// A run that takes more events than this is stuck in a loop.
const EVENTS_MAX: u64 = 20_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub violation: Violation,
    pub at: Time,
    pub event: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub events: u64,
    pub simulated_us: u64,
    pub messages_delivered: u64,
    pub crashes: u64,
    pub elections: u64,
    pub ops_completed: u64,
    pub ops_acknowledged: u64,
    pub snapshots_installed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    pub seed: u64,
    pub fingerprint: u64,
    pub failure: Option<Failure>,
    pub stats: RunStats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Chaos,
    Liveness,
    PowerLoss,
    Done,
}

enum Event {
    Message {
        envelope: Envelope,
        sent: Time,
    },
    Request {
        node: NodeId,
        request_id: RequestId,
        request: ClientRequest,
    },
    Reply {
        client: usize,
        request_id: RequestId,
        outcome: Result<Response, ClientError>,
    },
    Timer {
        node: NodeId,
        seq: u64,
    },
    ClientWake {
        client: usize,
        token: u64,
    },
    Fault {
        index: usize,
    },
    Restart {
        node: NodeId,
        incarnation: u64,
    },
    AddPartition {
        id: u64,
        links: Vec<(NodeId, NodeId)>,
    },
    HealPartition {
        id: u64,
    },
    EndChaos,
    Probe,
}

/// Deliberate damage, for tests of the end-of-run checkers: each makes a correct cluster
/// look broken so the checker must say so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// After the faults stop, every message is still dropped: liveness must fail.
    SilenceAfterChaos,
    /// The power loss also wipes every disk: the state after it must differ.
    WipeDisksOnPowerLoss,
}

pub struct World<'a> {
    sabotage: Option<Sabotage>,
    scenario: &'a Scenario,
    now: Time,
    queue: BTreeMap<(Time, u64), Event>,
    seq: u64,
    nodes: Vec<SimNode>,
    network: Network,
    disk_rng: ChaCha8Rng,
    chaos_rng: ChaCha8Rng,
    client_rng: ChaCha8Rng,
    clients: Vec<Client>,
    users: Vec<String>,
    requests: BTreeMap<RequestId, usize>,
    next_request: u64,
    next_partition: u64,
    history: History,
    safety: SafetyChecker,
    tracer: Tracer,
    phase: Phase,
    deadline: Time,
    chat_hash_before_power_loss: Option<u64>,
    stats: RunStats,
    failure: Option<Failure>,
}

/// Performs a replica's outputs: persistence into its store, the rest collected.
struct SimShell<'a> {
    store: &'a mut LogStore<MemDisk>,
    outbox: Vec<Envelope>,
    replies: Vec<Reply>,
    deliveries: u64,
}

impl Shell for SimShell<'_> {
    type Error = StorageError;
    fn persist(&mut self, persist: &Persist) -> Result<(), StorageError> {
        self.store.persist(persist)
    }
    fn send(&mut self, envelope: Envelope) {
        self.outbox.push(envelope);
    }
    fn reply(&mut self, reply: Reply) {
        self.replies.push(reply);
    }
    fn deliver(&mut self, _delivery: Delivery) {
        self.deliveries += 1;
    }
}

impl<'a> World<'a> {
    pub fn new(scenario: &'a Scenario, tracer: Tracer) -> World<'a> {
        let nodes = (1..=scenario.nodes)
            .map(|id| {
                SimNode::new(
                    NodeId(id),
                    scenario
                        .clock_drift_ppm
                        .get(id as usize - 1)
                        .copied()
                        .unwrap_or(0),
                )
            })
            .collect();
        let mut client_rng = stream(scenario.seed, Stream::Clients);
        let clients: Vec<Client> = scenario
            .clients
            .iter()
            .enumerate()
            .map(|(index, plan)| {
                let session = ClientId(uuid::Uuid::from_u128(client_rng.random()));
                let target = NodeId(client_rng.random_range(1..=scenario.nodes));
                Client::new(index, session, plan.ops.clone(), target)
            })
            .collect();
        let users = clients.iter().map(|c| c.user.clone()).collect();
        World {
            sabotage: None,
            scenario,
            now: Time(0),
            queue: BTreeMap::new(),
            seq: 0,
            nodes,
            network: Network::new(
                scenario.network.clone(),
                stream(scenario.seed, Stream::Network),
            ),
            disk_rng: stream(scenario.seed, Stream::Disk),
            chaos_rng: stream(scenario.seed, Stream::Chaos),
            client_rng,
            clients,
            users,
            requests: BTreeMap::new(),
            next_request: 0,
            next_partition: 0,
            history: History::default(),
            safety: SafetyChecker::default(),
            tracer,
            phase: Phase::Chaos,
            deadline: Time(scenario.chaos_duration_us),
            chat_hash_before_power_loss: None,
            stats: RunStats::default(),
            failure: None,
        }
    }

    /// Breaks the world on purpose (see [`Sabotage`]).
    pub fn sabotage(mut self, sabotage: Sabotage) -> World<'a> {
        self.sabotage = Some(sabotage);
        self
    }

    fn push(&mut self, at: Time, event: Event) -> u64 {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), event);
        self.seq
    }

    fn fail(&mut self, violation: Violation) {
        if self.failure.is_none() {
            self.tracer
                .line(self.now, || format!("VIOLATION {violation}"));
            self.failure = Some(Failure {
                violation,
                at: self.now,
                event: self.stats.events,
            });
        }
    }

    /// Runs the scenario to the end or to the first violation.
    pub fn run(mut self) -> RunOutcome {
        self.tracer
            .name_tracks(self.scenario.nodes, self.clients.len());
        for id in 1..=self.scenario.nodes {
            self.restart(NodeId(id));
        }
        for client in 0..self.clients.len() {
            let start = Time(self.client_rng.random_range(0..50_000));
            self.push(start, Event::ClientWake { client, token: 0 });
        }
        for (index, fault) in self.scenario.fault_events.iter().enumerate() {
            self.push(Time(fault.at_us), Event::Fault { index });
        }
        self.push(Time(self.scenario.chaos_duration_us), Event::EndChaos);
        while self.failure.is_none() && self.phase != Phase::Done {
            let Some(((at, _), event)) = self.queue.pop_first() else {
                self.fail(Violation {
                    check: "liveness",
                    detail: "the event queue ran dry".to_string(),
                });
                break;
            };
            self.now = at;
            self.stats.events += 1;
            if self.stats.events > EVENTS_MAX {
                self.fail(Violation {
                    check: "liveness",
                    detail: format!("more than {EVENTS_MAX} events"),
                });
                break;
            }
            self.handle(event);
        }
        for node in &self.nodes {
            if let Some(replica) = &node.replica {
                self.stats.snapshots_installed += replica.metrics().snapshots_installed;
            }
        }
        self.stats.simulated_us = self.now.0;
        let final_digest: Vec<u64> = self
            .nodes
            .iter()
            .flat_map(|n| {
                n.replica
                    .as_ref()
                    .map(|r| [r.last_applied().0, r.state_hash()])
                    .unwrap_or([0, 0])
            })
            .collect();
        self.tracer.digest(&final_digest);
        let fingerprint = match self.tracer.finish(self.now) {
            Ok(fingerprint) => fingerprint,
            Err(error) => {
                let violation = Violation {
                    check: "trace-io",
                    detail: error.to_string(),
                };
                self.failure.get_or_insert(Failure {
                    violation,
                    at: self.now,
                    event: self.stats.events,
                });
                0
            }
        };
        RunOutcome {
            seed: self.scenario.seed,
            fingerprint,
            failure: self.failure,
            stats: self.stats,
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Message { envelope, sent } => self.deliver_message(envelope, sent),
            Event::Request {
                node,
                request_id,
                request,
            } => self.deliver_request(node, request_id, request),
            Event::Reply {
                client,
                request_id,
                outcome,
            } => self.client_reply(client, request_id, outcome),
            Event::Timer { node, seq } => self.fire_timer(node, seq),
            Event::ClientWake { client, token } => self.client_wake(client, token),
            Event::Fault { index } => self.inject(index),
            Event::Restart { node, incarnation } => {
                if self.node(node).incarnation == incarnation && !self.node(node).is_up() {
                    self.restart(node);
                }
            }
            Event::AddPartition { id, links } => {
                self.tracer.digest(&[self.now.0, 7, id]);
                self.network.add_partition(id, links);
            }
            Event::HealPartition { id } => {
                self.tracer.digest(&[self.now.0, 8, id]);
                self.tracer
                    .line(self.now, || format!("FAULT heal partition #{id}"));
                self.network.remove_partition(id);
            }
            Event::EndChaos => self.end_chaos(),
            Event::Probe => self.probe(),
        }
    }

    fn node(&self, id: NodeId) -> &SimNode {
        &self.nodes[id.0 as usize - 1]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut SimNode {
        &mut self.nodes[id.0 as usize - 1]
    }

    /// Defers an event for a paused node until it resumes. Returns whether it did.
    fn defer_if_paused(&mut self, node: NodeId, event: impl FnOnce() -> Event) -> bool {
        let paused_until = self.node(node).paused_until;
        if self.now < paused_until {
            self.push(paused_until, event());
            return true;
        }
        false
    }

    fn deliver_message(&mut self, envelope: Envelope, sent: Time) {
        let (from, to) = (envelope.from, envelope.to);
        let silenced =
            self.sabotage == Some(Sabotage::SilenceAfterChaos) && self.phase != Phase::Chaos;
        if silenced || self.network.is_blocked(from, to) || !self.node(to).is_up() {
            return;
        }
        if self.defer_if_paused(to, || Event::Message {
            envelope: envelope.clone(),
            sent,
        }) {
            return;
        }
        self.stats.messages_delivered += 1;
        let kind = envelope.message.kind();
        self.tracer.digest(&[
            self.now.0,
            1,
            from.0,
            to.0,
            digest_str(kind),
            envelope.message.term().0,
        ]);
        if self.tracer.text_enabled() {
            let message = &envelope.message;
            self.tracer
                .line(self.now, || format!("{to} <- {from} {message}"));
        }
        if self.tracer.chrome_enabled() {
            let detail = envelope.message.to_string();
            self.tracer.message(sent, self.now, from, to, kind, &detail);
        }
        self.with_replica(to, |replica, now| replica.handle_message(now, envelope));
    }

    fn deliver_request(&mut self, node: NodeId, request_id: RequestId, request: ClientRequest) {
        if !self.node(node).is_up() {
            return;
        }
        if self.defer_if_paused(node, || Event::Request {
            node,
            request_id,
            request: request.clone(),
        }) {
            return;
        }
        self.tracer.digest(&[self.now.0, 2, node.0, request_id.0]);
        self.tracer.line(self.now, || {
            format!("{node} <- client request #{} {request:?}", request_id.0)
        });
        self.with_replica(node, |replica, now| {
            replica.handle_client_request(now, request_id, request)
        });
    }

    fn fire_timer(&mut self, id: NodeId, seq: u64) {
        let node = self.node(id);
        if node.timer.map(|(_, s)| s) != Some(seq) || !node.is_up() {
            return;
        }
        self.node_mut(id).timer = None;
        let paused_until = self.node(id).paused_until;
        if self.now < paused_until {
            return self.schedule_timer_at(id, paused_until);
        }
        self.tracer.digest(&[self.now.0, 4, id.0]);
        self.with_replica(id, |replica, now| replica.handle_timeout(now));
    }

    /// Feeds one input to a replica and performs its outputs.
    fn with_replica(&mut self, id: NodeId, input: impl FnOnce(&mut Replica, Time)) {
        let index = id.0 as usize - 1;
        let node = &mut self.nodes[index];
        let local_now = node.local_time(self.now);
        let (Some(replica), Some(store)) = (node.replica.as_mut(), node.store.as_mut()) else {
            return;
        };
        let before = (replica.role(), replica.voted_for(), replica.commit_index());
        input(replica, local_now);
        // Protocol milestones (a vote given, leadership won, a commit) are where crashes
        // find bugs: the moments just before the news has spread.
        let after = (replica.role(), replica.voted_for(), replica.commit_index());
        node.at_milestone = before != after;
        let mut shell = SimShell {
            store,
            outbox: Vec::new(),
            replies: Vec::new(),
            deliveries: 0,
        };
        let result = drive(replica, &mut shell);
        let SimShell {
            outbox, replies, ..
        } = shell;
        for envelope in outbox {
            for delay_us in self.network.transit_delays_us() {
                let sent = self.now;
                self.push(
                    self.now.saturating_add_us(delay_us),
                    Event::Message {
                        envelope: envelope.clone(),
                        sent,
                    },
                );
            }
        }
        for reply in replies {
            if let Some(&client) = self.requests.get(&reply.request_id) {
                let at = self.now.saturating_add_us(self.network.latency_us());
                self.push(
                    at,
                    Event::Reply {
                        client,
                        request_id: reply.request_id,
                        outcome: reply.outcome,
                    },
                );
            }
        }
        if let Err(error) = result {
            // Fail-stop: a replica whose write did not become durable must not go on.
            self.tracer.line(self.now, || {
                format!("{id} disk write failed ({error}); crashing")
            });
            let down_us = self
                .node_mut(id)
                .torn_write_down_us
                .take()
                .unwrap_or(1_000_000);
            self.crash(id);
            let incarnation = self.node(id).incarnation;
            self.push(
                self.now.saturating_add_us(down_us),
                Event::Restart {
                    node: id,
                    incarnation,
                },
            );
            return;
        }
        self.after_input(id);
    }

    /// A crash at an arbitrary point of the protocol, with a quick return.
    fn maybe_quick_restart(&mut self, id: NodeId) -> bool {
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
            self.next_partition += 1;
            let partition = self.next_partition;
            let links = (1..=self.scenario.nodes)
                .map(NodeId)
                .filter(|&other| other != id)
                .flat_map(|other| [(id, other), (other, id)])
                .collect();
            self.network.add_partition(partition, links);
            self.push(
                self.now.saturating_add_us(isolated_us),
                Event::HealPartition { id: partition },
            );
            return false;
        }
        let down_us = self.chaos_rng.random_range(1_000..=20_000);
        self.tracer.line(self.now, || {
            format!("FAULT quick restart of {id} in {down_us}us")
        });
        self.crash_for(id, down_us);
        true
    }

    fn after_input(&mut self, id: NodeId) {
        let index = id.0 as usize - 1;
        let Some(replica) = self.nodes[index].replica.as_ref() else {
            return;
        };
        if let Err(violation) = self.safety.observe_replica(replica) {
            return self.fail(violation);
        }
        if self.maybe_quick_restart(id) {
            return;
        }
        let Some(replica) = self.nodes[index].replica.as_ref() else {
            return;
        };
        let role = (replica.role(), replica.term());
        if self.nodes[index].last_role != Some(role) {
            self.nodes[index].last_role = Some(role);
            if role.0 == Role::Leader {
                self.stats.elections += 1;
            }
            self.tracer.line(self.now, || {
                format!("{id} is {:?} in term {}", role.0, role.1)
            });
            self.tracer
                .role(self.now, id, Some(format!("{:?} t{}", role.0, role.1)));
        }
        self.schedule_timer(id);
    }

    fn schedule_timer(&mut self, id: NodeId) {
        let node = self.node(id);
        let Some(replica) = node.replica.as_ref() else {
            return;
        };
        let at = node.virtual_time(replica.poll_timeout()).max(self.now);
        if node.timer.map(|(t, _)| t) == Some(at) {
            return;
        }
        self.schedule_timer_at(id, at);
    }

    fn schedule_timer_at(&mut self, id: NodeId, at: Time) {
        self.seq += 1;
        let seq = self.seq;
        self.queue.insert((at, seq), Event::Timer { node: id, seq });
        self.node_mut(id).timer = Some((at, seq));
    }

    fn crash(&mut self, id: NodeId) {
        self.stats.crashes += 1;
        self.tracer.digest(&[self.now.0, 6, id.0]);
        self.tracer.line(self.now, || format!("{id} crashes"));
        self.tracer.role(self.now, id, None);
        // What a crashed process had not yet handed to the wire dies with it: each of
        // its messages still in flight is lost with probability one half.
        let in_flight: Vec<(Time, u64)> = self
            .queue
            .iter()
            .filter(|(_, event)| matches!(event, Event::Message { envelope, .. } if envelope.from == id))
            .map(|(&key, _)| key)
            .collect();
        for key in in_flight {
            if self.chaos_rng.random_bool(0.5) {
                self.queue.remove(&key);
            }
        }
        let node = &mut self.nodes[id.0 as usize - 1];
        node.replica = None;
        node.timer = None;
        node.last_role = None;
        node.incarnation += 1;
        node.torn_write_down_us = None;
        if let Some(store) = node.store.take() {
            let mut disk = store.into_disk();
            let report = disk.crash(&mut self.disk_rng);
            self.tracer
                .line(self.now, || format!("{id} disk after crash: {report:?}"));
            node.disk = Some(disk);
        }
    }

    /// Starts a node from its disk, as the real node does; refuses on damage.
    fn restart(&mut self, id: NodeId) {
        let index = id.0 as usize - 1;
        if self.nodes[index].failed.is_some() {
            return;
        }
        let Some(mut disk) = self.nodes[index].disk.take() else {
            return;
        };
        if let Some(ops) = self.nodes[index].recovery_crash_after_ops.take() {
            // Crash in the middle of recovery: its repairs may be half-done.
            disk.set_fail_after_ops(Some(ops));
            let trial = LogStore::open(&mut disk).map(|_| ());
            disk.set_fail_after_ops(None);
            if let Err(StorageError::Disk(error)) = trial {
                disk.crash(&mut self.disk_rng);
                self.tracer.line(self.now, || {
                    format!("{id} crashes during recovery ({error})")
                });
                let node = &mut self.nodes[index];
                node.disk = Some(disk);
                node.incarnation += 1;
                let incarnation = node.incarnation;
                self.push(
                    self.now.saturating_add_us(100_000),
                    Event::Restart {
                        node: id,
                        incarnation,
                    },
                );
                return;
            }
        }
        let opened = LogStore::open(disk.clone());
        let (store, recovered) = match opened {
            Ok(opened) => opened,
            Err(error @ StorageError::Corrupt { .. }) if self.nodes[index].corrupted => {
                self.tracer
                    .line(self.now, || format!("{id} refuses to start: {error}"));
                self.nodes[index].failed = Some(error.to_string());
                self.nodes[index].disk = Some(disk);
                return;
            }
            Err(error) => {
                self.nodes[index].disk = Some(disk);
                return self.fail(Violation {
                    check: "recovery",
                    detail: format!("{id} cannot recover: {error}"),
                });
            }
        };
        if self.nodes[index].corrupted {
            return self.fail(Violation {
                check: "recovery",
                detail: format!(
                    "{id} recovered from a disk with injected corruption without noticing"
                ),
            });
        }
        self.start_replica(id, store, recovered);
    }

    fn start_replica(&mut self, id: NodeId, store: LogStore<MemDisk>, recovered: Recovered) {
        let index = id.0 as usize - 1;
        let members: Vec<NodeId> = (1..=self.scenario.nodes).map(NodeId).collect();
        let mut config = Config::new(id, members);
        let tuning = &self.scenario.tuning;
        config.election_timeout_us_min = tuning.election_timeout_us_min;
        config.heartbeat_interval_us = tuning.heartbeat_interval_us;
        config.append_entries_count_max = tuning.append_entries_count_max;
        config.in_flight_messages_max = tuning.in_flight_messages_max;
        config.snapshot_threshold_entries = tuning.snapshot_threshold_entries;
        config.snapshot_chunk_bytes = tuning.snapshot_chunk_bytes;
        let node = &mut self.nodes[index];
        config.rng_seed = derive_seed(
            self.scenario.seed,
            Stream::Replicas,
            id.0 * 1_000_003 + node.starts,
        );
        node.starts += 1;
        let local_now = node.local_time(self.now);
        let entries = recovered.entries.len();
        let term = recovered.hard_state.term;
        match Replica::new(config, recovered, local_now) {
            Ok(replica) => {
                node.replica = Some(replica);
                node.store = Some(store);
            }
            Err(error) => {
                node.disk = Some(store.into_disk());
                return self.fail(Violation {
                    check: "recovery",
                    detail: format!("{id} cannot start: {error}"),
                });
            }
        }
        self.safety.node_restarted(id);
        self.tracer
            .digest(&[self.now.0, 9, id.0, term.0, entries as u64]);
        self.tracer.line(self.now, || {
            format!("{id} starts (term {term}, {entries} log entries recovered)")
        });
        self.after_input(id);
    }

    fn inject(&mut self, index: usize) {
        if self.phase != Phase::Chaos {
            return;
        }
        let action = self.scenario.fault_events[index].action.clone();
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
        }
    }

    /// The node a fault names: itself, or for `LEADER` the current leader (if any).
    fn resolve(&self, node: u64) -> Option<NodeId> {
        if node != LEADER {
            return Some(NodeId(node));
        }
        self.nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    fn resolve_links(&self, blocked: &[(u64, u64)]) -> Option<Vec<(NodeId, NodeId)>> {
        let mut resolved = Vec::with_capacity(blocked.len());
        for &(a, b) in blocked {
            let (a, b) = (self.resolve(a)?, self.resolve(b)?);
            if a != b {
                resolved.push((a, b));
            }
        }
        Some(resolved)
    }

    fn pause(&mut self, id: NodeId, duration_us: u64) {
        let until = self.now.saturating_add_us(duration_us);
        let node = self.node_mut(id);
        node.paused_until = node.paused_until.max(until);
    }

    fn crash_for(&mut self, id: NodeId, down_us: u64) {
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

    /// Crashes the node and damages a durable byte where recovery must notice it: the
    /// snapshot file or a log segment that is not the last (a damaged last record is
    /// indistinguishable from a torn write and is cut, by design).
    fn corrupt(&mut self, id: NodeId, file_pick: u64, offset_pick: u64, mask: u8, down_us: u64) {
        let tolerance = self.scenario.fault_tolerance() as usize;
        let already_damaged = self
            .nodes
            .iter()
            .filter(|n| n.corrupted || n.failed.is_some())
            .count();
        if already_damaged >= tolerance || self.node(id).corrupted {
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
        }
    }

    // Clients.

    fn client_wake(&mut self, client: usize, token: u64) {
        if self.clients[client].wake_token != token {
            return;
        }
        if self.clients[client].current.is_some() {
            // The answer did not come in time: try another node.
            let target = NodeId(self.client_rng.random_range(1..=self.scenario.nodes));
            self.clients[client].target = target;
            self.resend(client);
            return;
        }
        self.start_next_op(client);
    }

    fn start_next_op(&mut self, client: usize) {
        if self.phase != Phase::Chaos || self.clients[client].stopped {
            return;
        }
        let users = self.users.clone();
        let c = &mut self.clients[client];
        let (request, kind) = if c.auth.is_none() {
            c.create_account()
        } else {
            loop {
                let Some(planned) = c.plan.get(c.next_op).cloned() else {
                    return;
                };
                c.next_op += 1;
                if let Some(found) = c.request_for(&planned.op, &users) {
                    break found;
                }
            }
        };
        let op = self.history.invoke(client, kind, self.now.0);
        let request_id = self.new_request_id(client);
        self.clients[client].current = Some(InFlight {
            history_op: op,
            request,
            request_id,
            started: self.now,
        });
        self.clients[client].retries = 0;
        self.send_request(client);
    }

    fn new_request_id(&mut self, client: usize) -> RequestId {
        self.next_request += 1;
        let request_id = RequestId(self.next_request);
        self.requests.insert(request_id, client);
        request_id
    }

    fn resend(&mut self, client: usize) {
        let request_id = self.new_request_id(client);
        let Some(current) = self.clients[client].current.as_mut() else {
            return;
        };
        self.requests.remove(&current.request_id);
        current.request_id = request_id;
        self.clients[client].retries += 1;
        self.send_request(client);
    }

    fn send_request(&mut self, client: usize) {
        let c = &mut self.clients[client];
        let Some(current) = c.current.as_ref() else {
            return;
        };
        let (node, request_id, request) = (c.target, current.request_id, current.request.clone());
        self.history.ops[current.history_op].attempts += 1;
        c.wake_token += 1;
        let token = c.wake_token;
        self.tracer.line(self.now, || {
            format!("c{client} -> {node} request #{}", request_id.0)
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
        self.push(
            self.now.saturating_add_us(REQUEST_TIMEOUT_US),
            Event::ClientWake { client, token },
        );
    }

    fn client_reply(
        &mut self,
        client: usize,
        request_id: RequestId,
        outcome: Result<Response, ClientError>,
    ) {
        let is_current = self.clients[client]
            .current
            .as_ref()
            .is_some_and(|c| c.request_id == request_id);
        self.requests.remove(&request_id);
        if !is_current {
            return;
        }
        self.tracer.digest(&[
            self.now.0,
            3,
            client as u64,
            request_id.0,
            u64::from(outcome.is_ok()),
        ]);
        self.tracer.line(self.now, || {
            format!("c{client} <- reply #{} {outcome:?}", request_id.0)
        });
        match &outcome {
            Err(ClientError::NotLeader { leader_hint }) => {
                let target = leader_hint.unwrap_or_else(|| {
                    NodeId(self.client_rng.random_range(1..=self.scenario.nodes))
                });
                self.clients[client].target = target;
                return self.retry_after_backoff(client);
            }
            Err(ClientError::Busy { .. }) => return self.retry_after_backoff(client),
            _ => {}
        }
        let Some(current) = self.clients[client].current.take() else {
            return;
        };
        self.finish_op(client, current, outcome);
    }

    fn retry_after_backoff(&mut self, client: usize) {
        let jitter = self.client_rng.random_range(0..1000);
        let backoff = self.clients[client].backoff_us(jitter);
        let c = &mut self.clients[client];
        c.retries += 1;
        c.wake_token += 1;
        let token = c.wake_token;
        // The wake-up finds the request still current and resends it.
        self.push(
            self.now.saturating_add_us(backoff),
            Event::ClientWake { client, token },
        );
    }

    fn finish_op(
        &mut self,
        client: usize,
        current: InFlight,
        outcome: Result<Response, ClientError>,
    ) {
        use chat_core::app::CommandOutput;
        self.stats.ops_completed += 1;
        if outcome.is_ok() {
            self.stats.ops_acknowledged += 1;
        }
        let c = &mut self.clients[client];
        match (&self.history.ops[current.history_op].kind, &outcome) {
            (
                OpKind::CreateAccount { .. },
                Ok(Response::Command(CommandOutput::AccountCreated { user, generation })),
            ) => {
                c.auth = Some(chat_core::app::Auth {
                    user: user.clone(),
                    generation: *generation,
                    token_epoch: 0,
                });
            }
            (OpKind::CreateAccount { .. }, _) => c.stopped = true,
            (OpKind::Read { .. }, Ok(Response::Command(CommandOutput::Messages(messages)))) => {
                c.read_ids.extend(messages.iter().map(|m| m.id));
            }
            (OpKind::Delete { ids, .. }, Ok(_)) => c.read_ids.retain(|id| !ids.contains(id)),
            _ => {}
        }
        if let Err(ClientError::SessionExpired) = outcome {
            // Sessions here are far below the table's bound and its expiry: an expired
            // session is a replica answering from state it should not trust.
            self.fail(Violation {
                check: "sessions",
                detail: format!("client c{client} was told its live session expired"),
            });
            let c = &mut self.clients[client];
            c.session = ClientId(uuid::Uuid::from_u128(self.client_rng.random()));
            c.seq = 0;
        }
        let name = format!("{:?}", self.history.ops[current.history_op].kind);
        let label = match &outcome {
            Ok(_) => "ok".to_string(),
            Err(error) => error.to_string(),
        };
        self.tracer
            .client_op(client, current.started, self.now, &name, &label);
        self.history
            .complete(current.history_op, outcome, self.now.0);
        let think_us = self.clients[client]
            .plan
            .get(self.clients[client].next_op)
            .map_or(0, |p| p.think_us);
        let c = &mut self.clients[client];
        c.wake_token += 1;
        let token = c.wake_token;
        self.push(
            self.now.saturating_add_us(think_us),
            Event::ClientWake { client, token },
        );
    }

    // Phases.

    fn end_chaos(&mut self) {
        self.tracer.line(self.now, || {
            "END OF CHAOS: faults stop, every node restarts, the network heals".to_string()
        });
        self.tracer.fault(self.now, "end of chaos");
        self.phase = Phase::Liveness;
        self.network.calm();
        for index in 0..self.nodes.len() {
            let id = NodeId(index as u64 + 1);
            let node = &mut self.nodes[index];
            node.paused_until = self.now;
            node.torn_write_down_us = None;
            node.recovery_crash_after_ops = None;
            if let Some(store) = node.store.as_mut() {
                store.disk_mut().set_fail_after_ops(None);
            }
            if !node.is_up() && node.failed.is_none() {
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
    fn unsettled(&self) -> Option<String> {
        if let Some(client) = self.clients.iter().find(|c| !c.is_idle()) {
            return Some(format!(
                "client c{} still has a request pending",
                client.index
            ));
        }
        let live: Vec<&Replica> = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .collect();
        if let Some(down) = self.nodes.iter().find(|n| !n.is_up() && n.failed.is_none()) {
            return Some(format!("{} is down", down.id));
        }
        let Some(leader) = live.iter().find(|r| r.role() == Role::Leader) else {
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
                return Some(format!(
                    "{} applied {} (state {:016x}) but leader {} committed {} (state {:016x})",
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

    fn probe(&mut self) {
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
    fn power_loss(&mut self) {
        let leader = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .find(|r| r.role() == Role::Leader);
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

    fn finish(&mut self) {
        self.phase = Phase::Done;
        let Some(leader) = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .find(|r| r.role() == Role::Leader)
        else {
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
        let state = final_state(leader, &self.clients);
        if let Err(violation) = check_history(&self.history, &state) {
            self.fail(violation);
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
