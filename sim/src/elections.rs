//! The Raft paper's Figure 16 (Ongaro & Ousterhout, USENIX ATC 2014): how long a cluster
//! goes without a leader after its leader crashes, per election-timeout range.
//!
//! Setup, as close to the paper's as our replicas allow:
//! - 5 replicas (the production `Replica` over `LogStore<MemDisk>`), no clients, no
//!   faults other than the leader crash; message loss none.
//! - One-way latency uniform in [7 ms, 8 ms]: a round trip of about 15 ms, the paper's
//!   broadcast time, with little spread. The spread matters more than the mean: the
//!   paper's followers all heard the crashed leader's last heartbeat at about the same
//!   time (a LAN; its 15 ms are mostly the fsync of a vote, a fixed cost), and that is
//!   what makes timeouts without jitter collide. A 5-15 ms spread would hand the cluster
//!   10 ms of jitter for free and hide the effect.
//! - Heartbeats every half of the minimum election timeout; the leader is crashed at a
//!   uniformly random moment within a heartbeat interval, so the shortest possible
//!   downtime is about half the minimum timeout, as in the paper.
//! - A trial measures from the crash until some replica becomes leader (wins its
//!   votes). Then the crashed replica restarts from its disk and the cluster settles
//!   for [`SETTLE_US`] before the next trial.
//!
//! Our replicas use pre-vote and check-quorum (the paper's did not): every election
//! costs one extra round trip (about 15 ms) before the real vote, and a follower grants a
//! pre-vote only once its own lease (the minimum timeout since it last heard the leader)
//! has run out, which the first follower to time out always finds true of the others
//! here, since they heard the leader at the same time. Check-quorum plays no part: the
//! old leader is dead, not partitioned. Pre-vote does not prevent split votes: several
//! followers that time out together all pass pre-vote and then split the real vote.

use crate::rng::{derive_seed, stream, Stream};
use chat_core::app::Delivery;
use chat_core::entry::Persist;
use chat_core::storage::{LogStore, MemDisk, StorageError};
use chat_core::{drive, Config, Envelope, NodeId, Replica, Reply, Role, Shell, Time};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// The paper's election timeout ranges, in milliseconds.
pub const RANGES_MS: [(u64, u64); 6] = [
    (150, 150),
    (150, 151),
    (150, 155),
    (150, 175),
    (150, 200),
    (150, 300),
];
pub const NODES: u64 = 5;
pub const LATENCY_US_MIN: u64 = 7_000;
pub const LATENCY_US_MAX: u64 = 8_000;
/// Virtual time between a new leader's election and the next crash: the restarted
/// replica catches up and every follower is back to plain heartbeats.
pub const SETTLE_US: u64 = 1_000_000;
/// A trial that elects no leader within this is recorded as unelected.
pub const TRIAL_US_MAX: u64 = 60_000_000;
/// Where the table reads the cumulative distribution, in milliseconds.
pub const WITHIN_MS: [u64; 4] = [100, 300, 1_000, 3_000];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionsOptions {
    pub seed: u64,
    pub trials: usize,
    /// Election timeout ranges `(min, max)` in µs.
    pub ranges_us: Vec<(u64, u64)>,
}

impl ElectionsOptions {
    pub fn paper(seed: u64, trials: usize) -> ElectionsOptions {
        ElectionsOptions {
            seed,
            trials,
            ranges_us: RANGES_MS
                .iter()
                .map(|&(min, max)| (min * 1_000, max * 1_000))
                .collect(),
        }
    }
}

/// The downtimes measured for one election timeout range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResult {
    pub timeout_us_min: u64,
    pub timeout_us_max: u64,
    /// Time from the crash to the new leader, per elected trial, sorted.
    pub downtimes_us: Vec<u64>,
    /// Trials with no leader within [`TRIAL_US_MAX`].
    pub unelected: usize,
}

impl RangeResult {
    pub fn trials(&self) -> usize {
        self.downtimes_us.len() + self.unelected
    }

    /// The `p`-th percentile over all trials (nearest rank); `None` if it falls among
    /// the unelected ones (longer than [`TRIAL_US_MAX`]).
    pub fn percentile_us(&self, p: f64) -> Option<u64> {
        let trials = self.trials();
        if trials == 0 {
            return None;
        }
        let rank = ((p / 100.0) * trials as f64).ceil().max(1.0) as usize;
        self.downtimes_us.get(rank - 1).copied()
    }

    /// The fraction of trials that elected a leader within `us`.
    pub fn fraction_within(&self, us: u64) -> f64 {
        let within = self.downtimes_us.partition_point(|&d| d <= us);
        within as f64 / self.trials().max(1) as f64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ElectionsError {
    #[error("replica {0} cannot start: {1}")]
    Start(NodeId, String),
    #[error("replica {0} cannot persist: {1}")]
    Persist(NodeId, StorageError),
}

/// Runs the experiment: for each range, `trials` leader crashes. Deterministic in the seed.
pub fn run_elections(options: &ElectionsOptions) -> Result<Vec<RangeResult>, ElectionsError> {
    options
        .ranges_us
        .iter()
        .enumerate()
        .map(|(index, &(min, max))| run_range(options, index as u64, min, max))
        .collect()
}

fn run_range(
    options: &ElectionsOptions,
    range_index: u64,
    timeout_us_min: u64,
    timeout_us_max: u64,
) -> Result<RangeResult, ElectionsError> {
    let seed = derive_seed(options.seed, Stream::Elections, range_index);
    let mut cluster = Cluster::new(seed, timeout_us_min, timeout_us_max);
    for id in 1..=NODES {
        cluster.start(NodeId(id))?;
    }
    let mut result = RangeResult {
        timeout_us_min,
        timeout_us_max,
        downtimes_us: Vec::with_capacity(options.trials),
        unelected: 0,
    };
    let heartbeat_us = cluster.heartbeat_us;
    while result.trials() < options.trials {
        let settle_until = cluster.now.saturating_add_us(SETTLE_US);
        cluster.run_until(settle_until)?;
        let offset_us = cluster.rng.random_range(0..heartbeat_us);
        cluster.run_until(cluster.now.saturating_add_us(offset_us))?;
        let Some(leader) = cluster.leader() else {
            continue; // Still electing (after an unelected trial): settle again.
        };
        let crashed_at = cluster.now;
        cluster.crash(leader);
        cluster.elected = None;
        let deadline = crashed_at.saturating_add_us(TRIAL_US_MAX);
        while cluster.elected.is_none() && cluster.now < deadline && cluster.step()? {}
        match cluster.elected {
            Some(at) => result.downtimes_us.push(at.saturating_since_us(crashed_at)),
            None => result.unelected += 1,
        }
        cluster.start(leader)?;
    }
    result.downtimes_us.sort_unstable();
    Ok(result)
}

enum Event {
    Message(Envelope),
    Timer { node: NodeId, seq: u64 },
}

struct Member {
    replica: Option<Replica>,
    store: Option<LogStore<MemDisk>>,
    disk: Option<MemDisk>,
    timer_seq: u64,
    starts: u64,
}

struct Cluster {
    seed: u64,
    now: Time,
    queue: BTreeMap<(Time, u64), Event>,
    seq: u64,
    members: Vec<Member>,
    rng: ChaCha8Rng,
    timeout_us_min: u64,
    timeout_us_max: u64,
    heartbeat_us: u64,
    /// When a replica last became leader.
    elected: Option<Time>,
}

struct ElectionShell<'a> {
    store: &'a mut LogStore<MemDisk>,
    outbox: Vec<Envelope>,
}

impl Shell for ElectionShell<'_> {
    type Error = StorageError;
    fn persist(&mut self, persist: &Persist) -> Result<(), StorageError> {
        self.store.persist(persist)
    }
    fn send(&mut self, envelope: Envelope) {
        self.outbox.push(envelope);
    }
    fn reply(&mut self, _reply: Reply) {}
    fn deliver(&mut self, _delivery: Delivery) {}
    // Elections runs no workload: no snapshot ever comes due.
    fn save_snapshot(&mut self, _image: chat_core::machine::SnapshotImage) {}
}

impl Cluster {
    fn new(seed: u64, timeout_us_min: u64, timeout_us_max: u64) -> Cluster {
        let members = (0..NODES)
            .map(|_| Member {
                replica: None,
                store: None,
                disk: Some(MemDisk::new()),
                timer_seq: 0,
                starts: 0,
            })
            .collect();
        Cluster {
            seed,
            now: Time(0),
            queue: BTreeMap::new(),
            seq: 0,
            members,
            rng: stream(seed, Stream::Elections),
            timeout_us_min,
            timeout_us_max,
            heartbeat_us: (timeout_us_min / 2).max(1),
            elected: None,
        }
    }

    fn member(&mut self, id: NodeId) -> &mut Member {
        &mut self.members[id.0 as usize - 1]
    }

    fn leader(&self) -> Option<NodeId> {
        self.members
            .iter()
            .filter_map(|m| m.replica.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    fn start(&mut self, id: NodeId) -> Result<(), ElectionsError> {
        let members: Vec<NodeId> = (1..=NODES).map(NodeId).collect();
        let mut config = Config::new(id, members)
            .with_election_timeout_us(self.timeout_us_min, self.timeout_us_max);
        config.heartbeat_interval_us = self.heartbeat_us;
        let (seed, now) = (self.seed, self.now);
        let member = self.member(id);
        config.rng_seed = derive_seed(seed, Stream::Elections, id.0 * 1_000_003 + member.starts);
        member.starts += 1;
        let disk = member.disk.take().unwrap_or_default();
        let (store, recovered) =
            LogStore::open_with(disk, chat_core::storage::StoreConfig::replica())
                .map_err(|e| ElectionsError::Start(id, e.to_string()))?;
        let replica = Replica::new(config, recovered, now)
            .map_err(|e| ElectionsError::Start(id, e.to_string()))?;
        member.replica = Some(replica);
        member.store = Some(store);
        self.after_input(id, Role::Follower)
    }

    /// The crashed replica keeps its disk (every write was synced) for its restart.
    fn crash(&mut self, id: NodeId) {
        let member = self.member(id);
        member.replica = None;
        member.disk = member.store.take().map(LogStore::into_disk);
        member.timer_seq = 0;
    }

    fn push(&mut self, at: Time, event: Event) -> u64 {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
        self.seq
    }

    /// Runs every event up to `until`, then sets the clock there.
    fn run_until(&mut self, until: Time) -> Result<(), ElectionsError> {
        while self
            .queue
            .first_key_value()
            .is_some_and(|(&(at, _), _)| at <= until)
        {
            self.step()?;
        }
        self.now = self.now.max(until);
        Ok(())
    }

    /// Handles the next event; false when there is none.
    fn step(&mut self) -> Result<bool, ElectionsError> {
        let Some(((at, _), event)) = self.queue.pop_first() else {
            return Ok(false);
        };
        self.now = at;
        let now = at;
        let id = match &event {
            Event::Message(envelope) => envelope.to,
            Event::Timer { node, seq } => {
                if self.member(*node).timer_seq != *seq {
                    return Ok(true);
                }
                *node
            }
        };
        let Some(replica) = self.member(id).replica.as_mut() else {
            return Ok(true); // Sent to, or timed out at, a crashed replica.
        };
        let before = replica.role();
        match event {
            Event::Message(envelope) => replica.handle_message(now, envelope),
            Event::Timer { .. } => replica.handle_timeout(now),
        }
        self.after_input(id, before)?;
        Ok(true)
    }

    /// Performs the replica's outputs, notes a won election, re-arms its timer.
    fn after_input(&mut self, id: NodeId, before: Role) -> Result<(), ElectionsError> {
        let member = &mut self.members[id.0 as usize - 1];
        let (Some(replica), Some(store)) = (member.replica.as_mut(), member.store.as_mut()) else {
            return Ok(());
        };
        let mut shell = ElectionShell {
            store,
            outbox: Vec::new(),
        };
        drive(replica, &mut shell).map_err(|e| ElectionsError::Persist(id, e))?;
        let outbox = shell.outbox;
        if replica.role() == Role::Leader && before != Role::Leader {
            self.elected = Some(self.now);
        }
        let deadline = replica.poll_timeout().max(self.now);
        // The timer event carries its own sequence number: only the newest one fires.
        let seq = self.seq + 1;
        self.push(deadline, Event::Timer { node: id, seq });
        self.member(id).timer_seq = seq;
        for envelope in outbox {
            let latency_us = self.rng.random_range(LATENCY_US_MIN..=LATENCY_US_MAX);
            self.push(
                self.now.saturating_add_us(latency_us),
                Event::Message(envelope),
            );
        }
        Ok(())
    }
}

/// The CDF as a table: one row per range.
pub fn table(results: &[RangeResult]) -> String {
    let ms = |us: Option<u64>| match us {
        Some(us) => format!("{:.0}", us as f64 / 1e3),
        None => format!(">{}", TRIAL_US_MAX / 1_000),
    };
    let mut out = String::from("range (ms)  trials  p50 ms  p90 ms  p99 ms  max ms");
    for within in WITHIN_MS {
        out.push_str(&format!("  <={within}ms"));
    }
    out.push('\n');
    for r in results {
        let range = format!("{}-{}", r.timeout_us_min / 1_000, r.timeout_us_max / 1_000);
        out.push_str(&format!(
            "{range:<10}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}",
            r.trials(),
            ms(r.percentile_us(50.0)),
            ms(r.percentile_us(90.0)),
            ms(r.percentile_us(99.0)),
            ms(r.percentile_us(100.0)),
        ));
        for within in WITHIN_MS {
            let width = format!("  <={within}ms").len();
            let cell = format!("{:.1}%", 100.0 * r.fraction_within(within * 1_000));
            out.push_str(&format!("{cell:>width$}"));
        }
        out.push('\n');
    }
    out
}

pub fn json(options: &ElectionsOptions, results: &[RangeResult]) -> serde_json::Value {
    let ranges: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let within: serde_json::Map<String, serde_json::Value> = WITHIN_MS
                .iter()
                .map(|&ms| (format!("{ms}ms"), r.fraction_within(ms * 1_000).into()))
                .collect();
            serde_json::json!({
                "timeout_ms_min": r.timeout_us_min as f64 / 1e3,
                "timeout_ms_max": r.timeout_us_max as f64 / 1e3,
                "trials": r.trials(),
                "unelected": r.unelected,
                "p50_us": r.percentile_us(50.0),
                "p90_us": r.percentile_us(90.0),
                "p99_us": r.percentile_us(99.0),
                "max_us": r.percentile_us(100.0),
                "fraction_within": within,
            })
        })
        .collect();
    serde_json::json!({
        "seed": options.seed,
        "nodes": NODES,
        "latency_us": [LATENCY_US_MIN, LATENCY_US_MAX],
        "trial_us_max": TRIAL_US_MAX,
        "ranges": ranges,
    })
}
