//! A scenario is everything a run does, made explicit: the network parameters, the fault
//! schedule and each client's planned operations. `Scenario::generate` derives one from a
//! seed (swarm testing: the seed also picks which fault kinds are on and how often);
//! shrinking edits the explicit lists; a scenario file under `seeds/` is one of these in
//! JSON.

use crate::faults::{FaultKind, FaultSet};
use crate::rng::{stream, Stream};
use rand::Rng;
use serde::{Deserialize, Serialize};

pub const CHAOS_DURATION_US_DEFAULT: u64 = 10_000_000;
pub const CLIENTS_DEFAULT: usize = 8;
pub const NODES_DEFAULT: u64 = 5;
/// Upper bound on node count: the fault budget and timeouts are tuned for small clusters.
pub const NODES_MAX: u64 = 9;
/// In a fault, the node that leads at the moment the fault strikes (or none if no node
/// leads then).
pub const LEADER: u64 = 0;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkParams {
    pub latency_us_min: u64,
    pub latency_us_max: u64,
    pub drop_per_mille: u32,
    pub duplicate_per_mille: u32,
    /// Messages that take a long detour (up to `delay_us_max`), overtaking others.
    pub delay_per_mille: u32,
    pub delay_us_max: u64,
}

impl NetworkParams {
    pub fn calm() -> NetworkParams {
        NetworkParams {
            latency_us_min: 200,
            latency_us_max: 2_000,
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            delay_per_mille: 0,
            delay_us_max: 0,
        }
    }
}

/// Replica settings the seed varies, so that runs also explore batching, pipelining and
/// timing corners (one entry per message, say) that default settings rarely reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaTuning {
    pub election_timeout_us_min: u64,
    /// Election timeouts are drawn from `[min, max]`. Absent in scenario files written
    /// before the maximum was explicit, which meant `2 * min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_timeout_us_max: Option<u64>,
    pub heartbeat_interval_us: u64,
    pub append_entries_count_max: usize,
    pub in_flight_messages_max: usize,
    pub snapshot_threshold_entries: u64,
    pub snapshot_chunk_bytes: usize,
    /// The session table's bound (core `Config::sessions_max`); absent: the core default.
    /// `client-abuse` seeds make it small so that a flood of sessions evicts cheaply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_max: Option<usize>,
}

impl ReplicaTuning {
    /// The upper end of the election timeout range, in microseconds.
    pub fn election_timeout_us_max(&self) -> u64 {
        self.election_timeout_us_max
            .unwrap_or(2 * self.election_timeout_us_min)
    }

    pub fn generate(rng: &mut impl Rng) -> ReplicaTuning {
        let election_timeout_us_min = [150_000, 300_000, 1_000_000][rng.random_range(0..3)];
        ReplicaTuning {
            election_timeout_us_min,
            election_timeout_us_max: Some(2 * election_timeout_us_min),
            heartbeat_interval_us: election_timeout_us_min / rng.random_range(3..=10),
            append_entries_count_max: [1, 2, 4, 64, 1024][rng.random_range(0..5)],
            in_flight_messages_max: rng.random_range(1..=8),
            snapshot_threshold_entries: [20, 100, 200, 4096][rng.random_range(0..4)],
            snapshot_chunk_bytes: [512, 4096, 65536][rng.random_range(0..3)],
            sessions_max: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    pub at_us: u64,
    pub action: FaultAction,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultAction {
    Crash {
        node: u64,
        down_us: u64,
    },
    /// The node's disk fails after `ops_before_failure` more operations; the node crashes
    /// at that write (fail-stop) with its unsynced writes lost, kept or torn.
    TornWriteCrash {
        node: u64,
        ops_before_failure: u64,
        down_us: u64,
    },
    /// Crash, then crash again during recovery after `ops_before_failure` disk operations.
    RecoveryCrash {
        node: u64,
        ops_before_failure: u64,
        down_us: u64,
    },
    /// Crash, flip a durable byte (file and offset picked from the numbers), restart.
    Corrupt {
        node: u64,
        file_pick: u64,
        offset_pick: u64,
        mask: u8,
        down_us: u64,
    },
    /// Messages from `a` to `b` are dropped for each pair, until the partition heals.
    Partition {
        label: String,
        blocked: Vec<(u64, u64)>,
        duration_us: u64,
    },
    /// A partition that comes and goes `count` times.
    Flap {
        label: String,
        blocked: Vec<(u64, u64)>,
        period_us: u64,
        count: u32,
    },
    Pause {
        node: u64,
        duration_us: u64,
    },
}

impl FaultAction {
    pub fn kind(&self) -> FaultKind {
        match self {
            FaultAction::Crash { .. } => FaultKind::Crash,
            FaultAction::TornWriteCrash { .. } => FaultKind::TornWrite,
            FaultAction::RecoveryCrash { .. } => FaultKind::RecoveryCrash,
            FaultAction::Corrupt { .. } => FaultKind::Corruption,
            FaultAction::Partition { .. } | FaultAction::Flap { .. } => FaultKind::Partition,
            FaultAction::Pause { .. } => FaultKind::Pause,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpPlan {
    /// Send to client `to`'s account a body of `body_bytes` (made unique by the client).
    Send { to: usize, body_bytes: usize },
    /// Read (and mark read) up to `limit` unread messages.
    Read { limit: u32 },
    /// Delete the messages this client has read and not yet deleted.
    DeleteRead,
    /// List accounts: linearizable, or stale from whichever node the client talks to.
    List { stale: bool },
    // Misbehaviour (`client-abuse`; see `workload.rs`).
    /// `op` in a brand-new session (sequence number 1), abandoned afterwards: many of
    /// these open more sessions than the table holds.
    FreshSession { op: Box<OpPlan> },
    /// `op` under client `victim`'s session, at its last sequence number (a retry of
    /// its last request) or the one after (`ahead`).
    ForeignSession {
        victim: usize,
        ahead: bool,
        op: Box<OpPlan>,
    },
    /// Send again, unchanged (same session, same sequence number), this client's request
    /// of `back` requests ago: a retry after a very long delay.
    Replay { back: usize },
    /// `op` with its sequence number moved by `delta` (ahead: a gap; back: an old number).
    SeqJump { delta: i64, op: Box<OpPlan> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedOp {
    pub think_us: u64,
    pub op: OpPlan,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientPlan {
    pub ops: Vec<PlannedOp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    pub seed: u64,
    pub nodes: u64,
    pub faults: FaultSet,
    pub chaos_duration_us: u64,
    pub network: NetworkParams,
    pub tuning: ReplicaTuning,
    /// Chance, per ten thousand inputs a node handles, that it crashes right after the
    /// input and comes back within milliseconds: crashes at every point of the protocol.
    pub quick_restart_per_10k: u32,
    /// Chance, in percent, of such a crash right after a vote, an election won or a commit.
    #[serde(default)]
    pub milestone_crash_percent: u32,
    /// Per node, how fast its clock runs, in parts per million off true time.
    pub clock_drift_ppm: Vec<i64>,
    pub fault_events: Vec<FaultEvent>,
    pub clients: Vec<ClientPlan>,
}

/// Options that shape a generated scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerateOptions {
    pub nodes: u64,
    pub faults: FaultSet,
    pub clients: usize,
    pub chaos_duration_us: u64,
}

impl Default for GenerateOptions {
    fn default() -> GenerateOptions {
        GenerateOptions {
            nodes: NODES_DEFAULT,
            faults: FaultSet::all(),
            clients: CLIENTS_DEFAULT,
            chaos_duration_us: CHAOS_DURATION_US_DEFAULT,
        }
    }
}

impl Scenario {
    pub fn generate(seed: u64, options: &GenerateOptions) -> Scenario {
        let mut rng = stream(seed, Stream::Faults);
        // Swarm testing: each allowed fault kind is on for this seed with probability
        // one half, so that some seeds stress one kind without the noise of the others.
        let enabled: FaultSet = FaultSet(
            options
                .faults
                .0
                .iter()
                .copied()
                .filter(|&kind| !FaultKind::OPT_IN.contains(&kind))
                .filter(|_| rng.random_bool(0.5))
                .collect(),
        );
        let on = |kind| enabled.contains(kind);
        let mut network = NetworkParams::calm();
        network.latency_us_max = [2_000, 10_000, 30_000][rng.random_range(0..3)];
        let tuning = ReplicaTuning::generate(&mut rng);
        let quick_restart_per_10k = if on(FaultKind::Crash) {
            rng.random_range(0..=100)
        } else {
            0
        };
        let milestone_crash_percent = if on(FaultKind::Crash) {
            [0, 5, 20, 50][rng.random_range(0..4)]
        } else {
            0
        };
        if on(FaultKind::Drop) {
            network.drop_per_mille = rng.random_range(1..=100);
        }
        if on(FaultKind::Duplicate) {
            network.duplicate_per_mille = rng.random_range(1..=50);
        }
        if on(FaultKind::Delay) {
            network.delay_per_mille = rng.random_range(1..=100);
            network.delay_us_max = rng.random_range(10_000..=400_000);
        }
        let nodes = options.nodes;
        let clock_drift_ppm = (0..nodes)
            .map(|_| {
                if on(FaultKind::ClockDrift) {
                    rng.random_range(-50_000..=50_000)
                } else {
                    0
                }
            })
            .collect();
        let fault_events =
            generate_fault_events(&mut rng, &enabled, nodes, options.chaos_duration_us);
        let mut workload = stream(seed, Stream::Workload);
        let mut clients: Vec<ClientPlan> = (0..options.clients)
            .map(|_| {
                generate_client_plan(&mut workload, options.clients, options.chaos_duration_us)
            })
            .collect();
        let mut tuning = tuning;
        let mut enabled = enabled;
        // Drawn from its own stream, after everything else: seeds without the kind are
        // exactly what they were before it existed.
        if options.faults.contains(FaultKind::ClientAbuse) {
            let mut abuse = stream(seed, Stream::Abuse);
            if abuse.random_bool(0.5) {
                enabled.0.insert(FaultKind::ClientAbuse);
                tuning.sessions_max = Some(abuse.random_range(8..=64));
                crate::workload::plan_abuse(&mut abuse, &mut clients, &tuning);
            }
        }
        Scenario {
            seed,
            nodes,
            faults: enabled,
            chaos_duration_us: options.chaos_duration_us,
            network,
            tuning,
            quick_restart_per_10k,
            milestone_crash_percent,
            clock_drift_ppm,
            fault_events,
            clients,
        }
    }

    /// The number of nodes that may fail at once while a quorum survives.
    pub fn fault_tolerance(&self) -> u64 {
        (self.nodes - 1) / 2
    }
}

fn generate_fault_events(
    rng: &mut impl Rng,
    enabled: &FaultSet,
    nodes: u64,
    duration_us: u64,
) -> Vec<FaultEvent> {
    let mut events = Vec::new();
    let at = |rng: &mut dyn rand::RngCore| rng.random_range(0..duration_us);
    let node = |rng: &mut dyn rand::RngCore| rng.random_range(1..=nodes);
    // Log-uniform from 1 ms to 3 s: quick restarts (within one election) matter as much
    // as long outages.
    let down_us = |rng: &mut dyn rand::RngCore| {
        let decade = [1_000u64, 10_000, 100_000, 1_000_000][rng.random_range(0..4)];
        rng.random_range(decade..=3 * decade)
    };
    // Node 0 stands for whichever node leads when the fault strikes: leader churn is
    // where consensus bugs hide.
    let node_or_leader = |rng: &mut dyn rand::RngCore| {
        if rng.random_bool(0.5) {
            LEADER
        } else {
            rng.random_range(1..=nodes)
        }
    };
    if enabled.contains(FaultKind::Crash) {
        for _ in 0..rng.random_range(1..=20) {
            let action = FaultAction::Crash {
                node: node_or_leader(rng),
                down_us: down_us(rng),
            };
            events.push(FaultEvent {
                at_us: at(rng),
                action,
            });
        }
    }
    if enabled.contains(FaultKind::TornWrite) {
        for _ in 0..rng.random_range(1..=4) {
            let action = FaultAction::TornWriteCrash {
                node: node(rng),
                ops_before_failure: rng.random_range(0..8),
                down_us: down_us(rng),
            };
            events.push(FaultEvent {
                at_us: at(rng),
                action,
            });
        }
    }
    if enabled.contains(FaultKind::RecoveryCrash) {
        for _ in 0..rng.random_range(1..=3) {
            let action = FaultAction::RecoveryCrash {
                node: node(rng),
                ops_before_failure: rng.random_range(0..4),
                down_us: down_us(rng),
            };
            events.push(FaultEvent {
                at_us: at(rng),
                action,
            });
        }
    }
    if enabled.contains(FaultKind::Corruption) {
        // A minority only, each node at most once: the cluster must survive it.
        let tolerance = (nodes - 1) / 2;
        let mut victims: Vec<u64> = (1..=nodes).collect();
        for _ in 0..rng.random_range(1..=tolerance.max(1)) {
            if victims.is_empty() || tolerance == 0 {
                break;
            }
            let victim = victims.remove(rng.random_range(0..victims.len()));
            let action = FaultAction::Corrupt {
                node: victim,
                file_pick: rng.random(),
                offset_pick: rng.random(),
                mask: rng.random_range(1..=255),
                down_us: down_us(rng),
            };
            events.push(FaultEvent {
                at_us: at(rng),
                action,
            });
        }
    }
    if enabled.contains(FaultKind::Partition) {
        for _ in 0..rng.random_range(1..=6) {
            let (label, blocked) = random_partition(rng, nodes);
            let action = if rng.random_bool(0.25) {
                FaultAction::Flap {
                    label,
                    blocked,
                    period_us: rng.random_range(20_000..=500_000),
                    count: rng.random_range(2..=10),
                }
            } else {
                FaultAction::Partition {
                    label,
                    blocked,
                    duration_us: rng.random_range(100_000..=4_000_000),
                }
            };
            events.push(FaultEvent {
                at_us: at(rng),
                action,
            });
        }
    }
    if enabled.contains(FaultKind::Pause) {
        for _ in 0..rng.random_range(1..=4) {
            let action = FaultAction::Pause {
                node: node(rng),
                duration_us: rng.random_range(10_000..=2_000_000),
            };
            events.push(FaultEvent {
                at_us: at(rng),
                action,
            });
        }
    }
    events.sort_by_key(|e| e.at_us);
    events
}

fn random_partition(rng: &mut impl Rng, nodes: u64) -> (String, Vec<(u64, u64)>) {
    let mut blocked = Vec::new();
    match rng.random_range(0..3) {
        0 => {
            // Two halves: a random subset against the rest.
            let side: Vec<u64> = (1..=nodes).filter(|_| rng.random_bool(0.5)).collect();
            for &a in &side {
                for b in (1..=nodes).filter(|b| !side.contains(b)) {
                    blocked.push((a, b));
                    blocked.push((b, a));
                }
            }
            (format!("halves {side:?}"), blocked)
        }
        1 => {
            let isolated = if rng.random_bool(0.5) {
                LEADER
            } else {
                rng.random_range(1..=nodes)
            };
            for other in (1..=nodes).filter(|&o| o != isolated) {
                blocked.push((isolated, other));
                blocked.push((other, isolated));
            }
            let label = match isolated {
                LEADER => "isolate the leader".to_string(),
                node => format!("isolate n{node}"),
            };
            (label, blocked)
        }
        _ => {
            // One-way: a node's outgoing (or incoming) links fail, the others work.
            let node = rng.random_range(1..=nodes);
            let outgoing = rng.random_bool(0.5);
            for other in (1..=nodes).filter(|&o| o != node) {
                blocked.push(if outgoing {
                    (node, other)
                } else {
                    (other, node)
                });
            }
            let direction = if outgoing { "outgoing" } else { "incoming" };
            (format!("one-way {direction} n{node}"), blocked)
        }
    }
}

fn generate_client_plan(rng: &mut impl Rng, clients: usize, duration_us: u64) -> ClientPlan {
    let mean_think_us = rng.random_range(20_000..=200_000u64);
    let mut ops = Vec::new();
    let mut planned_us = 0;
    while planned_us < duration_us {
        let think_us = rng.random_range(0..=2 * mean_think_us);
        planned_us += think_us + 5_000;
        let op = match rng.random_range(0..100) {
            0..=54 => OpPlan::Send {
                to: rng.random_range(0..clients),
                body_bytes: rng.random_range(1..=200),
            },
            55..=79 => OpPlan::Read {
                limit: rng.random_range(1..=20),
            },
            80..=87 => OpPlan::DeleteRead,
            _ => OpPlan::List {
                stale: rng.random_bool(0.3),
            },
        };
        ops.push(PlannedOp { think_us, op });
    }
    ClientPlan { ops }
}
