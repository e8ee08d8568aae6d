//! `chatnode local`: a whole cluster on loopback in one process, for trying it out.
//! Node i listens on 127.0.0.1:(base_port + i - 1) with its data in DIR/node-i, and
//! serves its metrics at http://127.0.0.1:(metrics_base_port + i - 1)/metrics; the
//! cluster secret is generated once into DIR/secret.

use crate::config::{
    NodeConfig, CLUSTER_ID_DEFAULT, SNAPSHOT_ENTRIES_DEFAULT, TICK_MS_DEFAULT,
    TOKEN_TTL_SECS_DEFAULT,
};
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use tokio::sync::watch;

pub const NODES_MAX: u64 = 9;
/// Without `--metrics-base-port`, node i serves metrics this far above its own port.
pub const METRICS_PORT_OFFSET: u16 = 1_000;

/// Node `id`'s port: `base_port + id - 1`.
fn port_of(base_port: u16, id: u64, flag: &str) -> anyhow::Result<u16> {
    let port = u64::from(base_port) + id - 1;
    u16::try_from(port).with_context(|| format!("{flag} too high for that many nodes"))
}

/// The configs of a local cluster (also used by tests to build the same layout).
pub fn configs(
    nodes: u64,
    dir: &Path,
    base_port: u16,
    metrics_base_port: u16,
) -> anyhow::Result<Vec<NodeConfig>> {
    if !(1..=NODES_MAX).contains(&nodes) {
        bail!("--nodes must be between 1 and {NODES_MAX}");
    }
    let address = |id: u64| -> anyhow::Result<String> {
        Ok(format!(
            "127.0.0.1:{}",
            port_of(base_port, id, "--base-port")?
        ))
    };
    let mut members = BTreeMap::new();
    for id in 1..=nodes {
        members.insert(id, address(id)?);
    }
    let secret_file = dir.join("secret");
    members
        .iter()
        .map(|(&id, addr)| {
            let mut peers = members.clone();
            peers.remove(&id);
            Ok(NodeConfig {
                id,
                listen: addr.parse()?,
                advertise: addr.clone(),
                peers,
                join: Vec::new(),
                data_dir: dir.join(format!("node-{id}")),
                cluster_id: CLUSTER_ID_DEFAULT.to_owned(),
                tick_ms: TICK_MS_DEFAULT,
                secret_file: Some(secret_file.clone()),
                tls: None,
                token_ttl_secs: TOKEN_TTL_SECS_DEFAULT,
                metrics_addr: Some(SocketAddr::from((
                    Ipv4Addr::LOCALHOST,
                    port_of(metrics_base_port, id, "--metrics-base-port")?,
                ))),
                snapshot_entries: SNAPSHOT_ENTRIES_DEFAULT,
            })
        })
        .collect()
}

/// A node that joins the local cluster (id `nodes + 1`): the founders' layout, no
/// founding peers, `--join` all of them.
fn spare_config(
    founders: &[NodeConfig],
    dir: &Path,
    base_port: u16,
    metrics_base_port: u16,
) -> anyhow::Result<NodeConfig> {
    let id = founders.len() as u64 + 1;
    if id > NODES_MAX {
        bail!("--spare needs --nodes below {NODES_MAX}");
    }
    let founder = founders.first().context("no founders")?;
    let address = format!("127.0.0.1:{}", port_of(base_port, id, "--base-port")?);
    Ok(NodeConfig {
        id,
        listen: address.parse()?,
        advertise: address,
        peers: BTreeMap::new(),
        join: founders.iter().map(|c| c.advertise.clone()).collect(),
        data_dir: dir.join(format!("node-{id}")),
        metrics_addr: Some(SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            port_of(metrics_base_port, id, "--metrics-base-port")?,
        ))),
        ..founder.clone()
    })
}

/// Writes a random secret to `path` unless one is there.
pub fn ensure_secret(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(path, secret).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs the cluster until Ctrl-C. `metrics_base_port` defaults to `base_port` +
/// [`METRICS_PORT_OFFSET`].
pub async fn run(
    nodes: u64,
    dir: PathBuf,
    base_port: u16,
    metrics_base_port: Option<u16>,
    spare: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    ensure_secret(&dir.join("secret"))?;
    let metrics_base_port = match metrics_base_port {
        Some(port) => port,
        None => base_port.checked_add(METRICS_PORT_OFFSET).context(
            "--base-port too high for the default metrics ports; give --metrics-base-port",
        )?,
    };
    let mut configs = configs(nodes, &dir, base_port, metrics_base_port)?;
    let addresses: Vec<String> = configs.iter().map(|c| c.advertise.clone()).collect();
    if spare {
        configs.push(spare_config(&configs, &dir, base_port, metrics_base_port)?);
    }
    let all_addresses: Vec<String> = configs.iter().map(|c| c.advertise.clone()).collect();
    let metrics: Vec<Option<SocketAddr>> = configs.iter().map(|c| c.metrics_addr).collect();
    let (stop, shutdown) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for config in configs {
        let shutdown = shutdown.clone();
        let id = config.id;
        // Every log line of the node's server says which node it is.
        let span = tracing::info_span!("node", id);
        let node = tracing::Instrument::instrument(crate::server::run(config, shutdown), span);
        tasks.spawn(async move { (id, node.await) });
    }
    for (i, (address, metrics)) in all_addresses.iter().zip(&metrics).enumerate() {
        match metrics {
            Some(metrics) => println!(
                "node {} at {address}, metrics at http://{metrics}{}",
                i + 1,
                crate::metrics::endpoint::METRICS_PATH
            ),
            None => println!("node {} at {address}", i + 1),
        }
    }
    println!(
        "try: CHAT_PASSWORD=pw chatctl --cluster {} register --user alice",
        addresses.join(",")
    );
    if spare {
        let id = nodes + 1;
        println!(
            "node {id} is a spare waiting to join; add it: chatctl --cluster {} --secret-file {} member add --id {id} --addr {}",
            addresses.join(","),
            dir.join("secret").display(),
            all_addresses.last().map_or("", String::as_str),
        );
    }
    println!("stop with Ctrl-C");
    let mut failure = None;
    // One node ending (a removed one stops for good) leaves the others running.
    loop {
        tokio::select! {
            result = tokio::signal::ctrl_c() => {
                result.context("waiting for Ctrl-C")?;
                break;
            }
            joined = tasks.join_next() => match joined {
                Some(Ok((id, Err(error)))) => {
                    eprintln!("chatnode: node {id}: {error:#}");
                    failure.get_or_insert(anyhow::anyhow!("node {id}: {error}"));
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    // Ignored if every node already stopped.
    let _ = stop.send(true);
    while let Some(joined) = tasks.join_next().await {
        if let Ok((id, Err(error))) = joined {
            failure.get_or_insert(anyhow::anyhow!("node {id}: {error}"));
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
