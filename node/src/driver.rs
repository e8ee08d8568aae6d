//! The one thread that owns the [`Replica`] and its [`LogStore`].
//!
//! Everything else talks to it through one bounded channel of [`Input`]s. The loop waits
//! for an input or the replica's next deadline, then drains every queued input, then runs
//! `chat_core::drive` once: all the writes those inputs caused go to disk in one
//! `LogStore::persist` (one fsync per batch: group commit) before any message, reply or
//! delivery leaves. The thread is dedicated (not a tokio task) because the fsync blocks.

use crate::clock::Clock;
use crate::disk::{FsDisk, WritePacing};
use crate::members::AddressBook;
use crate::metrics::{CoreMetrics, CoreObserver};
use crate::peers::PeerRouter;
use chat_core::app::Delivery;
use chat_core::entry::{Persist, SnapshotMeta};
use chat_core::machine::SnapshotImage;
use chat_core::membership::Membership;
use chat_core::storage::{stage_snapshot_image, LogStore, StorageError};
use chat_core::{
    drive, ClientError, ClientRequest, Envelope, LogIndex, NodeId, Replica, Reply, RequestId,
    Response, Role, Shell, Term, TransferError,
};
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot, watch};

/// Inputs queued for the core thread before senders are told it is busy.
pub const INPUT_QUEUE_CAPACITY: usize = 8_192;
/// Inputs handled between two drives, so that time and timers are not starved.
const INPUTS_PER_BATCH_MAX: usize = 4_096;
/// How fast the snapshot writer writes (see [`WritePacing`]): a 275 MB snapshot takes
/// about 4 s, well inside the 9 to 14 s between two of one node at 7,000 writes/s.
/// The price: the image lives that long, so the live state copies (pointers, not
/// messages) every account it changes meanwhile, and the log is compacted that much
/// later. At 1M messages the members' RSS stayed at 2.30x the stored bytes (runs H, I).
pub const SNAPSHOT_WRITE_PACING: WritePacing = WritePacing {
    bytes_per_sec: 64 << 20,
    sync_every_bytes: 4 << 20,
};
/// Live deliveries buffered per listener before it must catch up from the state.
pub const DELIVERY_BUFFER: usize = 4_096;

pub type ReplyTx = oneshot::Sender<Result<Response, ClientError>>;

/// What listeners hear from the core thread.
#[derive(Clone, Debug)]
pub enum Live {
    /// A message was applied.
    Delivery(Arc<Delivery>),
    /// The replica installed a snapshot: its applied state jumped without deliveries for
    /// the entries the snapshot covers, so every listener must catch up from the state.
    /// Sent before the deliveries of the same batch, which a listener that caught up
    /// then skips as already seen. (Found by the simulator's `delivery` check.)
    Resync,
}

pub enum Input {
    Peer(Envelope),
    Client {
        request: ClientRequest,
        reply: ReplyTx,
    },
    Status(oneshot::Sender<StatusSnapshot>),
    /// An operator asks the leader to hand leadership over (to the voter named, or the
    /// most up-to-date one); answered with the voter chosen.
    TransferLeadership {
        target: Option<NodeId>,
        reply: oneshot::Sender<Result<NodeId, TransferError>>,
    },
    /// An operator's backup: a copy-on-write image of the applied state, to encode off
    /// the core thread (`None`: nothing applied).
    ExportSnapshot(oneshot::Sender<Option<SnapshotImage>>),
    /// The snapshot writer encoded the replica's image of `meta` straight into the
    /// staged file and synced it (or failed to); the core commits it and hands the
    /// replica a reader of the file.
    SnapshotStaged {
        meta: SnapshotMeta,
        outcome: Result<(), StorageError>,
    },
    Shutdown,
}

/// This replica's view, for the Status call.
#[derive(Clone, Debug)]
pub struct StatusSnapshot {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader_id: Option<NodeId>,
    pub commit_index: LogIndex,
    pub last_applied: LogIndex,
    pub last_log_index: LogIndex,
    pub state_hash: u64,
}

/// What other tasks wait on, published by the core thread after every drive so that
/// nobody polls the core for it (the full [`StatusSnapshot`] hashes the whole state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    pub role: Role,
    pub term: Term,
    pub leader_id: Option<NodeId>,
    pub commit_index: LogIndex,
    pub last_applied: LogIndex,
    pub last_log_index: LogIndex,
    /// Until when this replica's applied state is known to be recent enough to serve
    /// local reads (`None`: not now). A follower: one minimum election timeout after it
    /// last heard from the leader, the same bound under which it refuses to vote (the
    /// leader lease). A leader: one minimum election timeout after its last drive, which
    /// happens at least every heartbeat while check-quorum keeps it leader; a leader cut
    /// off steps down within two election timeouts, and its lease then ends.
    /// Updating it alone does not wake waiters: readers check it when they need it.
    pub fresh_until: Option<Instant>,
    /// This replica knows it was removed from the cluster: its node stops serving.
    pub removed: bool,
}

impl ReplicaView {
    /// May this replica serve local reads at `now`? (See [`ReplicaView::fresh_until`].)
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.fresh_until.is_some_and(|until| now < until)
    }

    fn of(replica: &Replica, clock: &Clock) -> ReplicaView {
        let lease = Duration::from_micros(replica.config().election_timeout_us_min);
        let now = Instant::now();
        let fresh_until = match (replica.role(), replica.leader_id()) {
            (Role::Leader, _) => Some(now + lease),
            (Role::Follower, Some(_)) => replica.last_leader_contact().and_then(|contact| {
                let since = Duration::from_micros(clock.now().saturating_since_us(contact));
                lease.checked_sub(since).map(|left| now + left)
            }),
            _ => None,
        };
        ReplicaView {
            role: replica.role(),
            term: replica.term(),
            leader_id: replica.leader_id(),
            commit_index: replica.commit_index(),
            last_applied: replica.last_applied(),
            last_log_index: replica.last_log_index(),
            fresh_until,
            removed: replica.is_removed(),
        }
    }
}

/// Who leads, as this replica last saw it: the part of the [`ReplicaView`] a call needs
/// to refuse at once on a follower (before paying for a password hash, say) without a
/// round trip to the core thread; core still decides, this only saves work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub role: Role,
    pub leader_id: Option<NodeId>,
}

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct CoreHandle {
    inputs: SyncSender<Input>,
    deliveries: broadcast::Sender<Live>,
    view: watch::Receiver<ReplicaView>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("node is busy; retry")]
    Busy,
    #[error("node is shutting down")]
    Stopped,
}

impl CoreHandle {
    pub fn submit(&self, input: Input) -> Result<(), SubmitError> {
        self.inputs.try_send(input).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::Busy,
            TrySendError::Disconnected(_) => SubmitError::Stopped,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.deliveries.subscribe()
    }

    /// The replica's published view: `borrow()` for the latest, `wait_for` to wait for
    /// the applied index, the log or the leader to change.
    pub fn view(&self) -> watch::Receiver<ReplicaView> {
        self.view.clone()
    }

    /// This replica's role and known leader as of its last drive.
    pub fn leadership(&self) -> Leadership {
        let view = self.view.borrow();
        Leadership {
            role: view.role,
            leader_id: view.leader_id,
        }
    }
}

/// Starts the core thread. It returns when it receives [`Input::Shutdown`] (after the
/// batch in progress, fsync included, is done) or with the storage error that stopped it
/// (fail-stop: the replica already counted on the write). Either way `stopped` fires, so
/// the server stops too.
pub fn spawn(
    replica: Replica,
    store: LogStore<FsDisk>,
    clock: Clock,
    router: PeerRouter,
    book: AddressBook,
    metrics: CoreMetrics,
    stopped: oneshot::Sender<()>,
) -> std::io::Result<(
    CoreHandle,
    std::thread::JoinHandle<Result<(), StorageError>>,
)> {
    let (inputs, receiver) = std::sync::mpsc::sync_channel(INPUT_QUEUE_CAPACITY);
    let (deliveries, _) = broadcast::channel(DELIVERY_BUFFER);
    let (view_tx, view) = watch::channel(ReplicaView::of(&replica, &clock));
    let snapshot_writer = spawn_snapshot_writer(
        replica.id(),
        FsDisk::open(store.disk().dir())
            .map_err(std::io::Error::other)?
            .with_write_pacing(SNAPSHOT_WRITE_PACING),
        inputs.clone(),
        metrics.clone(),
    )?;
    let handle = CoreHandle {
        inputs,
        deliveries: deliveries.clone(),
        view,
    };
    let core = Core {
        replica,
        clock,
        view: view_tx,
        shell: NodeShell {
            store,
            router,
            pending: BTreeMap::new(),
            deliveries,
            persists: 0,
            entries_persisted: 0,
            metrics: metrics.clone(),
            snapshot_writer,
        },
        observer: CoreObserver::new(metrics),
        book,
        membership_seen: None,
        snapshot_attach_tried: None,
        next_request_id: 0,
        snapshots_installed: 0,
        counters: Counters::default(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("core-{}", core.replica.id().0))
        .spawn(move || {
            let result = core.run(receiver);
            if let Err(error) = &result {
                tracing::error!("{error}");
            }
            // The server may be gone already.
            let _ = stopped.send(());
            result
        })?;
    Ok((handle, thread))
}

/// Starts the thread that saves the replica's own snapshots off the core thread (all
/// of the slow part: encoding the image, writing the bytes, the fsync), with its own
/// handle on the data dir. It stages each snapshot and reports back, with its bytes,
/// through the core's inputs; the core thread commits it (a rename) and only then lets
/// the replica compact its log. It ends when the core drops its sender.
fn spawn_snapshot_writer(
    id: NodeId,
    mut disk: FsDisk,
    inputs: SyncSender<Input>,
    metrics: CoreMetrics,
) -> std::io::Result<SyncSender<SnapshotImage>> {
    // The replica saves one snapshot at a time: a slot for it is enough.
    let (images, receiver) = std::sync::mpsc::sync_channel::<SnapshotImage>(1);
    std::thread::Builder::new()
        .name(format!("snapshots-{}", id.0))
        .spawn(move || {
            for image in receiver {
                let started = Instant::now();
                // Encoded into the file as it is written: the bytes are never all in
                // memory, here or in the replica (which reads the file back to send it).
                let staged = stage_snapshot_image(&mut disk, &image);
                let meta = image.meta.clone();
                // The image shares accounts with the live state, which copies each one it
                // changes while the image lives: let go of it as soon as it is written.
                drop(image);
                let bytes = *staged.as_ref().unwrap_or(&0);
                metrics.snapshot_staged(bytes as usize, started.elapsed());
                tracing::info!(
                    last_index = meta.last_index.0,
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    ok = staged.is_ok(),
                    "snapshot staged"
                );
                let outcome = staged.map(|_| ());
                // Blocking is fine here (this thread has nothing else to do); an error
                // means the core has stopped, and with it the need for the snapshot.
                if inputs
                    .send(Input::SnapshotStaged { meta, outcome })
                    .is_err()
                {
                    return;
                }
            }
        })?;
    Ok(images)
}

struct Core {
    replica: Replica,
    clock: Clock,
    view: watch::Sender<ReplicaView>,
    shell: NodeShell,
    /// Snapshots the replica had installed at the last drive (see [`Live::Resync`]).
    snapshots_installed: u64,
    next_request_id: u64,
    counters: Counters,
    observer: CoreObserver,
    /// Where the configuration in force is published for the peer transport.
    book: AddressBook,
    membership_seen: Option<Membership>,
    /// The last snapshot whose file was attached to the replica, or tried.
    snapshot_attach_tried: Option<SnapshotMeta>,
}

/// What the loop did, logged when it stops: the group-commit ratio in numbers.
#[derive(Debug, Default)]
struct Counters {
    inputs: u64,
    batches: u64,
}

impl Core {
    fn run(mut self, receiver: Receiver<Input>) -> Result<(), StorageError> {
        loop {
            let now = self.clock.now();
            let deadline = self.replica.poll_timeout();
            let mut stop = false;
            if now >= deadline {
                // Inputs already queued go first: the timeout may be a follower's
                // election timer that a waiting heartbeat would have reset, or a step of
                // a long apply (`apply_entries_per_step_max`) that must not starve them.
                for input in receiver.try_iter().take(INPUTS_PER_BATCH_MAX) {
                    stop |= self.handle(input)?;
                }
                self.replica.handle_timeout(self.clock.now());
            } else {
                let wait = Duration::from_micros(deadline.saturating_since_us(now));
                match receiver.recv_timeout(wait) {
                    Ok(input) => {
                        stop |= self.handle(input)?;
                        for input in receiver.try_iter().take(INPUTS_PER_BATCH_MAX) {
                            stop |= self.handle(input)?;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        self.replica.handle_timeout(self.clock.now());
                    }
                    Err(RecvTimeoutError::Disconnected) => stop = true,
                }
            }
            let installed = self.replica.metrics().snapshots_installed;
            if installed != self.snapshots_installed {
                self.snapshots_installed = installed;
                // No listener at all is the common case, not an error.
                let _ = self.shell.deliveries.send(Live::Resync);
            }
            drive(&mut self.replica, &mut self.shell)?;
            self.attach_snapshot_file();
            self.follow_membership();
            self.publish();
            self.observer.observe(&self.replica);
            self.counters.batches += 1;
            if stop {
                tracing::info!(
                    inputs = self.counters.inputs,
                    batches = self.counters.batches,
                    persists = self.shell.persists,
                    entries = self.shell.entries_persisted,
                    "core stopped; storage is synced"
                );
                return Ok(());
            }
        }
    }

    /// Once the replica holds a snapshot's bytes in memory (one just installed from the
    /// leader and now written by the persist; a recovered one is read from its file
    /// from the start), hands it a reader of
    /// the file instead, so that the bytes go: a snapshot is the size of the state. Tried
    /// once per snapshot.
    fn attach_snapshot_file(&mut self) {
        if !self.replica.snapshot_in_memory() {
            return;
        }
        let meta = self.replica.snapshot_meta().clone();
        if self.snapshot_attach_tried.as_ref() == Some(&meta) {
            return;
        }
        self.snapshot_attach_tried = Some(meta);
        // The bytes are still in memory, so a file that cannot be opened (descriptors
        // exhausted, a read error) costs memory, not the node: say so and keep them.
        match self.shell.store.snapshot_source() {
            Ok(Some(source)) => {
                if !self.replica.attach_snapshot_source(source) {
                    tracing::warn!(
                        "the snapshot file is not the snapshot the replica holds; \
                         keeping the bytes in memory"
                    );
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(
                "cannot open the snapshot file to stream from it ({error}); keeping the \
                 bytes in memory"
            ),
        }
    }

    /// Publishes the configuration in force when it changed, and brings the peer links
    /// in line (a member added is dialed, a removed one loses its link).
    fn follow_membership(&mut self) {
        let membership = self.replica.membership();
        if self.membership_seen.as_ref() != Some(membership) {
            self.book.set_membership(membership);
            self.membership_seen = Some(membership.clone());
        }
        self.shell.router.sync();
    }

    /// Publishes the replica's view. Waiters wake only when something other than the
    /// lease moved: a follower's lease is renewed by every heartbeat, and waking every
    /// listener at that rate would cost more than it tells them.
    fn publish(&self) {
        let latest = ReplicaView::of(&self.replica, &self.clock);
        self.view.send_if_modified(|view| {
            let moved = ReplicaView {
                fresh_until: view.fresh_until,
                ..latest.clone()
            } != *view;
            *view = latest;
            moved
        });
    }

    /// Feeds one input to the replica; true on shutdown. A snapshot that cannot be
    /// made durable stops the core (fail-stop), like any other write.
    fn handle(&mut self, input: Input) -> Result<bool, StorageError> {
        let now = self.clock.now();
        self.counters.inputs += 1;
        match input {
            Input::Peer(envelope) => self.replica.handle_message(now, envelope),
            Input::Client { request, reply } => {
                self.next_request_id += 1;
                let request_id = RequestId(self.next_request_id);
                self.shell.pending.insert(request_id, reply);
                self.replica.handle_client_request(now, request_id, request);
            }
            Input::Status(reply) => {
                let r = &self.replica;
                // The asker may have given up; nothing to do then.
                let _ = reply.send(StatusSnapshot {
                    id: r.id(),
                    role: r.role(),
                    term: r.term(),
                    leader_id: r.leader_id(),
                    commit_index: r.commit_index(),
                    last_applied: r.last_applied(),
                    last_log_index: r.last_log_index(),
                    state_hash: r.state_hash(),
                });
            }
            Input::TransferLeadership { target, reply } => {
                // The asker may have given up; nothing to do then.
                let _ = reply.send(self.replica.transfer_leadership(now, target));
            }
            Input::ExportSnapshot(reply) => {
                // As above.
                let _ = reply.send(self.replica.export_image());
            }
            Input::SnapshotStaged { meta, outcome } => {
                outcome?;
                let source = if self.shell.store.commit_staged_snapshot(&meta)? {
                    self.shell.store.snapshot_source()?
                } else {
                    None
                };
                self.replica.handle_snapshot_saved(now, meta, source);
            }
            Input::Shutdown => return Ok(true),
        }
        Ok(false)
    }
}

/// Performs a replica's effects: files, peer queues, waiting callers, listeners.
struct NodeShell {
    store: LogStore<FsDisk>,
    router: PeerRouter,
    pending: BTreeMap<RequestId, ReplyTx>,
    deliveries: broadcast::Sender<Live>,
    /// Durable writes (each one fsync of the log at most) and the entries they carried.
    persists: u64,
    entries_persisted: u64,
    metrics: CoreMetrics,
    /// Where the replica's own snapshots go to be written (see `spawn_snapshot_writer`).
    snapshot_writer: SyncSender<SnapshotImage>,
}

impl Shell for NodeShell {
    type Error = StorageError;

    fn persist(&mut self, persist: &Persist) -> Result<(), StorageError> {
        self.persists += 1;
        self.entries_persisted += persist.entries.len() as u64;
        let started = Instant::now();
        let persisted = self.store.persist(persist);
        let snapshot_bytes = persist.snapshot.as_ref().map(|s| s.data.len());
        self.metrics
            .persisted(persist.entries.len(), snapshot_bytes, started.elapsed());
        persisted
    }

    fn send(&mut self, envelope: Envelope) {
        self.router.send(envelope);
    }

    fn reply(&mut self, reply: Reply) {
        if let Some(waiting) = self.pending.remove(&reply.request_id) {
            // The caller may have timed out and gone; its retry gets the session's answer.
            let _ = waiting.send(reply.outcome);
        }
    }

    fn deliver(&mut self, delivery: Delivery) {
        // No listener at all is the common case, not an error.
        let _ = self.deliveries.send(Live::Delivery(Arc::new(delivery)));
    }

    fn save_snapshot(&mut self, image: SnapshotImage) {
        // One save at a time, so the slot is free. If the writer is gone (it panicked),
        // the replica simply keeps its log uncompacted; say so loudly.
        if let Err(error) = self.snapshot_writer.try_send(image) {
            tracing::error!("the snapshot writer cannot take a snapshot: {error}");
        }
    }
}
