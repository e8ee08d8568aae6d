//! Replica-to-replica traffic over tonic.
//!
//! Outbound: one task per member of the configuration in force (it follows membership
//! changes, see [`PeerRouter::sync`]), each with a bounded queue. The core thread never waits on the
//! network: when a queue is full the message is dropped (Raft tolerates loss and
//! retransmits). Each task writes what is queued, in batches, to one long-lived
//! `Peer.Stream` call: no response per batch, so a Raft message costs one HTTP/2 data
//! frame instead of a request and a response (which halved the servers' CPU per
//! operation, see BENCHMARKS.md). When the stream ends (the peer stopped, HTTP/2 pings
//! went unanswered) the task opens a new one, backing off exponentially while it fails.
//!
//! Inbound: [`PeerAuth`] checks the caller's proof of membership from the call's
//! metadata, before a byte of its body is read (a non-member cannot make a node buffer a
//! 64 MiB message), once per call or stream. [`PeerService`] then decodes core's bincode
//! envelopes and queues them for the core thread, again dropping when full. Streams end when the server stops. `Peer.Deliver`, one batch per call,
//! stays served for senders of an older build.

use crate::auth::Secret;
use crate::driver::{CoreHandle, Input};
use crate::members::AddressBook;
use crate::metrics::{PeerCounters, PeerMetrics};
use chat_core::{Envelope, NodeId};
use chat_proto::metadata::{PEER_ADDR, PEER_FOUNDERS, PEER_ID, PEER_PROOF};
use chat_proto::peer::peer_client::PeerClient;
use chat_proto::peer::peer_server::{Peer, PeerServer};
use chat_proto::peer::{PeerAck, PeerBatch};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status, Streaming};

/// Messages queued for one peer before new ones are dropped.
pub const PEER_QUEUE_CAPACITY: usize = 4_096;
/// Envelopes per call.
const BATCH_ENVELOPES_MAX: usize = 512;
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Batches written to a stream but not yet taken by HTTP/2 before new ones are dropped.
const STREAM_BATCHES_QUEUED: usize = 64;
/// A stream that lived this long was healthy: the next one starts without backoff.
const STREAM_HEALTHY_AFTER: Duration = Duration::from_secs(1);
/// A stream has no deadline; HTTP/2 pings find a dead peer instead.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Peer calls carry whole AppendEntries batches and snapshot chunks. A larger message is
/// refused (OUT_OF_RANGE) from its length prefix, before it is buffered; only proven
/// members get that far.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

fn codec() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<PEER_MESSAGE_BYTES_MAX>()
}

/// Links to peers at most: the members of a configuration, plus nodes outside it this
/// node must answer (a leader it is joining, a removed node it tells so).
pub const LINKS_MAX: usize = 2 * chat_core::membership::MEMBERS_MAX;

/// One sender task's queue, and the address it dials.
struct Link {
    address: String,
    queue: mpsc::Sender<Envelope>,
    counters: PeerCounters,
}

/// Routes envelopes to the per-peer sender tasks, and keeps one task per member of the
/// configuration in force (see [`PeerRouter::sync`]): a member added gets a task, a
/// member removed loses its own (its queue is dropped and the task ends), a member whose
/// address changed is dialed anew. Owned by the core thread.
pub struct PeerRouter {
    from: NodeId,
    links: BTreeMap<NodeId, Link>,
    book: AddressBook,
    /// The address book version the links were last checked against.
    synced_version: Option<u64>,
    dialer: Dialer,
    metrics: PeerMetrics,
    runtime: tokio::runtime::Handle,
}

/// What every sender task needs to open its stream.
#[derive(Clone)]
struct Dialer {
    tls: Option<ClientTlsConfig>,
    proof: String,
    /// This node's own address, sent to every peer (`x-chat-peer-addr`).
    advertise: String,
    /// Its founding voters, if its log holds entry 1 (`x-chat-founders`).
    founders: Option<String>,
}

impl PeerRouter {
    pub fn send(&mut self, envelope: Envelope) {
        let to = envelope.to;
        if !self.links.contains_key(&to) {
            // Not a member in force: a node this one must answer (the leader while it
            // joins, a removed node asking for votes). Dialed if its address is known.
            self.open(to);
        }
        if let Some(link) = self.links.get(&to) {
            if let Err(error) = link.queue.try_send(envelope) {
                tracing::trace!("peer queue full or closed; message dropped");
                // Closed only while the node stops: not a drop worth counting.
                if let mpsc::error::TrySendError::Full(_) = error {
                    link.counters.queue_full.inc();
                }
            }
        }
    }

    /// Brings the links in line with the address book: one per member other than this
    /// node, dialing the address the book resolves. Cheap when nothing changed.
    pub fn sync(&mut self) {
        let version = self.book.version();
        if self.synced_version == Some(version) {
            return;
        }
        self.synced_version = Some(version);
        let peers = self.book.peers();
        self.links
            .retain(|id, _| peers.iter().any(|(member, _)| member == id));
        for (id, address) in peers {
            let current = self.links.get(&id).map(|link| link.address.clone());
            match (current, address) {
                (Some(current), Some(address)) if current != address => {
                    tracing::info!(peer = %id, %address, "peer address changed; dialing anew");
                    self.links.remove(&id);
                    self.open(id);
                }
                (None, Some(_)) => self.open(id),
                _ => {}
            }
        }
    }

    /// Starts a sender task to `to`, if its address is known and the bound allows.
    fn open(&mut self, to: NodeId) {
        if to == self.from || self.links.len() >= LINKS_MAX {
            return;
        }
        let Some(address) = self.book.resolve(to) else {
            return;
        };
        // The channel spawns its connection task: on the runtime, also when called from
        // the core thread.
        let _runtime = self.runtime.enter();
        let client = match self.dialer.client(&address) {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(peer = %to, %address, "cannot dial peer: {error}");
                return;
            }
        };
        tracing::info!(peer = %to, %address, "peer link opened");
        let (queue, receiver) = mpsc::channel(PEER_QUEUE_CAPACITY);
        let counters = self.metrics.of(to);
        self.runtime.spawn(run_sender(
            self.from,
            to,
            client,
            receiver,
            self.dialer.clone(),
            counters.clone(),
        ));
        self.links.insert(
            to,
            Link {
                address,
                queue,
                counters,
            },
        );
    }
}

impl Dialer {
    fn client(
        &self,
        address: &str,
    ) -> Result<PeerClient<tonic::transport::Channel>, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))?
            .connect_timeout(CALL_TIMEOUT)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(PeerClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
    }
}

/// The router of node `from`, whose links follow `book` (call on the tokio runtime that
/// is to run the sender tasks; [`PeerRouter::sync`] opens them).
pub fn start(
    from: NodeId,
    book: AddressBook,
    secret: &Secret,
    tls: Option<ClientTlsConfig>,
    metrics: &PeerMetrics,
) -> anyhow::Result<PeerRouter> {
    let advertise = book.resolve(from).unwrap_or_default();
    let book_founders = book.founders().map(str::to_owned);
    let mut router = PeerRouter {
        from,
        links: BTreeMap::new(),
        book,
        synced_version: None,
        dialer: Dialer {
            tls,
            proof: secret.peer_proof(from.0),
            advertise,
            founders: book_founders,
        },
        metrics: metrics.clone(),
        runtime: tokio::runtime::Handle::try_current()?,
    };
    router.sync();
    Ok(router)
}

async fn run_sender(
    from: NodeId,
    to: NodeId,
    client: PeerClient<tonic::transport::Channel>,
    mut queue: mpsc::Receiver<Envelope>,
    dialer: Dialer,
    counters: PeerCounters,
) {
    let mut backoff = BACKOFF_MIN;
    let mut batch = Vec::with_capacity(BATCH_ENVELOPES_MAX);
    loop {
        let (stream, batches) = mpsc::channel(STREAM_BATCHES_QUEUED);
        let mut request = Request::new(ReceiverStream::new(batches));
        // Metadata values are ASCII digits and hex, always valid.
        if let (Ok(id), Ok(proof)) = (from.0.to_string().parse(), dialer.proof.parse()) {
            request.metadata_mut().insert(PEER_ID, id);
            request.metadata_mut().insert(PEER_PROOF, proof);
        }
        // The address is the operator's text: sent only if it is a valid header value.
        if let Ok(address) = dialer.advertise.parse() {
            request.metadata_mut().insert(PEER_ADDR, address);
        }
        // Digits and commas: always a valid header value.
        if let Some(Ok(founders)) = dialer.founders.as_deref().map(str::parse) {
            request.metadata_mut().insert(PEER_FOUNDERS, founders);
        }
        let mut client = client.clone();
        let opened = Instant::now();
        let mut call = std::pin::pin!(client.stream(request));
        loop {
            tokio::select! {
                ended = &mut call => {
                    if let Err(status) = ended {
                        tracing::debug!(peer = %to, code = ?status.code(), "peer stream ended");
                    }
                    break;
                }
                received = queue.recv_many(&mut batch, BATCH_ENVELOPES_MAX) => {
                    if received == 0 {
                        // The router is gone: the node is stopping.
                        return;
                    }
                    let envelopes: Vec<Vec<u8>> = batch
                        .drain(..)
                        .filter_map(|envelope| bincode::serde::encode_to_vec(&envelope, codec()).ok())
                        .collect();
                    let envelope_count = envelopes.len() as u64;
                    let sent = stream.try_send(PeerBatch { from: from.0, to: to.0, envelopes });
                    match sent {
                        Ok(()) => {}
                        // Raft tolerates loss: a peer that cannot keep up misses messages.
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::trace!(peer = %to, "peer stream full; batch dropped");
                            counters.stream_full.inc_by(envelope_count);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
            }
        }
        if opened.elapsed() >= STREAM_HEALTHY_AFTER {
            backoff = BACKOFF_MIN;
        }
        tracing::debug!(peer = %to, "reconnecting in {backoff:?}");
        counters.reconnects.inc();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The peer API as served: membership checked on the headers, then [`PeerService`] with
/// [`PEER_MESSAGE_BYTES_MAX`] enforced on decoding.
pub fn server(
    service: PeerService,
    book: AddressBook,
    secret: Secret,
) -> InterceptedService<PeerServer<PeerService>, PeerAuth> {
    let server = PeerServer::new(service).max_decoding_message_size(PEER_MESSAGE_BYTES_MAX);
    InterceptedService::new(server, PeerAuth { book, secret })
}

/// Checks a peer call's proof of membership. tonic runs an interceptor on the request's
/// headers and answers a refusal without reading the body, so a non-member's call costs
/// at most the HTTP/2 flow-control window, however large the message it announces.
#[derive(Clone)]
pub struct PeerAuth {
    book: AddressBook,
    secret: Secret,
}

/// The member a call comes from, as proven by [`PeerAuth`] (a request extension).
#[derive(Clone, Copy, Debug)]
struct ProvenPeer(u64);

impl Interceptor for PeerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let from = self.verify(request.metadata())?;
        request.extensions_mut().insert(ProvenPeer(from));
        Ok(request)
    }
}

impl PeerAuth {
    /// The member a call comes from, if its metadata proves membership.
    fn verify(&self, metadata: &tonic::metadata::MetadataMap) -> Result<u64, Status> {
        let claimed: Option<u64> = metadata
            .get(PEER_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let proof = metadata.get(PEER_PROOF).and_then(|v| v.to_str().ok());
        match (claimed, proof) {
            (Some(from), Some(proof))
                if self.secret.verify_peer_proof(from, proof)
                    && self.book.accepts(NodeId(from)) =>
            {
                let founders = metadata.get(PEER_FOUNDERS).and_then(|v| v.to_str().ok());
                if let Some(conflict) = self.book.founders_conflict(founders) {
                    tracing::error!(peer = from, "{conflict}");
                    return Err(Status::failed_precondition(conflict));
                }
                // Proven: the caller says where it is reached (see `members`).
                if let Some(address) = metadata.get(PEER_ADDR).and_then(|v| v.to_str().ok()) {
                    self.book.learn(NodeId(from), address);
                }
                Ok(from)
            }
            _ => Err(Status::permission_denied(
                "peer call without a valid proof of cluster membership",
            )),
        }
    }
}

/// The sender [`PeerAuth`] proved. Served without it (a wiring mistake), a call is
/// refused rather than trusted.
fn proven_peer<T>(request: &Request<T>) -> Result<u64, Status> {
    request
        .extensions()
        .get::<ProvenPeer>()
        .map(|proven| proven.0)
        .ok_or_else(|| Status::permission_denied("peer call not checked for membership"))
}

/// The inbound half of the peer API (behind [`PeerAuth`], see [`server`]).
pub struct PeerService {
    pub id: NodeId,
    pub core: CoreHandle,
    /// Turns true when the server stops, so that open streams end.
    pub shutdown: watch::Receiver<bool>,
}

impl PeerService {
    /// Queues a batch from `from` for the core; how many envelopes it took.
    fn accept(&self, from: u64, batch: &PeerBatch) -> Result<u32, Status> {
        if batch.from != from {
            return Err(Status::permission_denied("batch sender is not the caller"));
        }
        if batch.to != self.id.0 {
            return Err(Status::invalid_argument(format!(
                "this is node {}, not node {}",
                self.id.0, batch.to
            )));
        }
        let mut accepted = 0u32;
        for bytes in &batch.envelopes {
            let Ok((envelope, _)) =
                bincode::serde::decode_from_slice::<Envelope, _>(bytes, codec())
            else {
                return Err(Status::invalid_argument("undecodable peer message"));
            };
            // Only the sender may speak for itself; core re-checks `to` and membership.
            if envelope.from.0 != batch.from {
                return Err(Status::invalid_argument("envelope sender mismatch"));
            }
            if self.core.submit(Input::Peer(envelope)).is_ok() {
                accepted += 1;
            }
        }
        Ok(accepted)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn deliver(&self, request: Request<PeerBatch>) -> Result<Response<PeerAck>, Status> {
        let from = proven_peer(&request)?;
        let accepted = self.accept(from, request.get_ref())?;
        Ok(Response::new(PeerAck { accepted }))
    }

    async fn stream(
        &self,
        request: Request<Streaming<PeerBatch>>,
    ) -> Result<Response<PeerAck>, Status> {
        let from = proven_peer(&request)?;
        let mut batches = request.into_inner();
        let mut shutdown = self.shutdown.clone();
        let mut accepted = 0u32;
        loop {
            let batch = tokio::select! {
                // Stopping (or the flag's sender is gone): end the stream.
                _ = shutdown.wait_for(|stop| *stop) => break,
                batch = batches.message() => match batch? {
                    Some(batch) => batch,
                    None => break,
                },
            };
            accepted = accepted.saturating_add(self.accept(from, &batch)?);
        }
        Ok(Response::new(PeerAck { accepted }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::membership::{Membership, MembershipChange};

    fn linked(router: &PeerRouter) -> Vec<(u64, String)> {
        router
            .links
            .iter()
            .map(|(id, link)| (id.0, link.address.clone()))
            .collect()
    }

    #[tokio::test]
    async fn links_follow_the_membership_and_its_addresses() {
        let peers = BTreeMap::from([(2, "h:2".to_owned()), (3, "h:3".to_owned())]);
        let book = AddressBook::new(NodeId(1), "h:1", &peers);
        let founding = Membership::founding(&[NodeId(1), NodeId(2), NodeId(3)]);
        book.set_membership(&founding);
        let secret = Secret::new(b"0123456789abcdef".to_vec()).expect("long enough");
        let metrics = crate::metrics::Metrics::new([]);
        let mut router =
            start(NodeId(1), book.clone(), &secret, None, &metrics.peers).expect("router");
        assert_eq!(linked(&router), [(2, "h:2".into()), (3, "h:3".into())]);

        let added = founding
            .apply(&MembershipChange::AddLearner {
                id: NodeId(4),
                address: "h:4".into(),
            })
            .expect("new id");
        let removed = added
            .apply(&MembershipChange::Remove { id: NodeId(3) })
            .expect("member");
        book.set_membership(&removed);
        router.sync();
        assert_eq!(linked(&router), [(2, "h:2".into()), (4, "h:4".into())]);

        // Node 2 says it moved: its link dials the new address.
        book.learn(NodeId(2), "moved:2");
        router.sync();
        assert_eq!(linked(&router), [(2, "moved:2".into()), (4, "h:4".into())]);

        // A message to a node outside the configuration opens a link on demand, if its
        // address is known (here: node 3, removed, told so); none for an unknown one.
        router.send(Envelope {
            from: NodeId(1),
            to: NodeId(3),
            message: chat_core::Message::Removed {
                term: chat_core::Term(1),
            },
        });
        router.send(Envelope {
            from: NodeId(1),
            to: NodeId(9),
            message: chat_core::Message::Removed {
                term: chat_core::Term(1),
            },
        });
        let ids: Vec<u64> = linked(&router).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, [2, 3, 4]);
    }
}
