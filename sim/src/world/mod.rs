//! The discrete-event simulation of one scenario: an event queue ordered by (virtual
//! time, insertion sequence), the replicas with their disks and clocks, the network, the
//! clients, the fault schedule, and the checkers. One run is single-threaded and a pure
//! function of the scenario.

use crate::budget::{Budget, QUEUED_EVENTS_MAX};
use crate::checker::{check_history, FinalState, SafetyChecker, Violation};
use crate::coverage::{Coverage, Observer};
use crate::history::{History, OpKind};
use crate::network::Network;
use crate::node::SimNode;
use crate::rng::{derive_seed, stream, Stream};
use crate::scenario::{FaultAction, Scenario, LEADER, NODE_ID_MAX};
use crate::trace::{digest_str, Tracer};
use crate::workload::{Client, InFlight, REQUEST_TIMEOUT_US};
use chat_core::app::{Delivery, Query, QueryOutput};
use chat_core::entry::Persist;
use chat_core::machine::SnapshotImage;
use chat_core::storage::{Disk, LogStore, MemDisk, StorageError, SNAPSHOT_FILE};
use chat_core::{
    drive, ClientError, ClientRequest, Config, Envelope, NodeId, Recovered, Replica, Reply,
    RequestId, Response, Role, Shell, Time,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};

mod change_split;
mod clients;
mod faults;
mod listeners;
mod liveness;
mod nodes;
mod operator;
mod phases;
mod pre_vote;
mod reelection;
mod snapshot_heal;
mod stale_reads;

pub use reelection::{reelection_bound_us, REELECTION_ROUND_TRIPS, REELECTION_TIMEOUTS_X100};

pub use liveness::{
    leaderless_bound_bare_us, leaderless_bound_us, LEADERLESS_CALIBRATED_BARE_ANSWERS,
    LEADERLESS_ELECTION_TIMEOUTS, LEADERLESS_ROUND_TRIPS,
};

/// After the faults stop, the cluster must recover and finish every request within this.
pub const LIVENESS_BOUND_US: u64 = 30_000_000;
const PROBE_INTERVAL_US: u64 = 100_000;

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
    /// Messages the listeners received, live or by catching up.
    pub messages_listened: u64,
    pub snapshots_installed: u64,
    /// The most events that waited in the queue at once.
    pub queued_events_max: u64,
    /// The most events in one second of virtual time (a whole second, from a whole
    /// second): how dense the busiest second was.
    pub events_per_virtual_sec_max: u64,
    /// Log entries carried by the messages delivered: the work an event stands for.
    pub entries_delivered: u64,
    /// Steps the linearizability search took over every partition of the history.
    pub linearizability_steps: u64,
    /// History partitions whose linearizability search ran out of budget (undecided).
    pub linearizability_unknown: u64,
    /// The longest a healthy quorum went without a leader (see `world/liveness.rs`).
    pub leaderless_us_max: u64,
    /// The bound that interval was held to: more for a bare majority of many voters.
    pub leaderless_bound_us: u64,
    /// Clean leader losses that ended in an election (`world/reelection.rs`), and the
    /// most maximum election timeouts one took beyond what its bound allows for
    /// disturbed messages and round trips, in hundredths.
    pub reelections: u64,
    pub reelection_timeouts_x100_max: u64,
    /// Pre-vote answers the lease record judged (`world/pre_vote.rs`): grants expected
    /// outside any lease, and refusals expected in one.
    pub pre_vote_grants_judged: u64,
    pub pre_vote_refusals_judged: u64,
    /// From the end of chaos to the first commit of an entry appended after it; `None`
    /// if the cluster settled without committing anything new.
    pub first_commit_after_chaos_us: Option<u64>,
    /// Membership changes the operator saw applied, and refused (`membership`).
    pub membership_changes: u64,
    pub membership_refused: u64,
    /// Leadership transfers the operator started.
    pub leadership_transfers: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    pub seed: u64,
    pub fingerprint: u64,
    pub failure: Option<Failure>,
    pub stats: RunStats,
    /// The abstract states and transitions this run reached.
    pub coverage: Coverage,
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
    /// A clock-rate fault ends: the node's clock returns to its scenario drift.
    RestoreClock {
        node: NodeId,
    },
    /// A nemesis strikes a node that just won an election (see `ElectionBurst`).
    StrikeLeader {
        node: NodeId,
        incarnation: u64,
    },
    /// The leader-churn nemesis crashes a node that won an election (if it still runs
    /// the same incarnation).
    ChurnCrash {
        node: NodeId,
        incarnation: u64,
    },
    /// The snapshot a replica asked to save (`Ready::snapshot_to_save`) is encoded and
    /// written, as a node's background writer would: at some later time, unless the node
    /// crashed first (then the save is lost with it). The image is encoded only then, so
    /// every seed checks that the replica's own changes meanwhile left it untouched.
    SnapshotSaved {
        node: NodeId,
        incarnation: u64,
        image: Box<SnapshotImage>,
    },
    /// A user's second device, told of a new message, peeks at the inbox through the
    /// old leader of a stale-read window (see `world/stale_reads.rs`).
    SecondDevicePeek {
        user: usize,
    },
    /// The operator's next step, or a retry after a refusal (see `world/operator.rs`).
    OperatorWake {
        token: u64,
    },
    /// The operator's request went unanswered.
    OperatorTimeout {
        token: u64,
    },
}

/// Deliberate damage, for tests of the end-of-run checkers: each makes a correct cluster
/// look broken so the checker must say so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// After the faults stop, every message is still dropped: liveness must fail.
    SilenceAfterChaos,
    /// The power loss also wipes every disk: the state after it must differ.
    WipeDisksOnPowerLoss,
    /// Client requests are lost on arrival, while the cluster is healthy and led:
    /// liveness must fail (and `leaderless` must not).
    IgnoreClients,
    /// Every replica draws the minimum election timeout (no jitter), while the scenario
    /// (and so the `leaderless` bound) still says `[min, max]`.
    NoElectionJitter,
    /// Live deliveries of messages with an odd id are lost, as a node that drops some
    /// of its subscribers' messages would: the `delivery` check must fail.
    LoseSomeDeliveries,
    /// Every live delivery reaches the listeners twice: the `delivery` check must fail.
    RepeatDeliveries,
    /// The simulator's lease record (`world/pre_vote.rs`) believes every contact one
    /// minimum election timeout older than it is: a correct refusal within a lease looks
    /// like one outside any lease, and the `pre-vote` check must fail.
    AgeLeaseRecord,
}

pub struct World<'a> {
    sabotage: Option<Sabotage>,
    budget: Budget,
    scenario: &'a Scenario,
    now: Time,
    queue: BTreeMap<(Time, u64), Event>,
    seq: u64,
    nodes: Vec<SimNode>,
    network: Network,
    disk_rng: ChaCha8Rng,
    chaos_rng: ChaCha8Rng,
    /// Whether a leader cut off from its peers also gets a slow clock (see
    /// `FaultAction::LinkSplit` in `world/faults.rs`); its own stream, so that no other
    /// choice moves.
    skew_rng: ChaCha8Rng,
    /// Whether a leader cut off from its peers also opens a stale-read window (see
    /// `world/stale_reads.rs`); its own stream, so that no other choice moves.
    stale_rng: ChaCha8Rng,
    second_devices: stale_reads::SecondDevices,
    /// A leader cut heals at its successor's snapshot (see `world/snapshot_heal.rs`).
    snapshot_heal: Option<snapshot_heal::SnapshotHeal>,
    client_rng: ChaCha8Rng,
    clients: Vec<Client>,
    listeners: Vec<listeners::Listener>,
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
    /// The virtual second being counted for the event-density budget, and its events.
    density_window: (u64, u64),
    liveness: liveness::Liveness,
    failure: Option<Failure>,
    observer: Observer,
    /// An election burst is on until `.0`: (until, delay, crash rather than cut off,
    /// for how long).
    burst: Option<(Time, u64, bool, u64)>,
    /// A leader-churn window is on (see `FaultAction::LeaderChurn`).
    churn: Option<faults::Churn>,
    /// A change-window split is on (see `world/change_split.rs`).
    change_split: Option<change_split::ChangeSplit>,
    /// The node that won the latest election (the one a failover replaces).
    last_leader: Option<NodeId>,
    operator: operator::Operator,
    /// Each replica's leader lease as the simulator sees it (`world/pre_vote.rs`).
    lease_record: pre_vote::LeaseRecord,
}

/// Performs a replica's outputs: persistence into its store, the rest collected.
struct SimShell<'a> {
    store: &'a mut LogStore<MemDisk>,
    outbox: Vec<Envelope>,
    replies: Vec<Reply>,
    deliveries: Vec<Delivery>,
    snapshot_to_save: Option<SnapshotImage>,
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
    fn deliver(&mut self, delivery: Delivery) {
        self.deliveries.push(delivery);
    }
    fn save_snapshot(&mut self, image: SnapshotImage) {
        self.snapshot_to_save = Some(image);
    }
}

impl<'a> World<'a> {
    pub fn new(scenario: &'a Scenario, tracer: Tracer) -> World<'a> {
        let nodes = (1..=scenario.node_slots())
            .map(|id| {
                let mut node = SimNode::new(
                    NodeId(id),
                    scenario
                        .clock_drift_ppm
                        .get(id as usize - 1)
                        .copied()
                        .unwrap_or(0),
                );
                if id > scenario.nodes {
                    // Started by the operator, with an empty disk, if ever.
                    node.founding = false;
                    node.disk = None;
                }
                node
            })
            .collect();
        let mut client_rng = stream(scenario.seed, Stream::Clients);
        let clients: Vec<Client> = scenario
            .clients
            .iter()
            .enumerate()
            .map(|(index, plan)| {
                let registration: u128 = client_rng.random();
                let target = NodeId(client_rng.random_range(1..=scenario.nodes));
                Client::new(index, registration, plan.ops.clone(), target)
            })
            .collect();
        let users = clients.iter().map(|c| c.user.clone()).collect();
        World {
            sabotage: None,
            budget: Budget::default(),
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
            skew_rng: rand::SeedableRng::seed_from_u64(crate::rng::derive_seed(
                scenario.seed,
                Stream::Nemeses,
                1,
            )),
            stale_rng: rand::SeedableRng::seed_from_u64(crate::rng::derive_seed(
                scenario.seed,
                Stream::Nemeses,
                2,
            )),
            second_devices: stale_reads::SecondDevices::default(),
            snapshot_heal: None,
            client_rng,
            listeners: listeners::listening_clients(clients.len())
                .into_iter()
                .map(listeners::Listener::new)
                .collect(),
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
            density_window: (0, 0),
            liveness: liveness::Liveness::new(scenario),
            failure: None,
            observer: Observer::new(),
            burst: None,
            churn: None,
            change_split: None,
            last_leader: None,
            operator: operator::Operator::new(scenario),
            lease_record: pre_vote::LeaseRecord::default(),
        }
    }

    /// Breaks the world on purpose (see [`Sabotage`]).
    pub fn sabotage(mut self, sabotage: Sabotage) -> World<'a> {
        self.sabotage = Some(sabotage);
        self
    }

    /// Runs under `budget` instead of the default one.
    pub fn with_budget(mut self, budget: Budget) -> World<'a> {
        self.budget = budget;
        self
    }

    /// Keeps a readable form of every abstract state reached (for coverage reports).
    pub fn keep_coverage_examples(mut self) -> World<'a> {
        self.observer.keep_examples();
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
    pub fn run(self) -> RunOutcome {
        self.run_with_history().0
    }

    /// [`World::run`], also returning the client history (for `chatsim replay`).
    pub fn run_with_history(mut self) -> (RunOutcome, History) {
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
        let virtual_us_max = self.budget.virtual_us_max_for(self.scenario);
        while self.failure.is_none() && self.phase != Phase::Done {
            if let Some(violation) = self.over_budget(virtual_us_max) {
                self.fail(violation);
                break;
            }
            let Some(((at, _), event)) = self.queue.pop_first() else {
                self.fail(Violation {
                    check: "liveness",
                    detail: "the event queue ran dry".to_string(),
                });
                break;
            };
            self.now = at;
            self.stats.events += 1;
            self.count_density();
            // Client-side events change no replica, disk or link: nothing to observe.
            let observe = !matches!(event, Event::ClientWake { .. } | Event::Reply { .. });
            self.handle(event);
            if observe {
                self.observer.observe(&self.nodes, &self.network, self.now);
            }
            if self.phase != Phase::Done {
                self.observe_liveness();
            }
        }
        self.liveness.finish(self.now);
        self.stats.leaderless_us_max = self.liveness.leaderless_us_max;
        self.stats.leaderless_bound_us = self.liveness.leaderless_bound_us;
        self.stats.reelections = self.liveness.reelection.elections;
        self.stats.reelection_timeouts_x100_max = self.liveness.reelection.timeouts_x100_max;
        self.stats.first_commit_after_chaos_us = self.liveness.first_commit_after_chaos_us;
        for node in &self.nodes {
            if let Some(replica) = &node.replica {
                self.stats.snapshots_installed += replica.metrics().snapshots_installed;
            }
        }
        self.stats.simulated_us = self.now.0;
        self.check_state_hashes();
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
        let outcome = RunOutcome {
            seed: self.scenario.seed,
            fingerprint,
            failure: self.failure,
            stats: self.stats,
            coverage: self.observer.finish(),
        };
        (outcome, self.history)
    }

    /// Every live replica's incremental state hash equals a recomputation from scratch.
    /// Linear in each state, so once per run; replicas also sample it as they apply (in
    /// the `sim` profile, which keeps debug assertions).
    fn check_state_hashes(&mut self) {
        let problem = self.nodes.iter().find_map(|node| {
            let replica = node.replica.as_ref()?;
            let problem = replica.check_state_hash().err()?;
            Some(format!("{}: {problem}", node.id))
        });
        if let Some(detail) = problem {
            self.fail(Violation {
                check: "state-hash",
                detail,
            });
        }
    }

    /// Whether this seed has used up its budget: too many events, too much virtual time,
    /// or too many events queued at once. Checked before each event, so that a failing
    /// seed stops at the same event on every replay.
    fn count_density(&mut self) {
        let second = self.now.0 / 1_000_000;
        if self.density_window.0 != second {
            self.density_window = (second, 0);
        }
        self.density_window.1 += 1;
        self.stats.events_per_virtual_sec_max = self
            .stats
            .events_per_virtual_sec_max
            .max(self.density_window.1);
    }

    fn over_budget(&mut self, virtual_us_max: u64) -> Option<Violation> {
        let queued = self.queue.len();
        self.stats.queued_events_max = self.stats.queued_events_max.max(queued as u64);
        let detail = if self.stats.events >= self.budget.events_max {
            format!(
                "event budget of {} events used up in phase {:?} (flag --max-events)",
                self.budget.events_max, self.phase
            )
        } else if self
            .queue
            .first_key_value()
            .is_some_and(|((at, _), _)| at.0 > virtual_us_max)
        {
            format!(
                "virtual-time budget of {:.1}s used up in phase {:?} (flag --max-virtual-secs)",
                virtual_us_max as f64 / 1e6,
                self.phase
            )
        } else if self.stats.entries_delivered >= self.budget.entries_delivered_max {
            format!(
                "{} log entries delivered in messages (budget {}, flag --max-entries-delivered): a livelock resending the log in phase {:?}",
                self.stats.entries_delivered, self.budget.entries_delivered_max, self.phase
            )
        } else if self.density_window.1 >= self.budget.events_per_virtual_sec_max {
            format!(
                "{} events within virtual second {} (budget {} per virtual second, flag --max-events-per-virtual-sec): a livelock or message storm in phase {:?}",
                self.density_window.1, self.density_window.0, self.budget.events_per_virtual_sec_max, self.phase
            )
        } else if queued > QUEUED_EVENTS_MAX {
            format!(
                "{queued} events queued at once (bound {QUEUED_EVENTS_MAX}): a message storm in phase {:?}",
                self.phase
            )
        } else {
            return None;
        };
        Some(Violation {
            check: "budget",
            detail,
        })
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
            } if client == operator::OPERATOR => self.operator_reply(request_id, outcome),
            Event::Reply {
                client,
                request_id,
                outcome,
            } if client == stale_reads::SECOND_DEVICE => {
                self.second_device_reply(request_id, outcome)
            }
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
            Event::HealPartition { id } => self.heal_partition(id),
            Event::EndChaos => self.end_chaos(),
            Event::Probe => self.probe(),
            Event::RestoreClock { node } => self.restore_clock(node),
            Event::SecondDevicePeek { user } => self.second_device_peek(user),
            Event::StrikeLeader { node, incarnation } => self.strike_leader(node, incarnation),
            Event::ChurnCrash { node, incarnation } => self.churn_crash(node, incarnation),
            Event::SnapshotSaved {
                node,
                incarnation,
                image,
            } => self.snapshot_saved(node, incarnation, *image),
            Event::OperatorWake { token } => self.operator_wake(token),
            Event::OperatorTimeout { token } => self.operator_timeout(token),
        }
    }

    fn heal_partition(&mut self, id: u64) {
        self.tracer.digest(&[self.now.0, 8, id]);
        self.tracer
            .line(self.now, || format!("FAULT heal partition #{id}"));
        self.network.remove_partition(id);
        self.close_stale_window(Some(id));
        self.disarm_snapshot_heal(Some(id));
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
        if self.now.saturating_since_us(sent) > self.scenario.network.latency_us_max {
            // Delayed past the latency range: a late heartbeat renews a lease, a late
            // answer fails an election attempt (see `world/reelection.rs`).
            self.liveness.reelection.message_disturbed();
        }
        if let chat_core::Message::AppendEntries { entries, .. } = &envelope.message {
            self.stats.entries_delivered += entries.len() as u64;
        }
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
        self.expect_pre_vote_answer(&envelope);
        let local_now = self.node(to).local_time(self.now);
        let (term, leader_message) = (
            envelope.message.term(),
            matches!(
                envelope.message,
                chat_core::Message::AppendEntries { .. }
                    | chat_core::Message::Heartbeat { .. }
                    | chat_core::Message::InstallSnapshot { .. }
            ),
        );
        self.with_replica(to, |replica, now| replica.handle_message(now, envelope));
        self.record_leader_contact(from, to, term, leader_message, local_now);
    }

    fn deliver_request(&mut self, node: NodeId, request_id: RequestId, request: ClientRequest) {
        if self.sabotage == Some(Sabotage::IgnoreClients)
            || !self.node(node).is_up()
            || self.network.is_client_blocked(node)
        {
            return;
        }
        if self.network.is_client_refused(node)
            && !matches!(
                self.requests.get(&request_id),
                Some(&operator::OPERATOR | &stale_reads::SECOND_DEVICE)
            )
        {
            // Sent before the window opened: that connection broke with it.
            return;
        }
        if matches!(request, ClientRequest::ChangeMembership(_))
            && !self.requests.contains_key(&request_id)
        {
            // The operator gave up on this attempt (its deadline passed, as a gRPC
            // deadline would, and it asked again): a membership change must not run
            // late, after the operator concluded otherwise (seed 9115 at 5 members: a
            // removal queued at a paused leader ran after the node had been re-added).
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
        let promotion = self.promotion_watch(node, &request);
        self.with_replica(node, |replica, now| {
            replica.handle_client_request(now, request_id, request)
        });
        if let Some(watch) = promotion {
            self.check_promotion(node, watch);
        }
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
        let bytes_before = store.disk().stats().bytes_written;
        input(replica, local_now);
        // Protocol milestones (a vote given, leadership won, a commit) are where crashes
        // find bugs: the moments just before the news has spread.
        let after = (replica.role(), replica.voted_for(), replica.commit_index());
        node.at_milestone = before != after;
        if after.0 == Role::Leader && before.0 != Role::Leader {
            self.liveness.leader_elected(self.now);
        }
        let mut shell = SimShell {
            store: &mut *store,
            outbox: Vec::new(),
            replies: Vec::new(),
            deliveries: Vec::new(),
            snapshot_to_save: None,
        };
        let result = drive(replica, &mut shell);
        let SimShell {
            mut outbox,
            replies,
            deliveries,
            snapshot_to_save,
            ..
        } = shell;
        if result.is_ok() {
            attach_snapshot_file(replica, store);
            // A newer snapshot replaced a rotted file, durably: the damage is gone.
            if node.rotted_snapshot.is_some()
                && store.snapshot_meta() != node.rotted_snapshot.as_ref()
            {
                node.rotted_snapshot = None;
                node.corrupted = false;
                node.corrupted_file = None;
            }
        }
        if let Some(image) = snapshot_to_save {
            self.start_snapshot_save(id, image);
        }
        if !deliveries.is_empty() {
            let mut deliveries = deliveries;
            match self.sabotage {
                Some(Sabotage::LoseSomeDeliveries) => {
                    deliveries.retain(|d| d.message.id.0 % 2 == 0)
                }
                Some(Sabotage::RepeatDeliveries) => {
                    deliveries.extend(deliveries.clone());
                }
                _ => {}
            }
            self.deliver_to_listeners(id, &deliveries);
        }
        if let Some(cost) = self.scenario.disk_cost {
            // A slow disk: the node is busy (its inputs wait) while the bytes go down.
            if let Some(store) = self.nodes[index].store.as_ref() {
                let bytes = store.disk().stats().bytes_written - bytes_before;
                let busy_us = cost.busy_us(bytes);
                if busy_us >= 10_000 {
                    self.tracer.line(self.now, || {
                        format!("{id} disk busy {busy_us}us ({bytes} bytes)")
                    });
                }
                let node = &mut self.nodes[index];
                node.paused_until = node.paused_until.max(self.now.saturating_add_us(busy_us));
            }
        }
        let persist_crash = if result.is_ok() {
            self.persist_crash_due(id, &mut outbox)
        } else {
            None
        };
        for envelope in outbox {
            self.check_pre_vote_answer(&envelope);
            let delays_us = self.network.transit_delays_us();
            if delays_us.is_empty() && is_election_message(&envelope.message) {
                // A failed election attempt the re-election bound allows for.
                self.liveness.reelection.message_disturbed();
            }
            for delay_us in delays_us {
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
        let client_blocked = self.network.is_client_blocked(id);
        let client_refused = self.network.is_client_refused(id);
        for reply in replies {
            if client_blocked {
                continue;
            }
            if let Some(&client) = self.requests.get(&reply.request_id) {
                if client_refused
                    && client != operator::OPERATOR
                    && client != stale_reads::SECOND_DEVICE
                {
                    continue;
                }
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
            self.crash_for(id, down_us);
            return;
        }
        if let Some(down_us) = persist_crash {
            self.tracer
                .line(self.now, || format!("FAULT persist crash of {id}"));
            self.crash_for(id, down_us);
            return;
        }
        self.after_input(id);
    }

    fn after_input(&mut self, id: NodeId) {
        let index = id.0 as usize - 1;
        let Some(replica) = self.nodes[index].replica.as_ref() else {
            return;
        };
        self.liveness.observe_replica(replica, self.now);
        if let Err(violation) = self.safety.observe_replica(replica) {
            return self.fail(violation);
        }
        self.poll_listeners(id);
        if replica_is_removed(&self.nodes[index]) {
            // It applied its own removal or was told by a member: its shell stops.
            self.tracer
                .line(self.now, || format!("{id} knows it was removed: it stops"));
            return self.stop_for_good(id);
        }
        if self.maybe_quick_restart(id) || self.churn_crash_at_commit(id) {
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
                self.maybe_strike_new_leader(id);
                self.maybe_cross_to_old_side(id);
                let previous = self.last_leader.replace(id);
                self.maybe_hasty_change(id, previous);
            }
            self.tracer.line(self.now, || {
                format!("{id} is {:?} in term {}", role.0, role.1)
            });
            self.tracer
                .role(self.now, id, Some(format!("{:?} t{}", role.0, role.1)));
        }
        self.schedule_timer(id);
    }

    /// The leader a client would find: the member of the operator's model that leads in
    /// the highest term. A removed node that does not know it yet may still believe it
    /// leads an old term; it is no member.
    fn current_leader(&self) -> Option<&Replica> {
        self.nodes
            .iter()
            .filter(|n| self.operator.model.contains(n.id))
            .filter_map(|n| n.replica.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
    }

    fn schedule_timer(&mut self, id: NodeId) {
        let node = self.node(id);
        let Some(replica) = node.replica.as_ref() else {
            return;
        };
        let mut at = node.virtual_time(replica.poll_timeout()).max(self.now);
        if replica.apply_pending() {
            // The next step of a long apply: it takes a node real time, so messages and
            // faults can arrive between steps, as they do on a node.
            at = at.max(self.now.saturating_add_us(APPLY_STEP_US));
        }
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
}

/// Virtual time between two steps of a bounded apply (`apply_entries_per_step_max`):
/// about what a node takes for a step of a few dozen entries.
const APPLY_STEP_US: u64 = 200;

/// The messages of pre-vote and vote rounds, whose loss fails an election attempt.
fn is_election_message(message: &chat_core::Message) -> bool {
    matches!(
        message,
        chat_core::Message::PreVote { .. }
            | chat_core::Message::PreVoteResponse { .. }
            | chat_core::Message::RequestVote { .. }
            | chat_core::Message::RequestVoteResponse { .. }
    )
}

fn replica_is_removed(node: &SimNode) -> bool {
    node.replica.as_ref().is_some_and(|r| r.is_removed())
}

/// What the node does after each drive: a snapshot the replica holds in memory (installed
/// from the leader and now persisted; a recovered one is read from its file from the
/// start) is swapped for a reader of the file,
/// so every later transfer in the simulation streams from the simulated disk, checksum
/// and all.
fn attach_snapshot_file(replica: &mut Replica, store: &LogStore<MemDisk>) {
    if !replica.snapshot_in_memory() || store.snapshot_meta() != Some(replica.snapshot_meta()) {
        return;
    }
    // A file that cannot be opened leaves the bytes in memory, as the node does (it logs
    // a warning); the simulated disk fails writes, not reads.
    if let Ok(Some(source)) = store.snapshot_source() {
        let attached = replica.attach_snapshot_source(source);
        assert!(
            attached,
            "the snapshot file holds other bytes than the replica's snapshot"
        );
    }
}
