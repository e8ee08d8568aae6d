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
//! first waits until this replica has applied both; otherwise a resumed stream could be
//! refused (no such account yet) or, worse, look complete while it is behind.
//!
//! The token is checked again every few seconds: a stream ends UNAUTHENTICATED when its
//! token expires, its user logs out, or the account is deleted.

use crate::auth::{AuthError, TokenClaims};
use crate::clock::unix_now_us;
use crate::convert;
use crate::driver::Live;
use crate::service::Shared;
use chat_core::app::{limits, Auth, MessageId, Query, QueryOutput};
use chat_core::ReadConsistency;
use chat_proto::chat::ChatMessage;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub type ListenStream = ReceiverStream<Result<ChatMessage, Status>>;

const STREAM_BUFFER: usize = 256;

pub fn start(shared: Arc<Shared>, claims: TokenClaims, after: MessageId) -> ListenStream {
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
    let subscription = shared.core.subscribe();
    tokio::spawn(async move {
        if let Err(status) = forward(&shared, &claims, after, subscription, &sender).await {
            // The client may be gone already; then there is no one to tell.
            let _ = sender.send(Err(status)).await;
        }
    });
    ReceiverStream::new(receiver)
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
    wait_for_applied(shared, last.0.max(auth.generation)).await?;
    if !catch_up(shared, auth, &mut last, sink).await? {
        return Ok(());
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = sink.closed() => return Ok(()),
            _ = recheck.tick() => still_valid(shared, claims).await?,
            received = subscription.recv() => match received {
                Ok(Live::Delivery(delivery)) => {
                    let view = &delivery.message;
                    if view.recipient == auth.user && view.id > last {
                        last = view.id;
                        if sink.send(Ok(convert::message(view))).await.is_err() {
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

const TOKEN_RECHECK: Duration = Duration::from_secs(2);

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

/// How long a lagging replica may take to apply what the client has already seen before
/// the client is told to go elsewhere.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
const CATCH_UP_POLL: Duration = Duration::from_millis(20);

async fn wait_for_applied(shared: &Shared, index: u64) -> Result<(), Status> {
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    while shared.status().await?.last_applied.0 < index {
        if tokio::time::Instant::now() >= deadline {
            return Err(Status::unavailable(
                "this replica is still catching up; retry on another node",
            ));
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
    Ok(())
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
            return Err(Status::internal("unexpected answer to MessagesAfter"));
        };
        let full_page = views.len() >= limits::READ_LIMIT_MAX as usize;
        for view in &views {
            *last = view.id;
            if sink.send(Ok(convert::message(view))).await.is_err() {
                return Ok(false);
            }
        }
        if !full_page {
            return Ok(true);
        }
    }
}
