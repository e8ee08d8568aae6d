//! Live delivery: the server side of `Listen`.
//!
//! The stream first subscribes to this replica's deliveries, then catches up from its
//! applied state (`MessagesAfter`, a local read), then forwards each new delivery for the
//! user. Both come from the core thread in apply order, and the subscription is taken
//! before the catch-up read is queued, so every message with an id above the client's
//! cursor arrives once: older ones from the read, newer ones from the subscription, and
//! ids at or below the last one sent are skipped. A listener that falls behind the
//! delivery buffer catches up from the state again, and so does every listener when the
//! replica installs a snapshot (`Live::Resync`): an install moves the applied state
//! forward without a delivery for the messages it covers.
//!
//! A replica that restarted or lagged may not have applied the account yet, or the last
//! message the client saw. Ids and account generations are log indexes, so the stream
//! first waits (on the driver's published view, never by polling the core) until this
//! replica has applied both; otherwise a resumed stream could be refused (no such account
//! yet) or, worse, look complete while it is behind. An id beyond the leader's whole log
//! cannot exist: the leader refuses it as INVALID_ARGUMENT at once, and a follower, which
//! cannot tell a lag from an impossible id, sends the client to the leader.
//!
//! Revocation (ARCHITECTURE.md, "Local reads and revocation"): a stream is served only
//! while this replica is fresh (a follower heard from its leader within the minimum
//! election timeout; a leader is one), checked every [`FRESHNESS_CHECK`]; a stale replica
//! ends it UNAVAILABLE with the leader hint, so a partitioned follower cannot keep
//! serving a token the majority has logged out. The token itself is checked again
//! against the applied state every [`TOKEN_RECHECK`]: a stream ends UNAUTHENTICATED when
//! its token expires, its user logs out, or the account is deleted.
//!
//! Streams are bounded per user and per node ([`Listeners`]); a client that hangs up, or
//! stops reading for [`CLIENT_STALL_MAX`], ends its stream and frees its slot.

use crate::auth::{AuthError, TokenClaims};
use crate::clock::unix_now_us;
use crate::convert;
use crate::driver::{Live, ReplicaView};
use crate::service::Shared;
use chat_core::app::{limits, Auth, MessageId, Query, QueryOutput};
use chat_core::{ReadConsistency, Role};
use chat_proto::chat::ChatMessage;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub type ListenStream = ReceiverStream<Result<ChatMessage, Status>>;

/// Messages queued for one client before the stream waits for it to read.
const STREAM_BUFFER: usize = 256;
/// Live streams one user may hold on one node: enough for a few devices and a resume
/// overlapping its predecessor, far from what lets one account exhaust a node.
pub const LISTEN_STREAMS_PER_USER_MAX: usize = 8;
/// Live streams one node serves at once. Each costs a task, a delivery subscription and
/// up to [`STREAM_BUFFER`] queued messages; clients beyond this go to another node.
pub const LISTEN_STREAMS_PER_NODE_MAX: usize = 1_024;
const _: () = assert!(LISTEN_STREAMS_PER_USER_MAX <= LISTEN_STREAMS_PER_NODE_MAX);
/// How often a stream checks that its replica is still fresh. A cut-off follower ends
/// its streams within one minimum election timeout plus this of its last contact.
const FRESHNESS_CHECK: Duration = Duration::from_millis(100);
/// How often a stream checks its token against the applied state (logout, deletion).
const TOKEN_RECHECK: Duration = Duration::from_secs(2);
/// How long a client may leave its stream unread, with the buffer full, before the
/// stream is dropped: a client that stopped reading must not hold its slot forever.
const CLIENT_STALL_MAX: Duration = Duration::from_secs(30);
/// How long a lagging replica may take to apply what the client has already seen before
/// the client is told to go elsewhere.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
const _: () = assert!(FRESHNESS_CHECK.as_millis() < TOKEN_RECHECK.as_millis());

/// Why a stream was refused at the door.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenLimitError {
    #[error(
        "{user:?} already has {LISTEN_STREAMS_PER_USER_MAX} listen streams on this node \
         (the limit); close one first"
    )]
    PerUser { user: String },
    #[error("this node already serves {LISTEN_STREAMS_PER_NODE_MAX} listen streams (the limit); try another node")]
    PerNode,
}

/// The live streams of one node, counted per user. A stream holds a [`ListenSlot`] for
/// its whole life; dropping it (whatever ended the stream) gives the slot back.
#[derive(Clone, Default)]
pub struct Listeners {
    counts: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_user: BTreeMap<String, usize>,
}

impl Listeners {
    pub fn acquire(&self, user: &str) -> Result<ListenSlot, ListenLimitError> {
        let mut counts = lock(&self.counts);
        if counts.total >= LISTEN_STREAMS_PER_NODE_MAX {
            return Err(ListenLimitError::PerNode);
        }
        let held = counts.per_user.get(user).copied().unwrap_or(0);
        if held >= LISTEN_STREAMS_PER_USER_MAX {
            return Err(ListenLimitError::PerUser {
                user: user.to_owned(),
            });
        }
        counts.total += 1;
        counts.per_user.insert(user.to_owned(), held + 1);
        Ok(ListenSlot {
            counts: Arc::clone(&self.counts),
            user: user.to_owned(),
        })
    }

    /// Streams open now (for tests and metrics).
    pub fn count(&self) -> usize {
        lock(&self.counts).total
    }
}

/// Every update is one step that leaves the counts consistent, so a panic elsewhere
/// while the lock was held leaves nothing half-done: go on with the inner value.
fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    counts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct ListenSlot {
    counts: Arc<Mutex<Counts>>,
    user: String,
}

impl Drop for ListenSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.per_user.get_mut(&self.user) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.per_user.remove(&self.user);
            }
        }
    }
}

/// Opens a stream, or refuses it at once: a stale replica, an impossible cursor, or a
/// limit reached.
pub fn start(
    shared: Arc<Shared>,
    claims: TokenClaims,
    after: MessageId,
) -> Result<ListenStream, Status> {
    let view = shared.core.view().borrow().clone();
    ensure_fresh(&shared, &view)?;
    check_cursor(&shared, &view, after, claims.auth.generation)?;
    let slot = shared
        .listeners
        .acquire(&claims.auth.user)
        .map_err(|e| Status::resource_exhausted(e.to_string()))?;
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
    let subscription = shared.core.subscribe();
    tokio::spawn(async move {
        // Held until the stream ends, however it ends.
        let _slot = slot;
        if let Err(status) = forward(&shared, &claims, after, subscription, &sender).await {
            // The client may be gone, or not reading; then there is no one to tell.
            let _ = tokio::time::timeout(CLIENT_STALL_MAX, sender.send(Err(status))).await;
        }
    });
    Ok(ReceiverStream::new(receiver))
}

/// Local reads need a fresh replica (see the module doc).
fn ensure_fresh(shared: &Shared, view: &ReplicaView) -> Result<(), Status> {
    if view.is_fresh(Instant::now()) {
        return Ok(());
    }
    Err(convert::unavailable_with_leader(
        "this replica has lost contact with the leader and may have missed writes \
         (a logout among them); retry on another node",
        view.leader_id,
        &shared.addresses.map(),
    ))
}

/// Ids and generations are log indexes: a leader's log holds every index a client can
/// have seen, so one beyond it is impossible. A follower may merely lag.
fn check_cursor(
    shared: &Shared,
    view: &ReplicaView,
    after: MessageId,
    generation: u64,
) -> Result<(), Status> {
    let last = view.last_log_index.0;
    if after.0 <= last && generation <= last {
        return Ok(());
    }
    if view.role == Role::Leader && after.0 > last {
        return Err(Status::invalid_argument(format!(
            "after_id {} is beyond the newest message id ({last}): no message can have it",
            after.0
        )));
    }
    Err(convert::unavailable_with_leader(
        "this replica's log does not reach the requested position yet; retry on the leader",
        view.leader_id,
        &shared.addresses.map(),
    ))
}

type Sink = mpsc::Sender<Result<ChatMessage, Status>>;

async fn forward(
    shared: &Shared,
    claims: &TokenClaims,
    mut last: MessageId,
    mut subscription: broadcast::Receiver<Live>,
    sink: &Sink,
) -> Result<(), Status> {
    let auth = &claims.auth;
    let mut shutdown = shared.shutdown.clone();
    let mut recheck = tokio::time::interval(TOKEN_RECHECK);
    let mut freshness = tokio::time::interval(FRESHNESS_CHECK);
    if !wait_for_applied(shared, last.0.max(auth.generation), sink).await? {
        return Ok(());
    }
    if !catch_up(shared, auth, &mut last, sink).await? {
        return Ok(());
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = sink.closed() => return Ok(()),
            _ = freshness.tick() => ensure_fresh(shared, &shared.core.view().borrow())?,
            _ = recheck.tick() => still_valid(shared, claims).await?,
            received = subscription.recv() => match received {
                Ok(Live::Delivery(delivery)) => {
                    let view = &delivery.message;
                    if view.recipient == auth.user && view.id > last {
                        last = view.id;
                        if !deliver(sink, convert::message(view)).await {
                            return Ok(());
                        }
                    }
                }
                Ok(Live::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !catch_up(shared, auth, &mut last, sink).await? {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

/// Queues one message for the client; false if it hung up or stopped reading.
async fn deliver(sink: &Sink, message: ChatMessage) -> bool {
    matches!(
        tokio::time::timeout(CLIENT_STALL_MAX, sink.send(Ok(message))).await,
        Ok(Ok(()))
    )
}

/// Expiry, then logout and account deletion as this replica has applied them.
async fn still_valid(shared: &Shared, claims: &TokenClaims) -> Result<(), Status> {
    if unix_now_us() >= claims.expires_at_us {
        return Err(Status::unauthenticated(AuthError::Expired.to_string()));
    }
    let query = Query::UnreadCount {
        auth: claims.auth.clone(),
    };
    shared.read(query, ReadConsistency::Stale).await.map(|_| ())
}

/// Waits until this replica has applied `index`; false if the client left meanwhile.
async fn wait_for_applied(shared: &Shared, index: u64, sink: &Sink) -> Result<bool, Status> {
    let mut view = shared.core.view();
    let applied = async { view.wait_for(|v| v.last_applied.0 >= index).await.is_ok() };
    tokio::select! {
        waited = tokio::time::timeout(CATCH_UP_WAIT, applied) => match waited {
            Ok(true) => Ok(true),
            Ok(false) => Err(Status::unavailable("node is shutting down; retry elsewhere")),
            Err(_) => {
                let leader = shared.core.view().borrow().leader_id;
                Err(convert::unavailable_with_leader(
                    "this replica is still catching up; retry on another node",
                    leader,
                    &shared.addresses.map(),
                ))
            }
        },
        _ = sink.closed() => Ok(false),
    }
}

/// Sends every message after `last` from the replica's state; false if the client left.
async fn catch_up(
    shared: &Shared,
    auth: &Auth,
    last: &mut MessageId,
    sink: &Sink,
) -> Result<bool, Status> {
    loop {
        let query = Query::MessagesAfter {
            auth: auth.clone(),
            after: *last,
            limit: limits::READ_LIMIT_MAX,
        };
        let QueryOutput::Messages(views) = shared.read(query, ReadConsistency::Stale).await? else {
            tracing::error!("MessagesAfter was answered with another kind of output");
            return Err(Status::internal("internal error; see the node's log"));
        };
        let full_page = views.len() >= limits::READ_LIMIT_MAX as usize;
        for view in &views {
            *last = view.id;
            if !deliver(sink, convert::message(view)).await {
                return Ok(false);
            }
        }
        if !full_page {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_user_and_given_back_on_drop() {
        let listeners = Listeners::default();
        let alice: Vec<_> = (0..LISTEN_STREAMS_PER_USER_MAX)
            .map(|_| listeners.acquire("alice").expect("under the limit"))
            .collect();
        assert_eq!(
            listeners.acquire("alice").err(),
            Some(ListenLimitError::PerUser {
                user: "alice".to_owned()
            })
        );
        let bob = listeners
            .acquire("bob")
            .expect("another user has their own limit");
        assert_eq!(listeners.count(), LISTEN_STREAMS_PER_USER_MAX + 1);
        drop(alice);
        drop(bob);
        assert_eq!(listeners.count(), 0);
        assert!(listeners.acquire("alice").is_ok());
    }

    #[test]
    fn slots_are_bounded_per_node() {
        let listeners = Listeners::default();
        let held: Vec<_> = (0..LISTEN_STREAMS_PER_NODE_MAX)
            .map(|i| {
                let user = format!("u{}", i / LISTEN_STREAMS_PER_USER_MAX);
                listeners.acquire(&user).expect("under the limits")
            })
            .collect();
        assert_eq!(
            listeners.acquire("someone-new").err(),
            Some(ListenLimitError::PerNode)
        );
        drop(held);
        assert!(listeners.acquire("someone-new").is_ok());
    }
}
