//! Prometheus metrics of one node, served as text over plain HTTP at `/metrics` on
//! `metrics_addr` ([`endpoint`]). ARCHITECTURE.md ("Metrics") has the table of them all.
//!
//! Every value is a prometheus-client atomic, handed as a cheap clone to where things
//! happen: the core thread ([`CoreObserver`] after each drive: a few atomic stores, no
//! state hash; [`CoreMetrics::persisted`] around each persist), the client API
//! ([`ClientMetrics`]), the peer senders ([`PeerMetrics`]) and the gRPC server
//! ([`rpc::RpcLayer`]). What other parts already count (live listen streams, the password
//! hash pool) is read when scraped ([`Sampled`]), so they carry no metrics code. Nothing
//! here decides anything: metrics are observation only.

pub mod endpoint;
pub mod rpc;
mod sampled;

pub use sampled::Sampled;

use crate::limiter::Limited;
use chat_core::{ClientRequest, NodeId, ReadConsistency, Replica, Role, Term};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Every metric name starts with `chat_`.
const PREFIX: &str = "chat";
/// Latency buckets: 100 µs, doubling 17 times to 6.6 s. The lowest catches a fast fsync,
/// the highest lies past the client API's 4 s request timeout.
const LATENCY_BUCKET_FIRST_SECONDS: f64 = 100e-6;
const LATENCY_BUCKET_COUNT: u16 = 17;
/// Entries per persist: 1, doubling to 8,192. A leader's batch holds at most 4,096
/// inputs; a follower's may hold a whole AppendEntries, which can be more (then +Inf).
const BATCH_BUCKET_COUNT: u16 = 14;
/// Snapshot write time: 1 ms, doubling 16 times to 33 s.
const SNAPSHOT_BUCKET_FIRST_SECONDS: f64 = 1e-3;
const SNAPSHOT_SECONDS_BUCKET_COUNT: u16 = 16;
/// Snapshot sizes: 1 KiB, quadrupling to 4 GiB.
const SNAPSHOT_BUCKET_FIRST_BYTES: f64 = 1_024.0;
const SNAPSHOT_BYTES_BUCKET_COUNT: u16 = 12;

/// A log index or a term: never negative, may exceed `i64::MAX` in principle.
type IndexGauge = Gauge<u64, AtomicU64>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        LATENCY_BUCKET_FIRST_SECONDS,
        2.0,
        LATENCY_BUCKET_COUNT,
    ))
}

/// Every metric of one node, before it is served.
pub struct Metrics {
    registry: Registry,
    pub core: CoreMetrics,
    pub client: ClientMetrics,
    pub peers: PeerMetrics,
    pub rpc: rpc::RpcMetrics,
}

impl Metrics {
    /// Registers every metric; `peers` are the other members (one series each, from the
    /// start, so that a peer that never dropped a message shows a 0).
    pub fn new(peers: impl IntoIterator<Item = NodeId>) -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let core = CoreMetrics::register(&mut registry);
        let client = ClientMetrics::register(&mut registry);
        let peers = PeerMetrics::register(&mut registry, peers);
        let rpc = rpc::RpcMetrics::register(&mut registry);
        Metrics {
            registry,
            core,
            client,
            peers,
            rpc,
        }
    }

    /// Adds what is read at scrape time; what remains can only be rendered.
    pub fn finish(mut self, sampled: Sampled) -> Exposition {
        self.registry.register_collector(Box::new(sampled));
        Exposition {
            registry: self.registry,
        }
    }
}

/// The registry, complete: what `/metrics` renders.
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// The Prometheus text format (version 0.0.4), which every Prometheus scrapes.
    pub const CONTENT_TYPE: &'static str =
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

const ROLES: [Role; 4] = [
    Role::Follower,
    Role::PreCandidate,
    Role::Candidate,
    Role::Leader,
];

/// What the core thread updates: the replica's position, and its durable writes.
#[derive(Clone)]
pub struct CoreMetrics {
    term: IndexGauge,
    /// One gauge per role, in [`ROLES`] order: 1 for the current role, 0 for the others.
    roles: Vec<Gauge>,
    leader_changes: Counter,
    commit_index: IndexGauge,
    applied_index: IndexGauge,
    last_log_index: IndexGauge,
    elections: Counter,
    snapshots_taken: Counter,
    snapshots_installed: Counter,
    snapshot_chunks_sent: Counter,
    snapshot_read_errors: Counter,
    snapshots_refused: Counter,
    snapshot_refusals_received: Counter,
    snapshot_memory_bytes: IndexGauge,
    persist_entries: Histogram,
    persist_seconds: Histogram,
    snapshot_persist_seconds: Histogram,
    snapshot_bytes: Histogram,
}

impl CoreMetrics {
    fn register(registry: &mut Registry) -> CoreMetrics {
        let role_family = Family::<RoleLabels, Gauge>::default();
        // Clones share the family's atomics: the core thread then sets them without a
        // lookup (and without the family's lock).
        let roles = ROLES
            .iter()
            .map(|&role| {
                role_family
                    .get_or_create(&RoleLabels {
                        role: crate::convert::role(role),
                    })
                    .clone()
            })
            .collect();
        let metrics = CoreMetrics {
            term: IndexGauge::default(),
            roles,
            leader_changes: Counter::default(),
            commit_index: IndexGauge::default(),
            applied_index: IndexGauge::default(),
            last_log_index: IndexGauge::default(),
            elections: Counter::default(),
            snapshots_taken: Counter::default(),
            snapshots_installed: Counter::default(),
            snapshot_chunks_sent: Counter::default(),
            snapshot_read_errors: Counter::default(),
            snapshots_refused: Counter::default(),
            snapshot_refusals_received: Counter::default(),
            snapshot_memory_bytes: IndexGauge::default(),
            persist_entries: Histogram::new(exponential_buckets(1.0, 2.0, BATCH_BUCKET_COUNT)),
            persist_seconds: latency_histogram(),
            snapshot_persist_seconds: Histogram::new(exponential_buckets(
                SNAPSHOT_BUCKET_FIRST_SECONDS,
                2.0,
                SNAPSHOT_SECONDS_BUCKET_COUNT,
            )),
            snapshot_bytes: Histogram::new(exponential_buckets(
                SNAPSHOT_BUCKET_FIRST_BYTES,
                4.0,
                SNAPSHOT_BYTES_BUCKET_COUNT,
            )),
        };
        let m = metrics.clone();
        registry.register("raft_term", "The replica's current term", m.term);
        registry.register(
            "raft_role",
            "1 for the replica's current role (follower, pre-candidate, candidate, leader), 0 for the others",
            role_family,
        );
        registry.register(
            "raft_leader_changes",
            "Times this replica learned of a new leader (a leader for a new term)",
            m.leader_changes,
        );
        registry.register(
            "raft_commit_index",
            "Highest log index known to be committed",
            m.commit_index,
        );
        registry.register(
            "raft_applied_index",
            "Highest log index applied to the state machine",
            m.applied_index,
        );
        registry.register(
            "raft_last_log_index",
            "Index of the last entry in the replica's log",
            m.last_log_index,
        );
        registry.register(
            "raft_elections",
            "Elections this replica started as a candidate (each after a pre-vote it won)",
            m.elections,
        );
        registry.register(
            "snapshots_taken",
            "Snapshots this replica took of its own state (log compaction)",
            m.snapshots_taken,
        );
        registry.register(
            "snapshots_installed",
            "Snapshots this replica installed from its leader",
            m.snapshots_installed,
        );
        registry.register(
            "snapshot_chunks_sent",
            "InstallSnapshot chunks this replica sent to followers, read from its snapshot file",
            m.snapshot_chunks_sent,
        );
        registry.register(
            "snapshot_read_errors",
            "InstallSnapshot chunks that could not be read from the snapshot file (retried)",
            m.snapshot_read_errors,
        );
        registry.register(
            "snapshots_refused",
            "Snapshots received from a leader and not installed: bytes that did not match the sender's checksum, or did not decode",
            m.snapshots_refused,
        );
        registry.register(
            "snapshot_refusals_received",
            "Followers' refusals of this leader's snapshot as damaged; each makes the leader take a fresh one",
            m.snapshot_refusals_received,
        );
        registry.register_with_unit(
            "snapshot_memory",
            "Bytes of the current snapshot held in memory (0 once it is read from its file: after a restart or an install, until the file is attached)",
            Unit::Bytes,
            m.snapshot_memory_bytes.clone(),
        );
        registry.register(
            "persist_entries",
            "Log entries per durable write (group commit: one write and fsync per batch)",
            m.persist_entries,
        );
        registry.register_with_unit(
            "persist_duration",
            "Time of one durable write: log appends, hard state and snapshot, and the fsync",
            Unit::Seconds,
            m.persist_seconds,
        );
        registry.register_with_unit(
            "snapshot_persist_duration",
            "Time of the durable writes that carried a snapshot",
            Unit::Seconds,
            m.snapshot_persist_seconds,
        );
        registry.register_with_unit(
            "snapshot_size",
            "Encoded size of each snapshot written",
            Unit::Bytes,
            m.snapshot_bytes,
        );
        metrics
    }

    /// Records one durable write: its entries, its time and, when it carried a snapshot,
    /// that snapshot's size.
    pub fn persisted(&self, entry_count: usize, snapshot_bytes: Option<usize>, took: Duration) {
        let seconds = took.as_secs_f64();
        self.persist_entries.observe(entry_count as f64);
        self.persist_seconds.observe(seconds);
        if let Some(bytes) = snapshot_bytes {
            self.snapshot_persist_seconds.observe(seconds);
            self.snapshot_bytes.observe(bytes as f64);
        }
    }

    /// Records one of the replica's own snapshots written and synced by the snapshot
    /// thread (its rename, on the core thread, is not counted).
    pub fn snapshot_staged(&self, bytes: usize, took: Duration) {
        self.snapshot_persist_seconds.observe(took.as_secs_f64());
        self.snapshot_bytes.observe(bytes as f64);
    }
}

/// Turns the replica's state into metric values after each drive. Lives on the core
/// thread; what it remembers makes counters out of the replica's transitions.
pub struct CoreObserver {
    metrics: CoreMetrics,
    role: Option<Role>,
    /// The last leader seen, and in which term: a new pair is a leader change.
    leader: Option<(NodeId, Term)>,
    /// The replica's own counters as of the last observation.
    counted: chat_core::Metrics,
}

impl CoreObserver {
    pub fn new(metrics: CoreMetrics) -> CoreObserver {
        CoreObserver {
            metrics,
            role: None,
            leader: None,
            counted: chat_core::Metrics::default(),
        }
    }

    /// Cheap enough for every drive: getters, atomic stores, and counter increments only
    /// when something moved.
    pub fn observe(&mut self, replica: &Replica) {
        let m = &self.metrics;
        m.term.set(replica.term().0);
        m.commit_index.set(replica.commit_index().0);
        m.applied_index.set(replica.last_applied().0);
        m.last_log_index.set(replica.last_log_index().0);
        m.snapshot_memory_bytes
            .set(replica.snapshot_bytes_in_memory());
        let role = replica.role();
        if self.role != Some(role) {
            self.role = Some(role);
            for (gauge, candidate) in m.roles.iter().zip(ROLES) {
                gauge.set(i64::from(candidate == role));
            }
        }
        if let Some(leader) = replica.leader_id() {
            let seen = Some((leader, replica.term()));
            if self.leader != seen {
                self.leader = seen;
                m.leader_changes.inc();
                tracing::info!(
                    leader = leader.0,
                    term = replica.term().0,
                    commit_index = replica.commit_index().0,
                    applied_index = replica.last_applied().0,
                    "leader known"
                );
            }
        }
        let now = replica.metrics();
        if *now != self.counted {
            let delta = |new: u64, old: u64| new.saturating_sub(old);
            m.elections
                .inc_by(delta(now.elections_started, self.counted.elections_started));
            m.snapshots_taken
                .inc_by(delta(now.snapshots_taken, self.counted.snapshots_taken));
            m.snapshots_installed.inc_by(delta(
                now.snapshots_installed,
                self.counted.snapshots_installed,
            ));
            m.snapshot_chunks_sent.inc_by(delta(
                now.snapshot_chunks_sent,
                self.counted.snapshot_chunks_sent,
            ));
            m.snapshot_read_errors.inc_by(delta(
                now.snapshot_read_errors,
                self.counted.snapshot_read_errors,
            ));
            m.snapshots_refused
                .inc_by(delta(now.snapshots_refused, self.counted.snapshots_refused));
            m.snapshot_refusals_received.inc_by(delta(
                now.snapshot_refusals_received,
                self.counted.snapshot_refusals_received,
            ));
            self.counted = now.clone();
        }
    }
}

/// The kind of a client request, for its counter and histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Write,
    LinearizableRead,
    StaleRead,
}

impl RequestKind {
    pub fn of(request: &ClientRequest) -> RequestKind {
        match request {
            // A membership change is a replicated write like any other.
            ClientRequest::Write { .. } | ClientRequest::ChangeMembership(_) => RequestKind::Write,
            ClientRequest::Read {
                consistency: ReadConsistency::Linearizable,
                ..
            } => RequestKind::LinearizableRead,
            ClientRequest::Read {
                consistency: ReadConsistency::Stale,
                ..
            } => RequestKind::StaleRead,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsistencyLabels {
    consistency: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// One counter and one latency histogram for a kind of request.
#[derive(Clone)]
struct RequestMetrics {
    submitted: Counter,
    seconds: Histogram,
}

/// What the client API updates: requests handed to the core, login refusals.
#[derive(Clone)]
pub struct ClientMetrics {
    writes: RequestMetrics,
    linearizable_reads: RequestMetrics,
    stale_reads: RequestMetrics,
    login_refusals_account: Counter,
    login_refusals_address: Counter,
}

impl ClientMetrics {
    fn register(registry: &mut Registry) -> ClientMetrics {
        let writes = RequestMetrics {
            submitted: Counter::default(),
            seconds: latency_histogram(),
        };
        registry.register(
            "proposals",
            "Client writes submitted to the core (on a follower, answered at once with the leader's address)",
            writes.submitted.clone(),
        );
        registry.register_with_unit(
            "proposal_duration",
            "Time from a write's submission to the core's answer (or the request timeout)",
            Unit::Seconds,
            writes.seconds.clone(),
        );
        let reads = Family::<ConsistencyLabels, Counter>::default();
        let read_seconds =
            Family::<ConsistencyLabels, Histogram>::new_with_constructor(latency_histogram);
        let read = |consistency| {
            let labels = ConsistencyLabels { consistency };
            RequestMetrics {
                submitted: reads.get_or_create(&labels).clone(),
                seconds: read_seconds.get_or_create(&labels).clone(),
            }
        };
        let linearizable_reads = read("linearizable");
        let stale_reads = read("stale");
        registry.register(
            "reads",
            "Reads submitted to the core (linearizable: confirmed with a quorum; stale: local)",
            reads,
        );
        registry.register_with_unit(
            "read_duration",
            "Time from a read's submission to the core's answer (or the request timeout)",
            Unit::Seconds,
            read_seconds,
        );
        let refusals = Family::<LimitLabels, Counter>::default();
        let login_refusals_account = refusals
            .get_or_create(&LimitLabels { limit: "account" })
            .clone();
        let login_refusals_address = refusals
            .get_or_create(&LimitLabels { limit: "address" })
            .clone();
        registry.register(
            "login_refusals",
            "Logins refused by the failed-login limits, per account or per client address",
            refusals,
        );
        ClientMetrics {
            writes,
            linearizable_reads,
            stale_reads,
            login_refusals_account,
            login_refusals_address,
        }
    }

    fn of(&self, kind: RequestKind) -> &RequestMetrics {
        match kind {
            RequestKind::Write => &self.writes,
            RequestKind::LinearizableRead => &self.linearizable_reads,
            RequestKind::StaleRead => &self.stale_reads,
        }
    }

    pub fn submitted(&self, kind: RequestKind) {
        self.of(kind).submitted.inc();
    }

    /// The request got its answer, an error, or timed out after `took`.
    pub fn answered(&self, kind: RequestKind, took: Duration) {
        self.of(kind).seconds.observe(took.as_secs_f64());
    }

    pub fn login_refused(&self, limit: &Limited) {
        match limit {
            Limited::Account { .. } => self.login_refusals_account.inc(),
            Limited::Address { .. } => self.login_refusals_address.inc(),
        };
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    peer: u64,
    reason: &'static str,
}

/// What the peer senders update, per peer.
#[derive(Clone)]
pub struct PeerMetrics {
    dropped: Family<DropLabels, Counter>,
    reconnects: Family<PeerLabels, Counter>,
}

/// One peer's counters (detached ones by default, for a router without metrics).
#[derive(Clone, Debug, Default)]
pub struct PeerCounters {
    /// Messages dropped because the peer's queue was full.
    pub queue_full: Counter,
    /// Messages dropped because the stream to the peer had too many batches unsent.
    pub stream_full: Counter,
    /// Streams to the peer opened again after one ended.
    pub reconnects: Counter,
}

impl PeerMetrics {
    fn register(registry: &mut Registry, peers: impl IntoIterator<Item = NodeId>) -> PeerMetrics {
        let metrics = PeerMetrics {
            dropped: Family::default(),
            reconnects: Family::default(),
        };
        for peer in peers {
            // Created now so that every peer has its series from the start.
            let _ = metrics.of(peer);
        }
        registry.register(
            "peer_messages_dropped",
            "Raft messages to a peer dropped (queue_full: the core outpaced the sender; \
             stream_full: the connection did not take them); Raft retransmits",
            metrics.dropped.clone(),
        );
        registry.register(
            "peer_reconnects",
            "Streams to a peer opened again after the previous one ended",
            metrics.reconnects.clone(),
        );
        metrics
    }

    /// The counters of `peer`, to be kept by its sender (no lookup afterwards).
    pub fn of(&self, peer: NodeId) -> PeerCounters {
        let dropped = |reason| {
            self.dropped
                .get_or_create(&DropLabels {
                    peer: peer.0,
                    reason,
                })
                .clone()
        };
        PeerCounters {
            queue_full: dropped("queue_full"),
            stream_full: dropped("stream_full"),
            reconnects: self
                .reconnects
                .get_or_create(&PeerLabels { peer: peer.0 })
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests;
