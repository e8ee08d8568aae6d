//! A small deterministic in-memory cluster: the only place the tests touch the replica
//! API. Messages take a fixed latency; time jumps from event to event; partitions and
//! message filters decide what is delivered; each replica's durable state is modelled
//! exactly as `Persist` describes it, so crashes and restarts are real.

use chat_core::app::{Auth, Command, CommandOutput, Query};
use chat_core::entry::{Entry, HardState, Persist, SessionRef, Snapshot};
use chat_core::membership::MembershipChange;
use chat_core::snapshot_source::SnapshotSource;
use chat_core::{
    drive, ClientError, ClientRequest, Config, Envelope, LogIndex, NodeId, ReadConsistency,
    Recovered, Replica, Reply, RequestId, Response, Role, SessionId, Shell, Term, Time,
    TransferError,
};
use std::collections::{BTreeMap, BTreeSet};

pub const LATENCY_US: u64 = 1_000;

pub fn ms(ms: u64) -> u64 {
    ms * 1_000
}

/// What survives a crash: exactly what the replica asked to persist.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    pub entries: BTreeMap<LogIndex, Entry>,
    pub persist_count: u64,
}

impl Durable {
    fn apply(&mut self, persist: &Persist) {
        self.persist_count += 1;
        if let Some(snapshot) = &persist.snapshot {
            let last = snapshot.meta.last_index;
            self.entries.retain(|&i, _| i > last);
            self.snapshot = Some(snapshot.clone());
        }
        if let Some(from) = persist.truncate_from {
            self.entries.retain(|&i, _| i < from);
        }
        for entry in &persist.entries {
            self.entries.insert(entry.index, entry.clone());
        }
        if let Some(hard_state) = persist.hard_state {
            assert!(
                hard_state.term >= self.hard_state.term,
                "persisted term went backwards"
            );
            self.hard_state = hard_state;
        }
    }

    /// A snapshot the replica asked to save, made durable: newer than the one held, it
    /// replaces it and the entries it covers.
    fn save_snapshot(&mut self, snapshot: &Snapshot) {
        let held = self
            .snapshot
            .as_ref()
            .map_or(LogIndex::ZERO, |s| s.meta.last_index);
        if snapshot.meta.last_index > held {
            let last = snapshot.meta.last_index;
            self.entries.retain(|&i, _| i > last);
            self.snapshot = Some(snapshot.clone());
        }
    }

    pub fn recovered(&self) -> Recovered {
        Recovered {
            hard_state: self.hard_state,
            snapshot: self.snapshot.as_ref().map(SnapshotSource::in_memory),
            snapshot_state: None,
            entries: self.entries.values().cloned().collect(),
        }
    }
}

type Filter = Box<dyn FnMut(&Envelope) -> bool>;
type Tamper = Box<dyn FnMut(&mut Envelope)>;

pub struct Cluster {
    pub now: Time,
    members: Vec<NodeId>,
    configs: BTreeMap<NodeId, Config>,
    pub replicas: BTreeMap<NodeId, Replica>,
    pub durable: BTreeMap<NodeId, Durable>,
    in_flight: BTreeMap<(Time, u64), Envelope>,
    message_seq: u64,
    blocked: BTreeSet<(NodeId, NodeId)>,
    filter: Option<Filter>,
    tamper: Option<Tamper>,
    pub replies: BTreeMap<RequestId, Result<Response, ClientError>>,
    pub deliveries: BTreeMap<NodeId, Vec<chat_core::app::Delivery>>,
    next_request: u64,
    pub trace: Vec<String>,
    pub tracing: bool,
    leaders_by_term: BTreeMap<Term, NodeId>,
    committed: BTreeMap<LogIndex, Term>,
}

struct HarnessShell<'a> {
    id: NodeId,
    now: Time,
    durable: &'a mut Durable,
    outbox: Vec<Envelope>,
    replies: &'a mut BTreeMap<RequestId, Result<Response, ClientError>>,
    deliveries: &'a mut Vec<chat_core::app::Delivery>,
    trace: Option<&'a mut Vec<String>>,
    /// Snapshots to save, saved (and reported) once the drive is over.
    to_save: Vec<chat_core::machine::SnapshotImage>,
}

impl Shell for HarnessShell<'_> {
    type Error = std::convert::Infallible;
    fn persist(&mut self, persist: &Persist) -> Result<(), Self::Error> {
        self.durable.apply(persist);
        Ok(())
    }
    fn send(&mut self, envelope: Envelope) {
        self.outbox.push(envelope);
    }
    fn reply(&mut self, reply: Reply) {
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.push(format!(
                "t={} {} reply {:?} {:?}",
                self.now, self.id, reply.request_id, reply.outcome
            ));
        }
        self.replies.insert(reply.request_id, reply.outcome);
    }
    fn deliver(&mut self, delivery: chat_core::app::Delivery) {
        self.deliveries.push(delivery);
    }
    fn save_snapshot(&mut self, image: chat_core::machine::SnapshotImage) {
        self.to_save.push(image);
    }
}

pub fn config(id: u64, n: u64) -> Config {
    let mut config = Config::new(NodeId(id), (1..=n).map(NodeId).collect());
    config.rng_seed = 0x5eed_0000 + id;
    config
}

impl Cluster {
    pub fn new(n: u64) -> Cluster {
        Cluster::with_configs((1..=n).map(|id| config(id, n)).collect())
    }

    pub fn with_configs(configs: Vec<Config>) -> Cluster {
        let members: Vec<NodeId> = configs.iter().map(|c| c.id).collect();
        let mut cluster = Cluster {
            now: Time(0),
            members: members.clone(),
            configs: configs.into_iter().map(|c| (c.id, c)).collect(),
            replicas: BTreeMap::new(),
            durable: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            message_seq: 0,
            blocked: BTreeSet::new(),
            filter: None,
            tamper: None,
            replies: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            next_request: 0,
            trace: Vec::new(),
            tracing: false,
            leaders_by_term: BTreeMap::new(),
            committed: BTreeMap::new(),
        };
        for id in members {
            cluster.durable.insert(id, Durable::default());
            cluster.restart(id.0);
        }
        cluster
    }

    /// Starts a node that joins the running cluster: no founding members, an empty disk.
    pub fn join(&mut self, id: u64) {
        let mut config = Config::new(NodeId(id), Vec::new());
        config.rng_seed = 0x5eed_0000 + id;
        self.join_with(config);
    }

    pub fn join_with(&mut self, config: Config) {
        let id = config.id;
        self.members.push(id);
        self.configs.insert(id, config);
        self.durable.insert(id, Durable::default());
        self.restart(id.0);
    }

    /// An operator's membership change through whichever node leads, waiting for the
    /// answer.
    pub fn change(&mut self, change: MembershipChange) -> Result<Response, ClientError> {
        let leader = self.wait_for_ready_leader();
        let request_id = self.request(leader, ClientRequest::ChangeMembership(change));
        self.outcome(request_id)
    }

    /// Asks `node` to hand its leadership over.
    pub fn transfer(&mut self, node: NodeId, target: Option<u64>) -> Result<NodeId, TransferError> {
        let mut outcome = None;
        self.with_replica(node, |r, now| {
            outcome = Some(r.transfer_leadership(now, target.map(NodeId)));
        });
        outcome.expect("the node is up")
    }

    pub fn replica(&self, id: u64) -> &Replica {
        &self.replicas[&NodeId(id)]
    }

    pub fn crash(&mut self, id: u64) {
        self.note(format!("{} crash", NodeId(id)));
        self.replicas.remove(&NodeId(id));
    }

    pub fn restart(&mut self, id: u64) {
        let id = NodeId(id);
        self.note(format!("{id} restart"));
        let recovered = self.durable[&id].recovered();
        let replica =
            Replica::new(self.configs[&id].clone(), recovered, self.now).expect("recovers");
        self.replicas.insert(id, replica);
    }

    pub fn isolate(&mut self, id: u64) {
        self.note(format!("isolate {}", NodeId(id)));
        for &other in &self.members {
            if other != NodeId(id) {
                self.blocked.insert((NodeId(id), other));
                self.blocked.insert((other, NodeId(id)));
            }
        }
    }

    pub fn block(&mut self, from: u64, to: u64) {
        self.blocked.insert((NodeId(from), NodeId(to)));
    }

    pub fn heal(&mut self) {
        self.note("heal".to_string());
        self.blocked.clear();
        self.filter = None;
        self.tamper = None;
    }

    /// Alters messages in flight (a bit flip on the wire, a sender's rotted disk) until
    /// `heal`.
    pub fn set_tamper(&mut self, tamper: impl FnMut(&mut Envelope) + 'static) {
        self.tamper = Some(Box::new(tamper));
    }

    /// Drops every message for which `drop` returns true, until `heal`.
    pub fn set_filter(&mut self, drop: impl FnMut(&Envelope) -> bool + 'static) {
        self.filter = Some(Box::new(drop));
    }

    fn note(&mut self, line: String) {
        if self.tracing {
            self.trace.push(format!("t={} {line}", self.now));
        }
    }

    /// Runs one replica input and performs its outputs.
    fn with_replica(&mut self, id: NodeId, input: impl FnOnce(&mut Replica, Time)) {
        let now = self.now;
        let Some(replica) = self.replicas.get_mut(&id) else {
            return;
        };
        let applied_before = replica.last_applied();
        input(replica, now);
        let mut shell = HarnessShell {
            id,
            now,
            durable: self.durable.get_mut(&id).expect("every member has a disk"),
            outbox: Vec::new(),
            replies: &mut self.replies,
            deliveries: self.deliveries.entry(id).or_default(),
            trace: if self.tracing {
                Some(&mut self.trace)
            } else {
                None
            },
            to_save: Vec::new(),
        };
        let Ok(()) = drive(replica, &mut shell);
        // Saving takes no simulated time here: each snapshot is durable and reported
        // right after the drive that asked for it (the simulator delays it).
        while let Some(image) = shell.to_save.pop() {
            let snapshot = image.encode();
            shell.durable.save_snapshot(&snapshot);
            let source = SnapshotSource::in_memory(&snapshot);
            replica.handle_snapshot_saved(now, snapshot.meta, Some(source));
            let Ok(()) = drive(replica, &mut shell);
        }
        // After every input that moved the applied state (applied entries or installed a
        // snapshot), its incremental hash must equal a recomputation from scratch.
        if replica.last_applied() != applied_before {
            if let Err(problem) = replica.check_state_hash() {
                panic!("{id}: {problem}");
            }
        }
        for envelope in std::mem::take(&mut shell.outbox) {
            self.message_seq += 1;
            self.in_flight.insert(
                (now.saturating_add_us(LATENCY_US), self.message_seq),
                envelope,
            );
        }
        self.check_safety();
    }

    /// Advances virtual time by `duration_us`, delivering messages and firing timers in
    /// time order.
    pub fn run_for(&mut self, duration_us: u64) {
        let end = self.now.saturating_add_us(duration_us);
        self.run_until_time(end, &mut |_| false);
    }

    /// Runs until `done` holds (checked after every event) or `limit_us` passes. Returns
    /// whether `done` held.
    pub fn run_until(&mut self, limit_us: u64, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        let end = self.now.saturating_add_us(limit_us);
        self.run_until_time(end, &mut done)
    }

    fn run_until_time(&mut self, end: Time, done: &mut dyn FnMut(&Cluster) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let next_message = self.in_flight.keys().next().map(|&(t, _)| t);
            let next_timer = self
                .replicas
                .iter()
                .map(|(&id, r)| (r.poll_timeout(), id))
                .min();
            let next = match (next_message, next_timer) {
                (Some(m), Some((t, _))) => m.min(t),
                (Some(m), None) => m,
                (None, Some((t, _))) => t,
                (None, None) => end,
            };
            if next > end {
                self.now = end;
                return done(self);
            }
            self.now = self.now.max(next);
            if next_message == Some(next) {
                let (_, envelope) = self.in_flight.pop_first().expect("checked above");
                self.deliver(envelope);
            } else if let Some((_, id)) = next_timer {
                self.with_replica(id, |r, now| r.handle_timeout(now));
            }
        }
    }

    fn deliver(&mut self, mut envelope: Envelope) {
        if self.blocked.contains(&(envelope.from, envelope.to)) {
            return;
        }
        if let Some(filter) = self.filter.as_mut() {
            if filter(&envelope) {
                return;
            }
        }
        if let Some(tamper) = self.tamper.as_mut() {
            tamper(&mut envelope);
        }
        if !self.replicas.contains_key(&envelope.to) {
            return;
        }
        self.note(format!(
            "{} <- {} {}",
            envelope.to, envelope.from, envelope.message
        ));
        let to = envelope.to;
        self.with_replica(to, |r, now| r.handle_message(now, envelope));
    }

    /// Safety, checked after every input: one leader per term, and a committed entry never
    /// changes.
    fn check_safety(&mut self) {
        for (&id, replica) in &self.replicas {
            if replica.role() == Role::Leader {
                let leader = *self.leaders_by_term.entry(replica.term()).or_insert(id);
                assert_eq!(leader, id, "two leaders in term {}", replica.term());
            }
            let first = replica.first_log_index();
            for index in first.0..=replica.commit_index().0 {
                let index = LogIndex(index);
                let Some(term) = replica.term_at(index) else {
                    continue;
                };
                let committed = *self.committed.entry(index).or_insert(term);
                assert_eq!(committed, term, "committed entry {index} changed on {id}");
            }
        }
    }

    pub fn leader(&self) -> Option<NodeId> {
        let mut leaders: Vec<(Term, NodeId)> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.role() == Role::Leader)
            .map(|(&id, r)| (r.term(), id))
            .collect();
        leaders.sort();
        leaders.last().map(|&(_, id)| id)
    }

    pub fn wait_for_leader(&mut self) -> NodeId {
        assert!(
            self.run_until(ms(10_000), |c| c.leader().is_some()),
            "no leader elected within 10s"
        );
        self.leader().expect("checked")
    }

    /// A leader that committed an entry of its term: it knows the commit index, and may
    /// propose a membership change.
    pub fn wait_for_ready_leader(&mut self) -> NodeId {
        let ready = self.run_until(ms(10_000), |c| {
            c.leader().is_some_and(|leader| {
                let r = &c.replicas[&leader];
                r.term_at(r.commit_index()) == Some(r.term())
            })
        });
        assert!(ready, "no leader committed an entry of its term within 10s");
        self.leader().expect("checked")
    }

    pub fn request(&mut self, node: NodeId, request: ClientRequest) -> RequestId {
        self.next_request += 1;
        let request_id = RequestId(self.next_request);
        self.with_replica(node, |r, now| {
            r.handle_client_request(now, request_id, request)
        });
        request_id
    }

    /// A write in session `session` (an id `open` returned) at `seq`; account creation
    /// and session opening ignore both, as they take no session.
    pub fn write(&mut self, node: NodeId, session: u64, seq: u64, command: Command) -> RequestId {
        let session = command.session_auth().map(|_| SessionRef {
            id: SessionId(session),
            seq,
        });
        self.request(node, ClientRequest::Write { session, command })
    }

    /// Opens a session for `auth` through the leader; returns its id for `write`.
    pub fn open(&mut self, auth: &Auth) -> u64 {
        match self.write_ok(0, 0, open_session(auth)) {
            CommandOutput::SessionOpened { session } => session.0,
            other => panic!("opening a session answered {other:?}"),
        }
    }

    pub fn read(&mut self, node: NodeId, query: Query, consistency: ReadConsistency) -> RequestId {
        self.request(node, ClientRequest::Read { query, consistency })
    }

    /// Waits for the answer to a request.
    pub fn outcome(&mut self, request_id: RequestId) -> Result<Response, ClientError> {
        assert!(
            self.run_until(ms(5_000), |c| c.replies.contains_key(&request_id)),
            "no reply to {request_id:?}"
        );
        self.replies[&request_id].clone()
    }

    /// Writes through whichever node leads, waiting for the answer.
    pub fn write_ok(&mut self, client: u64, seq: u64, command: Command) -> CommandOutput {
        let leader = self.wait_for_leader();
        let request_id = self.write(leader, client, seq, command);
        match self.outcome(request_id) {
            Ok(Response::Command(output)) => output,
            other => panic!("write failed: {other:?}"),
        }
    }

    /// Every live member holds the same log up to its commit index and the same state
    /// once applied to the same point (removed nodes stopped following).
    pub fn assert_converged(&self) {
        let replicas: Vec<&Replica> = self.replicas.values().filter(|r| !r.is_removed()).collect();
        let reference = replicas[0];
        for replica in &replicas[1..] {
            assert_eq!(
                replica.last_applied(),
                reference.last_applied(),
                "{} applied differently",
                replica.id()
            );
            assert_eq!(
                replica.state_hash(),
                reference.state_hash(),
                "{} state differs",
                replica.id()
            );
        }
    }
}

pub fn create(user: &str) -> Command {
    Command::CreateAccount {
        user: user.to_string(),
        password_hash: format!("$argon2id$hash-of-{user}"),
        // One registration per name in these tests: a retry repeats it.
        registration: u128::from_le_bytes(*b"test-registered!"),
    }
}

pub fn open_session(auth: &Auth) -> Command {
    Command::OpenSession { auth: auth.clone() }
}

pub fn auth(user: &str, generation: u64) -> Auth {
    Auth {
        user: user.to_string(),
        generation,
        token_epoch: 0,
    }
}

pub fn send(from: &Auth, to: &str, body: &str) -> Command {
    Command::Send {
        auth: from.clone(),
        to: to.to_string(),
        body: body.to_string(),
    }
}
