//! Replica-to-replica traffic over tonic.
//!
//! Outbound: one task per peer with a bounded queue. The core thread never waits on the
//! network: when a queue is full the message is dropped (Raft tolerates loss and
//! retransmits). Each task sends what is queued in batches, one call at a time, over a
//! channel that reconnects by itself; after a failure it backs off exponentially.
//!
//! Inbound: [`PeerService`] checks the caller's proof of membership, decodes core's
//! bincode envelopes and queues them for the core thread, again dropping when full.

use crate::auth::Secret;
use crate::driver::{CoreHandle, Input};
use chat_core::{Envelope, NodeId};
use chat_proto::metadata::{PEER_ID, PEER_PROOF};
use chat_proto::peer::peer_client::PeerClient;
use chat_proto::peer::peer_server::Peer;
use chat_proto::peer::{PeerAck, PeerBatch};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

/// Messages queued for one peer before new ones are dropped.
pub const PEER_QUEUE_CAPACITY: usize = 4_096;
/// Envelopes per call.
const BATCH_ENVELOPES_MAX: usize = 512;
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Peer calls carry whole AppendEntries batches and snapshot chunks.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

fn codec() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<PEER_MESSAGE_BYTES_MAX>()
}

/// Routes envelopes to the per-peer queues.
#[derive(Clone, Default)]
pub struct PeerRouter {
    queues: BTreeMap<NodeId, mpsc::Sender<Envelope>>,
}

impl PeerRouter {
    pub fn send(&self, envelope: Envelope) {
        if let Some(queue) = self.queues.get(&envelope.to) {
            if queue.try_send(envelope).is_err() {
                tracing::trace!("peer queue full or closed; message dropped");
            }
        }
    }
}

/// Starts one sender task per peer (on the current tokio runtime).
pub fn start(
    from: NodeId,
    peers: &BTreeMap<u64, String>,
    secret: &Secret,
    tls: Option<ClientTlsConfig>,
) -> anyhow::Result<PeerRouter> {
    let mut router = PeerRouter::default();
    for (&id, address) in peers {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        let client = PeerClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
        let (queue, receiver) = mpsc::channel(PEER_QUEUE_CAPACITY);
        router.queues.insert(NodeId(id), queue);
        let proof = secret.peer_proof(from.0);
        tokio::spawn(run_sender(from, NodeId(id), client, receiver, proof));
    }
    Ok(router)
}

async fn run_sender(
    from: NodeId,
    to: NodeId,
    mut client: PeerClient<tonic::transport::Channel>,
    mut queue: mpsc::Receiver<Envelope>,
    proof: String,
) {
    let mut backoff = BACKOFF_MIN;
    let mut batch = Vec::with_capacity(BATCH_ENVELOPES_MAX);
    while queue.recv_many(&mut batch, BATCH_ENVELOPES_MAX).await > 0 {
        let envelopes: Vec<Vec<u8>> = batch
            .drain(..)
            .filter_map(|envelope| bincode::serde::encode_to_vec(&envelope, codec()).ok())
            .collect();
        let mut request = Request::new(PeerBatch {
            from: from.0,
            to: to.0,
            envelopes,
        });
        // Metadata values are ASCII digits and hex, always valid.
        if let (Ok(id), Ok(proof)) = (from.0.to_string().parse(), proof.parse()) {
            request.metadata_mut().insert(PEER_ID, id);
            request.metadata_mut().insert(PEER_PROOF, proof);
        }
        match client.deliver(request).await {
            Ok(_) => backoff = BACKOFF_MIN,
            Err(status) => {
                tracing::debug!(peer = %to, code = ?status.code(), "peer call failed; backing off {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// The inbound half of the peer API.
pub struct PeerService {
    pub id: NodeId,
    pub members: Vec<u64>,
    pub secret: Secret,
    pub core: CoreHandle,
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn deliver(&self, request: Request<PeerBatch>) -> Result<Response<PeerAck>, Status> {
        let metadata = request.metadata();
        let claimed: Option<u64> = metadata
            .get(PEER_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let proof = metadata.get(PEER_PROOF).and_then(|v| v.to_str().ok());
        let batch = request.get_ref();
        let proven = match (claimed, proof) {
            (Some(from), Some(proof)) => {
                from == batch.from
                    && self.members.contains(&from)
                    && self.secret.verify_peer_proof(from, proof)
            }
            _ => false,
        };
        if !proven {
            return Err(Status::permission_denied(
                "peer call without a valid proof of cluster membership",
            ));
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
        Ok(Response::new(PeerAck { accepted }))
    }
}
