//! The replica: the state, the public interface (getters, `handle_*` inputs, `poll_*`
//! outputs) and the dispatch of peer messages. The protocol itself is in the sibling
//! modules, one impl block per concern.

use super::config::{Config, ConfigError};
use super::log::{LogError, RaftLog};
use super::message::{Envelope, Message};
use super::progress::Progress;
use super::transfer::Transfer;
use crate::app::{ChatState, Command, Query};
use crate::effects::Ready;
use crate::entry::{Entry, HardState, SnapshotMeta};
use crate::machine::MachineState;
use crate::membership::{Membership, MembershipChange};
use crate::snapshot_source::SnapshotSource;
use crate::storage::Recovered;
use crate::types::{LogIndex, NodeId, RequestId, Term, Time};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Confirmed with a quorum (read index) and served once applied: sees every write
    /// acknowledged before it was sent.
    Linearizable,
    /// Served at once from this replica's applied state, which may lag.
    Stale,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientRequest {
    /// A replicated write, applied exactly once per (session, seq). Account creation and
    /// session opening carry no session; every other command must.
    Write {
        session: Option<crate::entry::SessionRef>,
        command: Command,
    },
    Read {
        query: Query,
        consistency: ReadConsistency,
    },
    /// An operator's membership change: answered `Response::Membership` with the new
    /// membership once it is committed and applied, or `ClientError::Membership` if the
    /// leader refuses it.
    ChangeMembership(MembershipChange),
}

/// Counters a shell may export. They never influence decisions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Peer messages dropped as impossible: unknown sender, wrong recipient, or a
    /// term/index combination no correct peer sends.
    pub messages_rejected: u64,
    pub elections_started: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    pub snapshot_chunks_sent: u64,
    /// Chunks that could not be read from the snapshot's source (retried).
    pub snapshot_read_errors: u64,
    /// Received snapshots not installed: their bytes did not match the sender's checksum
    /// or did not decode.
    pub snapshots_refused: u64,
    /// Followers' refusals of this leader's snapshot as damaged (each asks for a fresh
    /// snapshot).
    pub snapshot_refusals_received: u64,
    pub entries_applied: u64,
    pub leadership_transfers: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("recovered log is inconsistent: {0}")]
    Log(#[from] LogError),
    #[error("recovered snapshot cannot be decoded: {0}")]
    Snapshot(String),
}

/// A read waiting for leadership confirmation (`seq` acknowledged by a quorum) and then
/// for the state machine to reach `read_index`.
#[derive(Clone, Debug)]
pub(super) struct PendingRead {
    pub request_id: RequestId,
    pub query: PendingQuery,
    pub read_index: LogIndex,
    pub seq: u64,
}

/// What a confirmed read answers.
#[derive(Clone, Debug)]
pub(super) enum PendingQuery {
    Chat(Query),
    /// A membership change refused by the structure of this leader's configuration
    /// (unknown id, already a voter, removed...). The refusal reads the configuration,
    /// so it is answered, like a read, only once a quorum has confirmed that this node
    /// still led after the request arrived: a deposed leader that does not know it yet
    /// would refuse from a stale configuration ("not a member" for a node added since),
    /// and an operator takes such an answer as final.
    MembershipRefusal(crate::membership::MembershipError),
}

/// In debug (and simulator) builds the incremental state hash is recomputed from scratch
/// once at least this many entries, and at least `HASH_CHECK_ENTRIES_PER_ITEM` times as
/// many as the state has items, were applied since the last check. A recomputation
/// hashes every item, so spacing checks by the item count costs a fixed fraction of an
/// item hash per applied entry, amortized, however large the state grows. The core and
/// simulator tests also check after steps and at the end of every run.
pub(super) const HASH_CHECK_INTERVAL_ENTRIES_MIN: u64 = 64;
pub(super) const HASH_CHECK_ENTRIES_PER_ITEM: u64 = 4;

/// The ChaCha stream of `Config::rng_seed` that snapshot jitter draws from (elections
/// draw from stream 0).
const SNAPSHOT_RNG_STREAM: u64 = 1;

/// A snapshot being received in chunks.
#[derive(Clone, Debug)]
pub(super) struct IncomingSnapshot {
    pub meta: SnapshotMeta,
    pub total_bytes: u64,
    pub checksum: u32,
    pub data: Vec<u8>,
}

/// One InstallSnapshot chunk, as received.
#[derive(Debug)]
pub(super) struct IncomingChunk {
    pub meta: SnapshotMeta,
    pub total_bytes: u64,
    pub checksum: u32,
    pub offset: u64,
    pub data: Vec<u8>,
    pub done: bool,
}

/// One member of a Raft cluster together with the chat state machine it replicates.
///
/// Deterministic and free of I/O: every input carries `now`; after any input the shell
/// drains [`Replica::poll_ready`] (through [`crate::effects::drive`]) and sleeps until
/// [`Replica::poll_timeout`].
pub struct Replica {
    pub(super) config: Config,
    /// Members (voters and learners) of the configuration in force other than this one,
    /// sorted: whom a leader replicates to.
    pub(super) peers: Vec<NodeId>,
    /// Membership entries of the log above the applied index, in log order: the last one
    /// is the configuration in force (see `Replica::membership`).
    pub(super) membership_unapplied: Vec<(LogIndex, Membership)>,
    /// A member answered our vote request with `Message::Removed`.
    pub(super) removed_notice: bool,
    /// A leadership transfer this leader is carrying out.
    pub(super) transfer: Option<Transfer>,
    /// Election jitter (stream 0 of the seed).
    pub(super) rng: ChaCha8Rng,
    /// Snapshot jitter: stream [`SNAPSHOT_RNG_STREAM`] of the same seed, so that drawing
    /// thresholds leaves the election timeouts exactly as they were.
    pub(super) snapshot_rng: ChaCha8Rng,
    /// Applied entries after the last snapshot that trigger the next one: the configured
    /// threshold stretched by this replica's own jitter, drawn afresh after each snapshot
    /// ([`Replica::draw_snapshot_threshold`]).
    pub(super) snapshot_threshold_entries: u64,
    pub(super) now: Time,

    // Persistent state (mirrored to storage through `Persist`).
    pub(super) term: Term,
    pub(super) voted_for: Option<NodeId>,
    pub(super) log: RaftLog,
    /// The latest snapshot, whose meta equals `log.snapshot_meta()` when the log has one:
    /// where its bytes are read from to stream it to followers (see
    /// [`crate::snapshot_source`]).
    pub(super) snapshot: Option<SnapshotSource>,
    /// A snapshot of this replica's own state that the shell is saving
    /// (`Ready::snapshot_to_save`); the log is compacted to it only once the shell says
    /// it is durable (`handle_snapshot_saved`). At most one at a time.
    pub(super) snapshot_saving: Option<super::snapshot::SnapshotSaving>,
    /// A follower refused this leader's snapshot as damaged: take a fresh one as soon as
    /// an entry is applied after the current one.
    pub(super) snapshot_refresh_requested: bool,

    // Volatile state.
    pub(super) role: Role,
    pub(super) leader_id: Option<NodeId>,
    pub(super) commit_index: LogIndex,
    pub(super) last_applied: LogIndex,
    pub(super) votes: BTreeSet<NodeId>,
    pub(super) election_deadline: Time,
    pub(super) last_leader_contact: Option<Time>,
    pub(super) heartbeat_deadline: Time,
    pub(super) check_quorum_deadline: Time,
    pub(super) progress: BTreeMap<NodeId, Progress>,
    pub(super) heartbeat_seq: u64,
    pub(super) heartbeat_requested: bool,
    pub(super) replication_requested: bool,
    pub(super) incoming_snapshot: Option<IncomingSnapshot>,
    /// The largest timestamp in the log: new entries are stamped no earlier.
    pub(super) log_time_max: Time,
    /// Entries applied since the state hash was last recomputed (debug builds).
    pub(super) entries_since_hash_check: u64,
    /// A `Ready` carrying this leader's own new entries went out: once the shell asks
    /// for the next one, they are durable and count toward the commit quorum.
    pub(super) own_entries_in_flight: bool,

    pub(super) machine: MachineState,

    // Client requests this replica accepted as leader.
    pub(super) pending_writes: BTreeMap<LogIndex, (Term, RequestId)>,
    /// Linearizable reads that arrived before this leader committed an entry of its term.
    pub(super) reads_awaiting_term_commit: Vec<(RequestId, Query)>,
    pub(super) reads_awaiting_quorum: VecDeque<PendingRead>,
    pub(super) reads_awaiting_apply: VecDeque<PendingRead>,

    pub(super) ready: Ready,
    pub(super) metrics: Metrics,
}

impl Replica {
    /// Starts a replica from what its storage recovered (all default for a new one).
    pub fn new(config: Config, recovered: Recovered, now: Time) -> Result<Replica, ReplicaError> {
        config.validate()?;
        let snapshot_meta = recovered.snapshot.as_ref().map_or(
            SnapshotMeta {
                last_index: LogIndex::ZERO,
                last_term: Term(0),
            },
            |s| s.meta.clone(),
        );
        let machine = match (recovered.snapshot_state, &recovered.snapshot) {
            // Decoded by the store as it checked the file.
            (Some(state), Some(_)) => state,
            (None, Some(snapshot)) => {
                MachineState::decode_from(snapshot, config.snapshot_read_bytes)
                    .map_err(ReplicaError::Snapshot)?
            }
            (_, None) => MachineState::new(&config),
        };
        let mut log = RaftLog::new(snapshot_meta.clone(), recovered.entries)?;
        // A founding member with nothing on disk writes the founding membership as entry
        // 1, at term 0, identical on every founder; a node that joins an existing cluster
        // (no founding members) waits for the leader's log instead.
        let mut founding_persist = Vec::new();
        if recovered.snapshot.is_none()
            && log.last_index() == LogIndex::ZERO
            && !config.members.is_empty()
        {
            let entry = Entry {
                term: Term(0),
                index: LogIndex(1),
                payload: crate::entry::EntryPayload::Membership {
                    timestamp: Time(0),
                    membership: Membership::founding(&config.members),
                },
            };
            log.append(entry.clone());
            founding_persist.push(entry);
        }
        let log_time_max = (snapshot_meta.last_index.0..=log.last_index().0)
            .filter_map(|i| log.entry(LogIndex(i)))
            .map(|e| e.payload.timestamp())
            .fold(machine.log_time, Time::max);
        let mut snapshot_rng = ChaCha8Rng::seed_from_u64(config.rng_seed);
        snapshot_rng.set_stream(SNAPSHOT_RNG_STREAM);
        let mut replica = Replica {
            rng: ChaCha8Rng::seed_from_u64(config.rng_seed),
            snapshot_rng,
            snapshot_threshold_entries: config.snapshot_threshold_entries,
            peers: Vec::new(),
            membership_unapplied: Vec::new(),
            removed_notice: false,
            transfer: None,
            now,
            term: recovered.hard_state.term,
            voted_for: recovered.hard_state.voted_for,
            log,
            snapshot: recovered.snapshot,
            snapshot_saving: None,
            snapshot_refresh_requested: false,
            role: Role::Follower,
            leader_id: None,
            commit_index: snapshot_meta.last_index,
            last_applied: snapshot_meta.last_index,
            votes: BTreeSet::new(),
            election_deadline: now,
            last_leader_contact: None,
            heartbeat_deadline: now,
            check_quorum_deadline: now,
            progress: BTreeMap::new(),
            heartbeat_seq: 0,
            heartbeat_requested: false,
            replication_requested: false,
            incoming_snapshot: None,
            log_time_max,
            entries_since_hash_check: 0,
            own_entries_in_flight: false,
            machine,
            pending_writes: BTreeMap::new(),
            reads_awaiting_term_commit: Vec::new(),
            reads_awaiting_quorum: VecDeque::new(),
            reads_awaiting_apply: VecDeque::new(),
            ready: Ready::default(),
            metrics: Metrics::default(),
            config,
        };
        replica.ready.persist.entries = founding_persist;
        let log_entries: Vec<Entry> = (replica.last_applied.0 + 1..=replica.log.last_index().0)
            .filter_map(|i| replica.log.entry(LogIndex(i)))
            .filter(|e| matches!(e.payload, crate::entry::EntryPayload::Membership { .. }))
            .cloned()
            .collect();
        replica.note_appended_memberships(log_entries.iter());
        replica.refresh_membership();
        replica.reset_election_deadline();
        replica.draw_snapshot_threshold();
        replica.check_invariants();
        Ok(replica)
    }

    // Getters.

    pub fn id(&self) -> NodeId {
        self.config.id
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }
    /// When this replica last heard from the leader of its current term (`None` before
    /// it has heard from one). A leader does not count: its contact with a quorum is
    /// check-quorum's business. Shells use it to decide whether local reads are fresh.
    pub fn last_leader_contact(&self) -> Option<Time> {
        self.last_leader_contact
    }
    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }
    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }
    pub fn last_log_index(&self) -> LogIndex {
        self.log.last_index()
    }
    pub fn first_log_index(&self) -> LogIndex {
        self.log.first_index()
    }
    pub fn log_entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term_at(index)
    }
    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        self.log.snapshot_meta()
    }
    /// Applied entries after the last snapshot at which this replica takes the next one:
    /// `Config::snapshot_threshold_entries` plus this replica's jitter (up to half again).
    pub fn snapshot_threshold_entries(&self) -> u64 {
        self.snapshot_threshold_entries
    }
    pub fn chat(&self) -> &ChatState {
        &self.machine.chat
    }
    /// A hash of the replicated state (chat state, session table, log time) as applied
    /// so far. O(1): kept up to date by every applied command.
    pub fn state_hash(&self) -> u64 {
        self.machine.state_hash()
    }
    /// Recomputes the state hash from scratch and compares it with the incremental one
    /// ([`MachineState::check_hash`]). Linear in the state: for tests and the simulator.
    pub fn check_state_hash(&self) -> Result<(), String> {
        self.machine.check_hash()
    }
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    pub fn pending_request_count(&self) -> usize {
        self.pending_writes.len()
            + self.reads_awaiting_term_commit.len()
            + self.reads_awaiting_quorum.len()
            + self.reads_awaiting_apply.len()
    }
    /// Linearizable reads this leader holds (waiting for a term commit, a quorum or the
    /// apply index): a part of the state the simulator's coverage abstracts.
    pub fn pending_read_count(&self) -> usize {
        self.reads_awaiting_term_commit.len()
            + self.reads_awaiting_quorum.len()
            + self.reads_awaiting_apply.len()
    }
    /// Client sessions in the replicated session table (at most `config().sessions_max`).
    pub fn session_count(&self) -> usize {
        self.machine.sessions.len()
    }

    // Inputs.

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance_clock(now);
        if self.apply_pending() {
            self.apply_committed();
        }
        if self.role == Role::Leader {
            if now >= self.heartbeat_deadline {
                self.heartbeat_deadline = now.saturating_add_us(self.config.heartbeat_interval_us);
                self.on_heartbeat_tick();
            }
            self.expire_transfer();
            if now >= self.check_quorum_deadline {
                self.check_quorum_deadline =
                    now.saturating_add_us(self.config.election_timeout_us_min);
                self.check_quorum();
            }
        } else if now >= self.election_deadline {
            self.on_election_timeout();
        }
        self.check_invariants();
    }

    /// A message from a peer. Anything malformed is counted in
    /// [`Metrics::messages_rejected`] and dropped; nothing a peer sends can panic it.
    pub fn handle_message(&mut self, now: Time, envelope: Envelope) {
        self.advance_clock(now);
        let Envelope { from, to, message } = envelope;
        // Any other node may write: a leader not yet in this replica's configuration
        // (it is joining), or a removed node that has yet to hear it was removed.
        if to != self.config.id || from == self.config.id {
            self.metrics.messages_rejected += 1;
            return;
        }
        self.dispatch(from, message);
        self.check_invariants();
    }

    pub fn handle_client_request(
        &mut self,
        now: Time,
        request_id: RequestId,
        request: ClientRequest,
    ) {
        self.advance_clock(now);
        match request {
            ClientRequest::Write { session, command } => self.propose(request_id, session, command),
            ClientRequest::Read { query, consistency } => self.read(request_id, query, consistency),
            ClientRequest::ChangeMembership(change) => {
                self.propose_membership_change(request_id, change)
            }
        }
        self.check_invariants();
    }

    /// The shell encoded the image it was asked to save (`Ready::snapshot_to_save`),
    /// whose meta is `meta`, and made it durable; `source` reads it back (the shell's
    /// file, in the node): the log may now be compacted to it, and the replica streams it
    /// to followers from there. `None` when the shell's storage declined it as older
    /// than the snapshot it holds (one installed from the leader meanwhile, which the
    /// replica holds too); such a save is simply over.
    pub fn handle_snapshot_saved(
        &mut self,
        now: Time,
        meta: SnapshotMeta,
        source: Option<SnapshotSource>,
    ) {
        self.advance_clock(now);
        self.on_snapshot_saved(meta, source);
        self.check_invariants();
    }

    /// Replaces where the current snapshot's bytes are read from, if `source` is that
    /// snapshot (same meta, length and checksum): the shell attaches its durable file
    /// once it has one for a snapshot the replica holds in memory (one installed from
    /// the leader; a recovered one is read from its file from the start), so the memory
    /// can go. Returns whether it was attached.
    pub fn attach_snapshot_source(&mut self, source: SnapshotSource) -> bool {
        let Some(current) = &self.snapshot else {
            return false;
        };
        let same = current.meta == source.meta
            && current.len_bytes == source.len_bytes
            && current.checksum == source.checksum;
        if same {
            self.snapshot = Some(source);
        }
        same
    }

    /// Whether the current snapshot's bytes are held in memory rather than read from
    /// the shell's file (see [`Replica::attach_snapshot_source`]).
    pub fn snapshot_in_memory(&self) -> bool {
        self.snapshot_bytes_in_memory() > 0
    }

    /// The bytes of the current snapshot held in memory: its length until the shell
    /// attaches its file, 0 after (or without a snapshot).
    pub fn snapshot_bytes_in_memory(&self) -> u64 {
        self.snapshot
            .as_ref()
            .filter(|s| !s.file_backed)
            .map_or(0, |s| s.len_bytes)
    }

    // Commands.

    /// Starts an election now (with pre-vote) instead of waiting for the timeout, as an
    /// operator's leadership transfer or a test script would. A leader ignores it.
    pub fn campaign(&mut self, now: Time) {
        self.advance_clock(now);
        if self.role != Role::Leader {
            self.on_election_timeout();
        }
        self.check_invariants();
    }

    // Outputs.

    /// The outputs accumulated since the last call, or `None` if there are none. See
    /// [`crate::effects`] for the order in which a shell must perform them.
    ///
    /// The replica counts the `Persist` of a returned `Ready` as done: the shell must
    /// complete it before feeding any other input, and stop the replica if it fails.
    pub fn poll_ready(&mut self) -> Option<Ready> {
        self.log.free_retired_step();
        if std::mem::take(&mut self.own_entries_in_flight) && self.role == Role::Leader {
            // The shell performed the last `Ready` (fail-stop otherwise): the leader's
            // own entries are on its disk now, which a lone voter needs to commit.
            self.maybe_commit();
        }
        self.flush();
        if self.ready.is_empty() {
            return None;
        }
        self.check_outgoing_persist();
        self.own_entries_in_flight =
            self.role == Role::Leader && !self.ready.persist.entries.is_empty();
        Some(std::mem::take(&mut self.ready))
    }

    /// The `Persist` about to leave is well-formed and says what this replica holds: its
    /// entries are the tail of the log, its hard state the current one, its snapshot the
    /// latest. Run in debug and simulator builds.
    fn check_outgoing_persist(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let persist = &self.ready.persist;
        if let Err(problem) = persist.check_well_formed() {
            panic!("{} emits a malformed Persist: {problem}", self.config.id);
        }
        if let Some(last) = persist.entries.last() {
            assert_eq!(
                last.index,
                self.log.last_index(),
                "persisted entries end at the log's end"
            );
            assert_eq!(Some(last.term), self.log.term_at(last.index));
        }
        if let Some(hard_state) = persist.hard_state {
            assert_eq!(
                (hard_state.term, hard_state.voted_for),
                (self.term, self.voted_for),
                "the hard state persisted is the current one"
            );
        }
        if let Some(snapshot) = &persist.snapshot {
            assert_eq!(
                &snapshot.meta,
                self.log.snapshot_meta(),
                "the snapshot persisted is the log's base"
            );
        }
        if let Some(from) = persist.truncate_from {
            assert!(
                from > self.log.snapshot_meta().last_index,
                "truncation from {from} reaches into the snapshot"
            );
        }
    }

    /// The next time at which [`Replica::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Time {
        if self.apply_pending() {
            // Committed entries wait to be applied (see `apply_entries_per_step_max`).
            return self.now;
        }
        match self.role {
            Role::Leader => self.heartbeat_deadline.min(self.check_quorum_deadline),
            _ => self.election_deadline,
        }
    }

    // Internals shared by the protocol modules.

    /// Committed entries are waiting to be applied: more than one step's worth were
    /// committed at once (see `Config::apply_entries_per_step_max`).
    pub fn apply_pending(&self) -> bool {
        self.last_applied < self.commit_index
    }

    pub(super) fn advance_clock(&mut self, now: Time) {
        // A shell's clock never goes back; if one does, time simply stands still.
        self.now = self.now.max(now);
    }

    fn dispatch(&mut self, from: NodeId, message: Message) {
        let term = message.term();
        if matches!(
            message,
            Message::PreVote { .. } | Message::RequestVote { .. }
        ) && self.machine.membership.is_removed(from)
        {
            // Removal is committed here and for good: tell the node instead of letting it
            // campaign forever.
            let term = self.term;
            return self.send(from, Message::Removed { term });
        }
        match message {
            Message::Removed { .. } => return self.handle_removed(from),
            Message::PreVote {
                term,
                last_log_index,
                last_log_term,
            } => {
                return self.handle_pre_vote(from, term, last_log_index, last_log_term);
            }
            Message::PreVoteResponse { term, granted } => {
                return self.handle_pre_vote_response(from, term, granted);
            }
            _ => {}
        }
        if term > self.term {
            if matches!(
                message,
                Message::RequestVote {
                    leadership_transfer: false,
                    ..
                }
            ) && self.in_leader_lease()
            {
                // Check-quorum: while a leader is known to be alive, a higher-term vote
                // request comes from a disruptive node and is ignored.
                return;
            }
            let leader = match message {
                Message::AppendEntries { .. }
                | Message::Heartbeat { .. }
                | Message::InstallSnapshot { .. } => Some(from),
                _ => None,
            };
            let (role, deadline) = (self.role, self.election_deadline);
            self.become_follower(term, leader);
            if matches!(message, Message::RequestVote { .. }) && role != Role::Leader {
                // Only a vote granted resets the election timer (Figure 2), not a vote
                // request's higher term: otherwise candidates whose logs are behind
                // (which cannot win) keep postponing the one node that can, round after
                // round, whenever pre-vote is off.
                self.election_deadline = deadline;
            }
        } else if term < self.term {
            return self.answer_stale_term(from, &message);
        }
        match message {
            Message::RequestVote {
                last_log_index,
                last_log_term,
                ..
            } => self.handle_request_vote(from, last_log_index, last_log_term),
            Message::RequestVoteResponse { granted, .. } => {
                self.handle_request_vote_response(from, granted)
            }
            Message::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                ..
            } => self.handle_append_entries(
                from,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            ),
            Message::AppendEntriesResponse {
                success,
                index,
                hint,
                ..
            } => self.handle_append_entries_response(from, success, index, hint),
            Message::Heartbeat { commit, seq, .. } => self.handle_heartbeat(from, commit, seq),
            Message::HeartbeatResponse {
                seq,
                last_log_index,
                ..
            } => self.handle_heartbeat_response(from, seq, last_log_index),
            Message::InstallSnapshot {
                meta,
                total_bytes,
                checksum,
                offset,
                data,
                done,
                ..
            } => self.handle_install_snapshot(
                from,
                IncomingChunk {
                    meta,
                    total_bytes,
                    checksum,
                    offset,
                    data,
                    done,
                },
            ),
            Message::InstallSnapshotResponse {
                last_index,
                next_offset,
                installed,
                refused,
                ..
            } => self.handle_install_snapshot_response(
                from,
                last_index,
                next_offset,
                installed,
                refused,
            ),
            Message::TimeoutNow { .. } => self.handle_timeout_now(from),
            Message::PreVote { .. } | Message::PreVoteResponse { .. } | Message::Removed { .. } => {
                unreachable!("handled above")
            }
        }
    }

    /// A message from an older term: tell a stale leader or candidate about the new term
    /// so it steps down; drop stale responses.
    fn answer_stale_term(&mut self, from: NodeId, message: &Message) {
        let reply = match message {
            Message::AppendEntries { prev_log_index, .. } => Message::AppendEntriesResponse {
                term: self.term,
                success: false,
                index: *prev_log_index,
                hint: None,
            },
            Message::Heartbeat { seq, .. } => Message::HeartbeatResponse {
                term: self.term,
                seq: *seq,
                last_log_index: self.log.last_index(),
            },
            Message::InstallSnapshot { meta, .. } => Message::InstallSnapshotResponse {
                term: self.term,
                last_index: meta.last_index,
                next_offset: 0,
                installed: false,
                refused: false,
            },
            Message::RequestVote { .. } => Message::RequestVoteResponse {
                term: self.term,
                granted: false,
            },
            _ => return,
        };
        self.send(from, reply);
    }

    pub(super) fn send(&mut self, to: NodeId, message: Message) {
        debug_assert_ne!(to, self.config.id);
        let replication = matches!(
            message,
            Message::AppendEntries { .. }
                | Message::Heartbeat { .. }
                | Message::InstallSnapshot { .. }
        );
        let envelope = Envelope {
            from: self.config.id,
            to,
            message,
        };
        if replication && self.role == Role::Leader {
            // See `effects`: it promises nothing about this replica's disk.
            self.ready.messages_before_persist.push(envelope);
        } else {
            self.ready.messages.push(envelope);
        }
    }

    pub(super) fn persist_hard_state(&mut self) {
        self.ready.persist.hard_state = Some(HardState {
            term: self.term,
            voted_for: self.voted_for,
        });
    }

    pub(super) fn reject(&mut self) {
        self.metrics.messages_rejected += 1;
    }

    /// Work deferred to the end of a batch of inputs so that it is done once per batch:
    /// replication messages (batching entries proposed together) and the heartbeat round
    /// that confirms pending reads.
    fn flush(&mut self) {
        if self.role != Role::Leader {
            self.replication_requested = false;
            self.heartbeat_requested = false;
            return;
        }
        if self.heartbeat_requested {
            self.heartbeat_requested = false;
            self.broadcast_heartbeat();
        }
        if self.replication_requested {
            self.replication_requested = false;
            for peer in self.peers.clone() {
                self.send_append_entries(peer);
            }
        }
        self.check_invariants();
    }

    /// In debug builds, after an entry is applied: recomputes the state hash when due (see
    /// [`HASH_CHECK_INTERVAL_ENTRIES_MIN`]) and panics if the incremental one drifted.
    pub(super) fn sample_state_hash(&mut self) {
        if !cfg!(debug_assertions) {
            return;
        }
        self.entries_since_hash_check += 1;
        let interval = HASH_CHECK_INTERVAL_ENTRIES_MIN
            .max(HASH_CHECK_ENTRIES_PER_ITEM.saturating_mul(self.machine.item_count()));
        if self.entries_since_hash_check < interval {
            return;
        }
        self.entries_since_hash_check = 0;
        if let Err(problem) = self.machine.check_hash() {
            panic!(
                "{} at applied index {}: {problem}",
                self.config.id, self.last_applied
            );
        }
    }

    /// Invariants that hold between inputs. Run in debug and test builds.
    pub(super) fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(
            self.commit_index <= self.log.last_index(),
            "commit beyond the log"
        );
        assert!(
            self.last_applied <= self.commit_index,
            "applied beyond commit"
        );
        assert!(
            self.log.snapshot_meta().last_index <= self.last_applied,
            "snapshot of unapplied state"
        );
        if let Some(saving) = &self.snapshot_saving {
            assert!(
                saving.meta.last_index <= self.last_applied,
                "saving a snapshot of unapplied state"
            );
        }
        if let Some(snapshot) = &self.snapshot {
            assert_eq!(
                &snapshot.meta,
                self.log.snapshot_meta(),
                "snapshot and log disagree"
            );
        } else {
            assert_eq!(
                self.log.snapshot_meta().last_index,
                LogIndex::ZERO,
                "compacted log without a snapshot"
            );
        }
        match self.role {
            Role::Leader => {
                assert_eq!(
                    self.voted_for,
                    Some(self.config.id),
                    "a leader voted for itself"
                );
                assert_eq!(self.leader_id, Some(self.config.id));
                assert_eq!(self.progress.len(), self.peers.len());
                for progress in self.progress.values() {
                    assert!(progress.match_index <= self.log.last_index());
                    assert!(progress.in_flight.len() <= self.config.in_flight_messages_max);
                }
            }
            Role::Candidate => assert_eq!(self.voted_for, Some(self.config.id)),
            Role::Follower | Role::PreCandidate => {
                assert!(
                    self.pending_writes
                        .last_key_value()
                        .is_none_or(|(&index, _)| index <= self.commit_index),
                    "a follower holds only committed writes, awaiting their apply"
                );
            }
        }
        assert!(self.pending_request_count() <= self.config.pending_requests_max + 1);
        if self.transfer.is_some() {
            assert_eq!(
                self.role,
                Role::Leader,
                "only a leader transfers leadership"
            );
        }
        self.check_membership_invariants();
    }

    /// A member says our removal is committed. Ids are never reused, so this is final.
    fn handle_removed(&mut self, from: NodeId) {
        if !self.membership().contains(from) {
            return self.reject();
        }
        self.removed_notice = true;
        if self.role != Role::Follower {
            self.become_follower(self.term, None);
        }
    }
}
