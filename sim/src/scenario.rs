//! A scenario is everything a run does, made explicit: the network parameters, the fault
//! schedule and each client's planned operations. `Scenario::generate` derives one from a
//! seed (swarm testing: the seed also picks which fault kinds are on and how often);
//! shrinking edits the explicit lists; a scenario file under `seeds/` is one of these in
//! JSON.

use crate::faults::{FaultKind, FaultSet};
use crate::rng::{stream, Stream};
use rand::{Rng, SeedableRng};
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
    /// Sessions of one user (core `Config::sessions_per_user_max`); absent: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_per_user_max: Option<usize>,
    /// Idle time after which a session expires; absent: the core default (an hour).
    /// `client-abuse` seeds make it seconds so that a full table drains within a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_expiry_us: Option<u64>,
    /// Log segment rollover size (`StoreConfig::segment_bytes_max`); absent: the
    /// production 64 MiB, which a simulated run never fills. Small segments make runs
    /// roll segments over and remove them when a snapshot compacts the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes_max: Option<u64>,
    /// How far behind the leader a learner may be and still be promoted (core
    /// `Config::promotion_lag_entries_max`); absent: the core default (1,024 entries,
    /// more than a run writes). `membership` seeds make it small so that a promotion
    /// right after an add is refused as lagging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_lag_entries_max: Option<u64>,
    /// Whether replicas pre-vote (core `Config::pre_vote`); absent: on, the production
    /// setting. A quarter of generated seeds turn it off, so that the election
    /// restriction and the leader lease are tested on their own, not only behind it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_vote: Option<bool>,
    /// Committed entries a replica applies per input (core
    /// `Config::apply_entries_per_step_max`); absent: the core default (1,024, more than
    /// a simulated commit ever carries). Half the generated seeds make it 1-64, so that
    /// applies spread over many steps, interleaved with messages, timeouts and crashes (each step costs 200 us of virtual
    /// time, `APPLY_STEP_US`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_entries_per_step_max: Option<u64>,
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
            sessions_per_user_max: None,
            session_expiry_us: None,
            segment_bytes_max: None,
            promotion_lag_entries_max: None,
            pre_vote: None,
            apply_entries_per_step_max: None,
        }
    }

    /// The store configuration these replicas write with.
    pub fn store_config(&self) -> chat_core::storage::StoreConfig {
        let mut config = chat_core::storage::StoreConfig::default();
        if let Some(bytes) = self.segment_bytes_max {
            config.segment_bytes_max = bytes;
        }
        // Recovery reads the snapshot file in pieces of the drawn chunk size (512 B to
        // 64 KiB), so that every snapshot crosses several reads, as a large one does on a
        // node.
        config.snapshot_read_bytes = self.snapshot_chunk_bytes;
        // As on a node: the state is decoded in the pass that checks the checksum.
        config.decode_snapshot_state = true;
        config
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
    /// Flip a byte of the state in the leader's committed snapshot file while it runs
    /// (latent corruption of a written file): the leader streams what the disk holds,
    /// so a follower that needs the snapshot must refuse it by its checksum, and the
    /// leader must take a fresh one. Counts as damage to that node, as `Corrupt` does.
    RotSnapshot {
        offset_pick: u64,
        mask: u8,
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
    /// Peer links blocked (as in `Partition`) and, at the same time, the links between
    /// every client and the nodes in `client_cut` (`LEADER` for the current leader).
    LinkSplit {
        label: String,
        blocked: Vec<(u64, u64)>,
        client_cut: Vec<u64>,
        duration_us: u64,
    },
    /// Pause whichever node leads (several election timeouts: it resumes believing it
    /// still leads while a successor has been elected).
    PauseLeader {
        duration_us: u64,
    },
    /// The node's clock runs at `rate_ppm` off true time for a while, then at its old
    /// rate again (local time stays monotonic).
    ClockRate {
        node: u64,
        rate_ppm: i64,
        duration_us: u64,
    },
    /// For `duration_us`, every node that wins an election is crashed (for `down_us`) or
    /// cut off from its peers (for `down_us`), `delay_us` after it wins.
    ElectionBurst {
        duration_us: u64,
        delay_us: u64,
        crash: bool,
        down_us: u64,
    },
    /// For `duration_us`, every node that wins an election keeps its links to only
    /// `reach_peers` other nodes (picked at random per win) for up to `cut_us_max`, and
    /// is crashed for `down_us`: half the time during the cut, otherwise up to
    /// `settle_us_max` after it heals (see `FaultKind::LeaderChurn`).
    LeaderChurn {
        duration_us: u64,
        reach_peers: u64,
        cut_us_max: u64,
        settle_us_max: u64,
        down_us: u64,
    },
    /// Armed on `node` for `window_us`: right after a drive that persisted a granted vote
    /// (`vote`) or an append ack (otherwise), the node crashes. With `lose_messages`, the
    /// acks of that drive never reach the wire; otherwise they leave before the crash.
    PersistCrash {
        node: u64,
        vote: bool,
        lose_messages: bool,
        window_us: u64,
        down_us: u64,
    },
    /// The node's disk fails (the node crashes, unsynced writes lost or torn) at the
    /// `nth` (0 = next) operation of the given kind after the fault strikes.
    DiskOpCrash {
        node: u64,
        op: chat_core::storage::DiskOpKind,
        nth: u64,
        down_us: u64,
    },
    // Membership (`membership`): an operator's procedures, carried out one after the
    // other through the leader like client requests (see `world/operator.rs`).
    /// Start node `node` (a new id) with an empty disk and add it as a learner.
    AddLearner {
        node: u64,
    },
    /// Promote learner `node`. With `wait`, a careful operator retries while the learner
    /// lags; without, one attempt, which a lagging learner must see refused.
    Promote {
        node: u64,
        wait: bool,
    },
    /// Remove member `node` (`LEADER`: whichever node leads when the step runs).
    RemoveMember {
        node: u64,
    },
    /// Move leadership to `target`, or (none) to the most caught-up voter.
    TransferLeader {
        target: Option<u64>,
    },
    /// `node` lost its disk: it stops for good, is removed, and `new_node` (a new id,
    /// empty disk) is added as a learner and promoted once caught up.
    Replace {
        node: u64,
        new_node: u64,
    },
}

impl FaultAction {
    pub fn kind(&self) -> FaultKind {
        match self {
            FaultAction::Crash { .. } => FaultKind::Crash,
            FaultAction::TornWriteCrash { .. } => FaultKind::TornWrite,
            FaultAction::RecoveryCrash { .. } => FaultKind::RecoveryCrash,
            FaultAction::Corrupt { .. } | FaultAction::RotSnapshot { .. } => FaultKind::Corruption,
            FaultAction::Partition { .. } | FaultAction::Flap { .. } => FaultKind::Partition,
            FaultAction::Pause { .. } => FaultKind::Pause,
            FaultAction::LinkSplit { .. } => FaultKind::LeaderIsolation,
            FaultAction::PauseLeader { .. } => FaultKind::LeaderPause,
            FaultAction::ClockRate { .. } => FaultKind::SlowClock,
            FaultAction::ElectionBurst { .. } => FaultKind::ElectionBurst,
            FaultAction::LeaderChurn { .. } => FaultKind::LeaderChurn,
            FaultAction::PersistCrash { .. } => FaultKind::PersistCrash,
            FaultAction::DiskOpCrash { .. } => FaultKind::DiskOpCrash,
            FaultAction::AddLearner { .. }
            | FaultAction::Promote { .. }
            | FaultAction::RemoveMember { .. }
            | FaultAction::TransferLeader { .. }
            | FaultAction::Replace { .. } => FaultKind::Membership,
        }
    }

    /// The node ids this action names (not `LEADER`), for sizing the world.
    pub fn node_ids(&self) -> Vec<u64> {
        let ids = match self {
            FaultAction::Crash { node, .. }
            | FaultAction::TornWriteCrash { node, .. }
            | FaultAction::RecoveryCrash { node, .. }
            | FaultAction::Corrupt { node, .. }
            | FaultAction::Pause { node, .. }
            | FaultAction::ClockRate { node, .. }
            | FaultAction::PersistCrash { node, .. }
            | FaultAction::DiskOpCrash { node, .. }
            | FaultAction::AddLearner { node }
            | FaultAction::Promote { node, .. }
            | FaultAction::RemoveMember { node } => vec![*node],
            FaultAction::Replace { node, new_node } => vec![*node, *new_node],
            FaultAction::TransferLeader { target } => target.iter().copied().collect(),
            FaultAction::Partition { blocked, .. }
            | FaultAction::Flap { blocked, .. }
            | FaultAction::LinkSplit { blocked, .. } => {
                blocked.iter().flat_map(|&(a, b)| [a, b]).collect()
            }
            FaultAction::PauseLeader { .. }
            | FaultAction::ElectionBurst { .. }
            | FaultAction::LeaderChurn { .. }
            | FaultAction::RotSnapshot { .. } => Vec::new(),
        };
        ids.into_iter().filter(|&id| id != LEADER).collect()
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
    /// A linearizable read of this client's inbox that marks nothing read.
    Peek,
    /// List accounts: linearizable, or stale from whichever node the client talks to.
    List { stale: bool },
    // Misbehaviour (`client-abuse`; see `workload.rs`).
    /// `op` in a session that was never opened (a made-up id, sequence number 1): must
    /// be refused, never applied.
    FreshSession { op: Box<OpPlan> },
    /// Open one more session and abandon it: many of these churn past the per-user
    /// bound (evicting the client's own sessions) and fill the table.
    OpenSession,
    /// `op` under this client's last acknowledged sequence number: a "retry" carrying
    /// another command, which must be refused.
    Mismatch { op: Box<OpPlan> },
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
    /// A disk whose operations take time (fault kind `large-state`): after each input,
    /// the node is busy for `base_us` plus `ns_per_byte` per byte written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_cost: Option<DiskCost>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCost {
    pub base_us: u64,
    pub ns_per_byte: u64,
}

impl DiskCost {
    /// How long a node is busy after an input whose drive wrote `bytes` (none: no cost).
    pub fn busy_us(&self, bytes: u64) -> u64 {
        if bytes == 0 {
            return 0;
        }
        self.base_us + bytes.saturating_mul(self.ns_per_byte) / 1_000
    }
}

/// Options that shape a generated scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Founding members; `None`: drawn per seed (half the seeds 5, the others 3, 4, 6
    /// or 7).
    pub nodes: Option<u64>,
    pub faults: FaultSet,
    pub clients: usize,
    pub chaos_duration_us: u64,
}

impl Default for GenerateOptions {
    fn default() -> GenerateOptions {
        GenerateOptions {
            nodes: None,
            faults: FaultSet::all(),
            clients: CLIENTS_DEFAULT,
            chaos_duration_us: CHAOS_DURATION_US_DEFAULT,
        }
    }
}

impl Scenario {
    pub fn generate(seed: u64, options: &GenerateOptions) -> Scenario {
        let mut rng = stream(seed, Stream::Faults);
        let mut nemeses = stream(seed, Stream::Nemeses);
        // Swarm testing: each allowed fault kind is on for this seed with probability
        // one half, so that some seeds stress one kind without the noise of the others.
        // The targeted nemeses draw from their own stream, so that adding them left the
        // scenarios of the classic kinds as they were.
        let mut enabled: FaultSet = FaultSet(
            options
                .faults
                .0
                .iter()
                .copied()
                .filter(|k| k.is_classic())
                .filter(|_| rng.random_bool(0.5))
                .collect(),
        );
        // `client-abuse` draws from its own stream below.
        let nemesis_kinds = options
            .faults
            .0
            .iter()
            .filter(|k| !k.is_classic() && **k != FaultKind::ClientAbuse);
        for kind in nemesis_kinds {
            if nemeses.random_bool(0.5) {
                enabled.0.insert(*kind);
            }
        }
        let on = |kind| enabled.contains(kind);
        let mut network = NetworkParams::calm();
        network.latency_us_max = [2_000, 10_000, 30_000][rng.random_range(0..3)];
        let mut tuning = ReplicaTuning::generate(&mut rng);
        // Derived, not drawn, so that no other choice of the seed moves: three seeds in
        // four roll segments of 2-32 KiB, the rest keep the production size.
        tuning.segment_bytes_max = match crate::rng::derive_seed(seed, Stream::Disk, 0) % 4 {
            0 => None,
            n => Some(1024 << (n * 2 - 1)),
        };
        // Derived too: a quarter of the seeds run without pre-vote.
        if crate::rng::derive_seed(seed, Stream::Replicas, PRE_VOTE_PICK).is_multiple_of(4) {
            tuning.pre_vote = Some(false);
        }
        // Derived too: half the seeds apply a few committed entries per step.
        let apply_pick = crate::rng::derive_seed(seed, Stream::Replicas, APPLY_STEP_PICK);
        if apply_pick.is_multiple_of(2) {
            tuning.apply_entries_per_step_max = Some([1, 2, 8, 64][(apply_pick / 2 % 4) as usize]);
        }
        // Derived too: half the `leader-isolation` seeds snapshot every 2-8 entries, so
        // that a successor compacts past a cut-off leader's own entries while that leader
        // still holds entries of its term at the same indexes (its clients' writes) and
        // catches it up by InstallSnapshot (`world/snapshot_heal.rs`). Drawn thresholds
        // (20 and up) put the snapshot beyond the few entries such a leader appends.
        let snapshot_pick = crate::rng::derive_seed(seed, Stream::Nemeses, SNAPSHOT_PICK);
        if on(FaultKind::LeaderIsolation) && snapshot_pick.is_multiple_of(2) {
            tuning.snapshot_threshold_entries = [2, 4, 8][((snapshot_pick >> 1) % 3) as usize];
        }
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
        let nodes = options.nodes.unwrap_or_else(|| founding_members(seed));
        let clock_drift_ppm = (0..nodes)
            .map(|_| {
                if on(FaultKind::ClockDrift) {
                    rng.random_range(-50_000..=50_000)
                } else {
                    0
                }
            })
            .collect();
        let mut fault_events =
            generate_fault_events(&mut rng, &enabled, nodes, options.chaos_duration_us);
        fault_events.extend(generate_nemesis_events(
            &mut nemeses,
            &enabled,
            nodes,
            &tuning,
            options.chaos_duration_us,
        ));
        // Derived, so that no other draw of the seed moves: half the seeds with
        // corruption also rot the leader's snapshot file once, while it runs.
        let rot_pick = crate::rng::derive_seed(seed, Stream::Disk, ROT_SNAPSHOT_PICK);
        if enabled.contains(FaultKind::Corruption) && rot_pick.is_multiple_of(2) {
            let mut rot = rand_chacha::ChaCha8Rng::seed_from_u64(rot_pick);
            fault_events.push(FaultEvent {
                at_us: rot.random_range(0..options.chaos_duration_us),
                action: FaultAction::RotSnapshot {
                    offset_pick: rot.random(),
                    mask: rot.random_range(1..=255),
                },
            });
        }
        fault_events.sort_by_key(|e| e.at_us);
        let mut workload = stream(seed, Stream::Workload);
        let mut clients: Vec<ClientPlan> = (0..options.clients)
            .map(|_| {
                generate_client_plan(&mut workload, options.clients, options.chaos_duration_us)
            })
            .collect();
        // Drawn from its own stream, after everything else: seeds without the kind are
        // exactly what they were before it existed.
        if options.faults.contains(FaultKind::ClientAbuse) {
            let mut abuse = stream(seed, Stream::Abuse);
            if abuse.random_bool(0.5) {
                enabled.0.insert(FaultKind::ClientAbuse);
                tuning.sessions_max = Some(abuse.random_range(8..=64));
                tuning.sessions_per_user_max = Some(abuse.random_range(2..=4));
                tuning.session_expiry_us = Some(abuse.random_range(2_000_000..=10_000_000));
                crate::workload::plan_abuse(&mut abuse, &mut clients, &tuning);
            }
        }
        // Drawn from its own stream, after everything else, as `client-abuse` is.
        if options.faults.contains(FaultKind::Membership) {
            let mut membership = stream(seed, Stream::Membership);
            if membership.random_bool(0.5) {
                enabled.0.insert(FaultKind::Membership);
                tuning.promotion_lag_entries_max =
                    Some([0, 4, 16, 64, 1024][membership.random_range(0..5)]);
                fault_events.extend(generate_membership_events(
                    &mut membership,
                    nodes,
                    options.chaos_duration_us,
                ));
                fault_events.sort_by_key(|e| e.at_us);
            }
        }
        // Drawn from its own stream, after everything else, as `membership` is.
        if options.faults.contains(FaultKind::LeaderChurn) {
            let mut churn = stream(seed, Stream::Churn);
            if churn.random_bool(0.5) {
                enabled.0.insert(FaultKind::LeaderChurn);
                // Small batches: Figure 8's window is an older term's entries reaching a
                // majority ahead of the new leader's first entry, which a batch holding
                // both closes.
                tuning.append_entries_count_max = [1, 2, 4][churn.random_range(0..3)];
                fault_events.extend(generate_churn_events(
                    &mut churn,
                    nodes,
                    &network,
                    &tuning,
                    options.chaos_duration_us,
                ));
                fault_events.sort_by_key(|e| e.at_us);
            }
        }
        let disk_cost = if enabled.contains(FaultKind::LargeState) {
            // Big bodies and frequent snapshots of a big state, on a disk that takes
            // time per byte plus a fixed cost per flush. The simulated state is about a
            // thousand times smaller than a production one (hundreds of kilobytes, not
            // hundreds of megabytes), so a simulated byte costs what a thousand real ones
            // do: 100-10,000 ns, that is 100 MB/s to 10 GB/s scaled down.
            tuning.snapshot_threshold_entries = [50, 100, 200][nemeses.random_range(0..3)];
            let body_scale = nemeses.random_range(20..=100);
            for op in clients.iter_mut().flat_map(|c| c.ops.iter_mut()) {
                if let OpPlan::Send { body_bytes, .. } = &mut op.op {
                    // Below the core's 4096-byte body limit (the client adds a prefix).
                    *body_bytes = (*body_bytes * body_scale).min(4_000);
                }
            }
            Some(DiskCost {
                base_us: nemeses.random_range(100..=2_000),
                ns_per_byte: nemeses.random_range(100..=10_000),
            })
        } else {
            None
        };
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
            disk_cost,
        }
    }

    /// The number of nodes that may fail at once while a quorum survives.
    pub fn fault_tolerance(&self) -> u64 {
        (self.nodes - 1) / 2
    }

    /// Node ids the scenario names: founding members and the ids its operator adds
    /// (a replacement for a node that refuses to start takes the next id after these).
    pub fn node_slots(&self) -> u64 {
        self.fault_events
            .iter()
            .flat_map(|e| e.action.node_ids())
            .filter(|&id| id <= NODE_ID_MAX)
            .fold(self.nodes, u64::max)
    }
}

/// The highest node id a world holds: well above what a scenario adds (16 members at
/// most at a time, see `chat_core::membership::MEMBERS_MAX`), and within the liveness
/// checker's 32-bit node sets.
pub const NODE_ID_MAX: u64 = 30;

/// The index under `Stream::Replicas` of the derived number that turns pre-vote off for
/// a seed (replica jitter seeds use small indexes: id times a million plus restarts).
const PRE_VOTE_PICK: u64 = u64::MAX;
/// The index under `Stream::Replicas` of the derived number that picks a seed's apply
/// step (`ReplicaTuning::apply_entries_per_step_max`).
const APPLY_STEP_PICK: u64 = u64::MAX - 1;
/// The index under `Stream::Disk` of the derived number that adds a snapshot rot to a
/// seed (the segment size uses index 0).
const ROT_SNAPSHOT_PICK: u64 = u64::MAX;

/// The index under `Stream::Nemeses` of the derived number that gives a `leader-isolation`
/// seed a tiny snapshot threshold (1 and 2 seed the world's own derived streams).
const SNAPSHOT_PICK: u64 = u64::MAX;

/// The founding cluster size of a generated seed: five for half the seeds, 3, 4, 6 or 7
/// for the others (derived, not drawn, so that no stream moves).
fn founding_members(seed: u64) -> u64 {
    let pick = crate::rng::derive_seed(seed, Stream::Membership, 1);
    if pick.is_multiple_of(2) {
        NODES_DEFAULT
    } else {
        [3, 4, 6, 7][((pick >> 1) % 4) as usize]
    }
}

/// The windows of a `leader-churn` seed. Each new leader keeps at most a minority
/// (itself included) reachable while cut, so that its first entries cannot commit; the
/// cut lasts from a message's flight to a few heartbeats, and a crash after the cut heals
/// comes within a few round trips, while the leader replicates older entries in batches.
fn generate_churn_events(
    rng: &mut impl Rng,
    nodes: u64,
    network: &NetworkParams,
    tuning: &ReplicaTuning,
    duration_us: u64,
) -> Vec<FaultEvent> {
    let quorum = nodes / 2 + 1;
    let timeout_max = tuning.election_timeout_us_max();
    let one_way_us = network.latency_us_max.max(1_000);
    (0..rng.random_range(1..=3))
        .map(|_| FaultEvent {
            at_us: rng.random_range(0..duration_us.max(1)),
            action: FaultAction::LeaderChurn {
                duration_us: rng.random_range(3 * timeout_max..=10 * timeout_max),
                reach_peers: rng.random_range(0..=quorum.saturating_sub(2)),
                cut_us_max: rng
                    .random_range(one_way_us..=one_way_us.max(4 * tuning.heartbeat_interval_us)),
                settle_us_max: rng.random_range(one_way_us..=4 * one_way_us),
                down_us: rng.random_range(tuning.heartbeat_interval_us..=timeout_max),
            },
        })
        .collect()
}

/// The operator's procedures of a `membership` seed: each picks a time and what to do;
/// new nodes take ids after the founding ones.
fn generate_membership_events(rng: &mut impl Rng, nodes: u64, duration_us: u64) -> Vec<FaultEvent> {
    let mut events = Vec::new();
    let mut next_id = nodes + 1;
    let mut added: Vec<u64> = Vec::new();
    for _ in 0..rng.random_range(1..=5) {
        let at_us = rng.random_range(0..duration_us.max(1));
        let mut push = |at_us: u64, action| events.push(FaultEvent { at_us, action });
        match rng.random_range(0..100) {
            // Add a learner and promote it: at once (often refused as lagging) and
            // then carefully, or only carefully.
            0..=29 => {
                let node = next_id;
                next_id += 1;
                added.push(node);
                push(at_us, FaultAction::AddLearner { node });
                if rng.random_bool(0.5) {
                    // Impatient: while the add is in flight (refused: a change is in
                    // progress) or right after (refused while the learner lags).
                    let soon_us = rng.random_range(1_000..=500_000);
                    push(at_us + soon_us, FaultAction::Promote { node, wait: false });
                }
                if rng.random_bool(0.8) {
                    let later_us = rng.random_range(1_000..=3_000_000);
                    push(at_us + later_us, FaultAction::Promote { node, wait: true });
                }
            }
            // Remove a follower (or whichever node it is by then) or an added node.
            30..=49 => {
                let node = match added.last() {
                    Some(&id) if rng.random_bool(0.3) => id,
                    _ => rng.random_range(1..=nodes),
                };
                push(at_us, FaultAction::RemoveMember { node });
            }
            50..=64 => push(at_us, FaultAction::RemoveMember { node: LEADER }),
            65..=79 => {
                let target = if rng.random_bool(0.5) {
                    Some(rng.random_range(1..=nodes))
                } else {
                    None
                };
                push(at_us, FaultAction::TransferLeader { target });
            }
            _ => {
                let new_node = next_id;
                next_id += 1;
                let node = rng.random_range(1..=nodes);
                push(at_us, FaultAction::Replace { node, new_node });
            }
        }
    }
    events
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

/// The targeted nemeses: faults aimed at the windows where classic Raft bugs live.
fn generate_nemesis_events(
    rng: &mut impl Rng,
    enabled: &FaultSet,
    nodes: u64,
    tuning: &ReplicaTuning,
    duration_us: u64,
) -> Vec<FaultEvent> {
    use chat_core::storage::DiskOpKind;
    let mut events = Vec::new();
    let timeout_max = tuning.election_timeout_us_max();
    let mut push = |rng: &mut _, action| {
        let at_us = Rng::random_range(rng, 0..duration_us.max(1));
        events.push(FaultEvent { at_us, action });
    };
    let others = |rng: &mut dyn rand::RngCore| -> Vec<u64> {
        (1..=nodes).filter(|_| rng.random_bool(0.5)).collect()
    };
    if enabled.contains(FaultKind::LeaderIsolation) {
        for _ in 0..rng.random_range(1..=4) {
            let peers_cut: Vec<(u64, u64)> = (1..=nodes)
                .flat_map(|o| [(LEADER, o), (o, LEADER)])
                .collect();
            let duration_us = rng.random_range(2 * timeout_max..=6 * timeout_max);
            let action = match rng.random_range(0..4) {
                // The stale-leader window: cut from its peers, clients still reach it.
                0 | 1 => FaultAction::LinkSplit {
                    label: "leader cut from peers, not from clients".to_string(),
                    blocked: peers_cut,
                    client_cut: Vec::new(),
                    duration_us,
                },
                // The same, and clients cannot reach some of the others either.
                2 => FaultAction::LinkSplit {
                    label: "leader cut from peers, clients from some others".to_string(),
                    blocked: peers_cut,
                    client_cut: others(rng),
                    duration_us,
                },
                _ => FaultAction::LinkSplit {
                    label: "leader cut from clients, not from peers".to_string(),
                    blocked: Vec::new(),
                    client_cut: vec![LEADER],
                    duration_us,
                },
            };
            push(rng, action);
        }
    }
    if enabled.contains(FaultKind::LeaderPause) {
        for _ in 0..rng.random_range(1..=3) {
            let duration_us = rng.random_range(2 * timeout_max..=5 * timeout_max);
            push(rng, FaultAction::PauseLeader { duration_us });
        }
    }
    if enabled.contains(FaultKind::SlowClock) {
        for _ in 0..rng.random_range(1..=3) {
            let action = FaultAction::ClockRate {
                node: if rng.random_bool(0.8) {
                    LEADER
                } else {
                    rng.random_range(1..=nodes)
                },
                rate_ppm: -rng.random_range(200_000..=600_000),
                duration_us: rng.random_range(timeout_max..=10 * timeout_max),
            };
            push(rng, action);
        }
    }
    if enabled.contains(FaultKind::ElectionBurst) {
        for _ in 0..rng.random_range(1..=2) {
            let action = FaultAction::ElectionBurst {
                duration_us: rng.random_range(2 * timeout_max..=8 * timeout_max),
                delay_us: rng.random_range(0..=5_000),
                crash: rng.random_bool(0.5),
                down_us: rng.random_range(1_000..=timeout_max),
            };
            push(rng, action);
        }
        if nodes >= 3 {
            for _ in 0..rng.random_range(0..=2) {
                // A three-way split (2-2-1 of five): no group holds a majority.
                let groups: Vec<u64> = (1..=nodes).map(|_| rng.random_range(0..3)).collect();
                let mut blocked = Vec::new();
                for a in 1..=nodes {
                    for b in 1..=nodes {
                        if groups[a as usize - 1] != groups[b as usize - 1] {
                            blocked.push((a, b));
                        }
                    }
                }
                let action = FaultAction::Partition {
                    label: format!("three-way split {groups:?}"),
                    blocked,
                    duration_us: rng.random_range(timeout_max..=5 * timeout_max),
                };
                push(rng, action);
            }
        }
    }
    if enabled.contains(FaultKind::PersistCrash) {
        for _ in 0..rng.random_range(1..=4) {
            let action = FaultAction::PersistCrash {
                node: rng.random_range(1..=nodes),
                vote: rng.random_bool(0.5),
                lose_messages: rng.random_bool(0.5),
                window_us: rng.random_range(timeout_max..=10 * timeout_max),
                down_us: rng.random_range(1_000..=timeout_max),
            };
            push(rng, action);
        }
    }
    if enabled.contains(FaultKind::DiskOpCrash) {
        for _ in 0..rng.random_range(1..=4) {
            let op = DiskOpKind::ALL[rng.random_range(0..DiskOpKind::ALL.len())];
            let action = FaultAction::DiskOpCrash {
                node: node_or_leader_of(rng, nodes),
                op,
                nth: rng.random_range(0..3),
                down_us: rng.random_range(1_000..=timeout_max),
            };
            push(rng, action);
        }
    }
    events
}

fn node_or_leader_of(rng: &mut impl Rng, nodes: u64) -> u64 {
    if rng.random_bool(0.5) {
        LEADER
    } else {
        rng.random_range(1..=nodes)
    }
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
            88..=93 => OpPlan::List {
                stale: rng.random_bool(0.3),
            },
            _ => OpPlan::Peek,
        };
        ops.push(PlannedOp { think_us, op });
    }
    ClientPlan { ops }
}
