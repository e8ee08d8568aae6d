//! Runs one member: opens (and checks) its data dir, recovers, starts the core thread,
//! the peer senders and the gRPC server, and stops them in order on shutdown.

use crate::admin::{self, AdminService};
use crate::auth::Secret;
use crate::clock::Clock;
use crate::config::{NodeConfig, ELECTION_TICKS};
use crate::connections::{self, Incoming};
use crate::disk::FsDisk;
use crate::driver::{self, Input};
use crate::hashing::HashPool;
use crate::limiter::LoginLimiter;
use crate::members::AddressBook;
use crate::metrics::{self, Metrics, Sampled};
use crate::peers::{self, PeerService};
use crate::service::{ChatService, Shared, CLIENT_MESSAGE_BYTES_MAX};
use crate::stamp;
use anyhow::Context;
use chat_core::storage::{LogStore, StoreConfig};
use chat_core::{Config, NodeId, Replica};
use chat_proto::chat::chat_server::ChatServer;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tonic::service::InterceptorLayer;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};

/// Used when no secret file is configured, so that a quick local try needs no setup.
/// Anyone can forge tokens with it: production configs must set `secret_file`.
const INSECURE_DEV_SECRET: &[u8] = b"chat-insecure-development-secret";

pub fn load_secret(config: &NodeConfig) -> anyhow::Result<Secret> {
    let bytes = match &config.secret_file {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read secret file {}", path.display()))?
            .trim_ascii()
            .to_vec(),
        None => {
            tracing::warn!("no --secret-file: using the insecure development secret");
            INSECURE_DEV_SECRET.to_vec()
        }
    };
    Secret::new(bytes).map_err(anyhow::Error::msg)
}

/// Runs the node until `shutdown` turns true. Errors are one line, fit for the operator.
pub async fn run(config: NodeConfig, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    stamp::check_or_write(&config.data_dir, config.id, &config.cluster_id)?;
    let secret = load_secret(&config)?;
    let disk = FsDisk::open(&config.data_dir)?;
    let recovery_started = std::time::Instant::now();
    // StorageError messages already say what to do (e.g. wipe a corrupt replica).
    let (store, recovered) = LogStore::open_with(disk, StoreConfig::replica())?;
    // What a restart costs, step by step (BENCHMARKS.md, "Scale"): reading and checking
    // the files, the snapshot's state decoded in the pass that checks it; then building
    // the replica.
    let storage_ms = recovery_started.elapsed().as_millis() as u64;
    let snapshot_bytes = recovered.snapshot.as_ref().map_or(0, |s| s.len_bytes);
    let log_entries = recovered.entries.len();
    let clock = Clock::start();
    let members = config.members();
    let tick_us = config.tick_ms * 1_000;
    // A joining node has no founding members: it waits for a leader to add it (and
    // ignores them anyway once its data dir holds a log).
    let founders = if config.join.is_empty() {
        members.keys().map(|&id| NodeId(id)).collect()
    } else {
        Vec::new()
    };
    let mut core_config = Config::new(NodeId(config.id), founders);
    core_config.heartbeat_interval_us = tick_us;
    core_config.election_timeout_us_min = tick_us * ELECTION_TICKS;
    // Twice the minimum, as before the range was explicit: half the range is jitter.
    core_config.election_timeout_us_max = 2 * core_config.election_timeout_us_min;
    core_config.snapshot_threshold_entries = config.snapshot_entries;
    // Different on every start, so that restarted nodes do not time out in lockstep.
    core_config.rng_seed = config.id ^ clock.now().as_micros();
    let replica = Replica::new(core_config, recovered, clock.now())?;
    tracing::info!(
        id = config.id,
        term = replica.term().0,
        last_log_index = replica.last_log_index().0,
        snapshot_bytes,
        log_entries,
        storage_ms,
        replica_ms = (recovery_started.elapsed().as_millis() as u64).saturating_sub(storage_ms),
        "recovered"
    );
    if replica.is_removed() {
        anyhow::bail!("{}", removed_line(config.id));
    }
    if !replica.membership().contains(NodeId(config.id)) {
        eprintln!("{}", waiting_line(&config));
    }

    let (server_tls, client_tls) = tls(&config)?;
    let metrics = Metrics::new(config.peers.keys().map(|&id| NodeId(id)));
    let book = AddressBook::new(NodeId(config.id), &config.advertise, &config.peers)
        .with_founders(founding_voters(&replica));
    book.set_membership(replica.membership());
    let router = peers::start(
        NodeId(config.id),
        book.clone(),
        &secret,
        client_tls.clone(),
        &metrics.peers,
    )?;
    let (core_stopped_tx, core_stopped) = tokio::sync::oneshot::channel();
    let core_metrics = metrics.core.clone();
    let (core, core_thread) = driver::spawn(
        replica,
        store,
        clock,
        router,
        book.clone(),
        core_metrics,
        core_stopped_tx,
    )?;
    if !config.join.is_empty() {
        tokio::spawn(discover_members(
            config.join.clone(),
            client_tls,
            book.clone(),
            core.view(),
        ));
    }

    // Turned on when the server stops, whatever the reason, so that listen streams end
    // and graceful shutdown does not wait for them forever.
    let (stop_streams, streams_stopped) = watch::channel(false);
    let peer_streams_stopped = streams_stopped.clone();
    let metrics_stopped = streams_stopped.clone();
    let hashing = Arc::new(HashPool::start_default().context("start the hash workers")?);
    let shared = Arc::new(Shared {
        core: core.clone(),
        secret: secret.clone(),
        addresses: book.clone(),
        token_ttl_us: config.token_ttl_secs.saturating_mul(1_000_000),
        shutdown: streams_stopped,
        listeners: crate::listen::Listeners::default(),
        hashing: Arc::clone(&hashing),
        login_limiter: Mutex::new(LoginLimiter::default()),
        metrics: metrics.client.clone(),
    });
    let rpc_metrics = metrics::rpc::RpcLayer::new(metrics.rpc.clone());
    let exposition = metrics.finish(Sampled {
        listeners: shared.listeners.clone(),
        hashing: Arc::clone(&hashing),
    });
    let metrics_server =
        metrics::endpoint::start(config.metrics_addr, exposition, metrics_stopped).await?;
    let chat = ChatServer::new(ChatService {
        inner: Arc::clone(&shared),
    })
    .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX);
    let peer = peers::server(
        PeerService {
            id: NodeId(config.id),
            core: core.clone(),
            shutdown: peer_streams_stopped,
        },
        book.clone(),
        secret.clone(),
    );
    let admin = admin::server(
        AdminService {
            shared: Arc::clone(&shared),
        },
        secret,
    );
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ChatServer<ChatService>>()
        .await;

    let listener = connections::listen(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(id = config.id, listen = %config.listen, "serving");
    // Bounded connections (see `connections`): a silent one is closed after the
    // handshake timeout, a vanished one by unanswered keep-alive pings.
    let incoming = Incoming::new(listener, connections::connection_limit());
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(connections::KEEP_ALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(connections::KEEP_ALIVE_TIMEOUT))
        .max_concurrent_streams(connections::STREAMS_PER_CONNECTION_MAX);
    if let Some(tls) = server_tls {
        builder = builder.tls_config(tls)?;
    }
    let mut removed_view = core.view();
    let removed_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let removed_seen = Arc::clone(&removed_flag);
    let transfer_core = core.clone();
    let id = config.id;
    let election_timeout = std::time::Duration::from_millis(config.tick_ms * ELECTION_TICKS);
    let stop = async move {
        // Each arm only says which happened: the guards `wait_for` returns are not held
        // across the handover's awaits.
        let asked_to_stop = tokio::select! {
            // Either the flag turned true or every sender is gone: stop in both cases.
            _ = shutdown.wait_for(|stop| *stop) => true,
            // The core stopped on its own (a failed write): serve nothing more.
            _ = core_stopped => false,
            // This node learned it was removed: it serves nothing more, for good.
            Ok(_) = removed_view.wait_for(|view| view.removed) => {
                removed_seen.store(true, Ordering::Relaxed);
                false
            }
        };
        if asked_to_stop {
            hand_over_leadership(&transfer_core, NodeId(id), 2 * election_timeout).await;
        }
        // Listen streams may all be gone already.
        let _ = stop_streams.send(true);
    };
    let served = builder
        .layer(rpc_metrics)
        .layer(InterceptorLayer::new(connections::mark_established))
        .add_service(health)
        .add_service(chat)
        .add_service(peer)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    if let Some(metrics_server) = metrics_server {
        // It stops with the listen streams (a panic there is no reason to stop less).
        let _ = metrics_server.await;
    }
    // Stop the core after the server: the batch in flight (and its fsync) completes.
    let _ = core.submit(Input::Shutdown);
    drop(core);
    let stopped = tokio::task::spawn_blocking(move || core_thread.join())
        .await
        .context("core thread")?;
    match stopped {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("core thread panicked"),
    }
    let counters = hashing.counters();
    tracing::info!(
        hashed = counters.hashed.load(Ordering::Relaxed),
        verified = counters.verified.load(Ordering::Relaxed),
        refused = counters.refused.load(Ordering::Relaxed),
        abandoned = counters.abandoned.load(Ordering::Relaxed),
        "password hashing stopped"
    );
    served.context("server")?;
    if removed_flag.load(Ordering::Relaxed) {
        anyhow::bail!("{}", removed_line(config.id));
    }
    tracing::info!(id = config.id, "stopped");
    Ok(())
}

/// The voters of the founding entry (entry 1), if this replica's log still holds it.
fn founding_voters(replica: &Replica) -> Option<Vec<NodeId>> {
    match replica
        .log_entry(chat_core::LogIndex(1))
        .map(|e| &e.payload)
    {
        Some(chat_core::entry::EntryPayload::Membership { membership, .. }) => {
            Some(membership.voters().collect())
        }
        _ => None,
    }
}

fn removed_line(id: u64) -> String {
    format!(
        "node {id} was removed from the cluster and will not serve again; \
         to bring this machine back, wipe its data dir and add it under a new id"
    )
}

fn waiting_line(config: &NodeConfig) -> String {
    let cluster = if config.join.is_empty() {
        "ANY_MEMBER".to_owned()
    } else {
        config.join.join(",")
    };
    format!(
        "node {} is not a member yet and waits to be added: \
         chatctl --cluster {cluster} --secret-file SECRET member add --id {} --addr {}",
        config.id, config.id, config.advertise
    )
}

/// A leader asked to stop hands leadership to the most up-to-date voter first, and waits
/// (at most `wait`) until another node leads, so that the cluster does not sit out an
/// election timeout: a rolling restart costs a transfer per leader, not an election.
async fn hand_over_leadership(core: &driver::CoreHandle, me: NodeId, wait: std::time::Duration) {
    if core.leadership().role != chat_core::Role::Leader {
        return;
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let input = Input::TransferLeadership {
        target: None,
        reply,
    };
    if core.submit(input).is_err() {
        return;
    }
    let started = std::time::Instant::now();
    let target = match answer.await {
        Ok(Ok(target)) => target,
        Ok(Err(error)) => {
            tracing::info!("no leadership transfer before stopping: {error}");
            return;
        }
        Err(_) => return,
    };
    let mut view = core.view();
    let handed = tokio::time::timeout(wait, async {
        view.wait_for(|v| {
            v.role != chat_core::Role::Leader && v.leader_id.is_some_and(|leader| leader != me)
        })
        .await
        .map(|v| v.leader_id)
    })
    .await;
    match handed {
        Ok(Ok(leader)) => tracing::info!(
            to = leader.map_or(0, |l| l.0),
            ms = started.elapsed().as_millis() as u64,
            "leadership handed over before stopping"
        ),
        _ => {
            tracing::warn!(%target, "leadership transfer did not complete in {wait:?}; stopping anyway")
        }
    }
}

/// A node started with `--join` learns every member's address from the nodes it was
/// given (their `Status`), and asks again whenever the configuration in force names a
/// member it cannot reach (founders' addresses are not in the log).
async fn discover_members(
    join: Vec<String>,
    tls: Option<ClientTlsConfig>,
    book: AddressBook,
    mut stopped: watch::Receiver<driver::ReplicaView>,
) {
    let mut client = crate::client::ClusterClient::new(join.clone(), tls);
    loop {
        if book.missing_addresses() {
            for address in &join {
                if let Ok(status) = client.status_of(address).await {
                    for member in &status.members {
                        book.learn(NodeId(member.id), &member.address);
                    }
                    break;
                }
            }
        }
        let pause = tokio::time::sleep(std::time::Duration::from_secs(1));
        tokio::select! {
            _ = pause => {}
            // The core thread is gone: the node is stopping.
            Err(_) = stopped.changed() => return,
        }
    }
}

fn tls(config: &NodeConfig) -> anyhow::Result<(Option<ServerTlsConfig>, Option<ClientTlsConfig>)> {
    let Some(files) = &config.tls else {
        return Ok((None, None));
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let identity = Identity::from_pem(read(&files.cert)?, read(&files.key)?);
    // Peers prove membership with the secret (see `peers`), so the server does not ask
    // for client certificates: chatctl needs only the CA to verify the server.
    let server = ServerTlsConfig::new().identity(identity);
    let ca = files
        .ca
        .as_ref()
        .context("--tls-ca is required with TLS: it verifies the peers' certificates")?;
    let client = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    Ok((Some(server), Some(client)))
}
