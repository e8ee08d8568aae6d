//! A node's configuration: from flags, from a TOML file, or both (flags win).

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const TICK_MS_DEFAULT: u64 = 50;
/// Elections time out after this many ticks without a leader (randomized up to twice).
pub const ELECTION_TICKS: u64 = 6;
pub const TOKEN_TTL_SECS_DEFAULT: u64 = 24 * 3_600;
/// Applied entries between two snapshots. A snapshot encodes the whole state on the core
/// thread (its write and fsync happen on the snapshot thread), so its cost grows with the
/// state; memory for the uncompacted log and replay time on restart grow with this
/// instead. etcd's default (`--snapshot-count`) is 100,000.
pub const SNAPSHOT_ENTRIES_DEFAULT: u64 = 65_536;
pub const CLUSTER_ID_DEFAULT: &str = "chat";

/// The flags of `chatnode` (all optional here: a config file may supply them).
#[derive(Args, Clone, Debug, Default)]
pub struct NodeArgs {
    /// A TOML file with the keys below (id, listen, peers, data_dir, ...); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id, a positive integer unique in the cluster.
    #[arg(long)]
    pub id: Option<u64>,
    /// Address to listen on, e.g. 0.0.0.0:7001.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address the other nodes and clients reach this node at (default: --listen).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// The other founding members: ID=HOST:PORT,... Every founder is given the same
    /// list (the cluster's first configuration). A node that joins later may list
    /// members here too; they only say where to reach them.
    #[arg(long, value_name = "ID=ADDR,...", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Join an existing cluster instead of founding one: any of its members,
    /// HOST:PORT,... The node starts empty, learns the members' addresses from these,
    /// and waits until an operator runs `chatctl member add --id ID --addr ADVERTISE`
    /// (it prints the exact command). Keep it on restarts of a node that joined.
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    pub join: Vec<String>,
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Name of the cluster; a data dir stamped with another name is refused.
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// Heartbeat interval in milliseconds; elections time out after 6 to 12 ticks.
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// File holding the cluster secret (keys login tokens and peer proofs; same on
    /// every node).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// PEM certificate chain: serve TLS (and reach peers over TLS).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA that signed the nodes' certificates (required with TLS: verifies peers).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// How long a login token is valid, in seconds.
    #[arg(long)]
    pub token_ttl_secs: Option<u64>,
    /// Serve Prometheus metrics over plain HTTP at http://HOST:PORT/metrics, e.g.
    /// 127.0.0.1:9101. Default: none (the endpoint has no authentication, so exposing
    /// it is the operator's choice).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// Take a snapshot (and compact the log) after this many applied entries. Larger:
    /// more log kept and replayed on restart; smaller: the state written more often.
    /// Each replica draws its own point in [N, 1.5 N) so that they do not all write at
    /// once. [default: 65536]
    #[arg(long, value_name = "N")]
    pub snapshot_entries: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    /// Node id (as a string key) to address.
    #[serde(default)]
    peers: BTreeMap<String, String>,
    #[serde(default)]
    join: Vec<String>,
    data_dir: Option<PathBuf>,
    cluster_id: Option<String>,
    tick_ms: Option<u64>,
    secret_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    token_ttl_secs: Option<u64>,
    metrics_addr: Option<SocketAddr>,
    snapshot_entries: Option<u64>,
    /// Read before the runtime starts (see [`io_threads_in_file`]), not by `from_args`.
    io_threads: Option<u16>,
}

/// The `io_threads` key of the config file at `path`, if it has one: the async runtime
/// is built before the rest of the configuration is read, so this key is read first.
pub fn io_threads_in_file(path: &std::path::Path) -> anyhow::Result<Option<u16>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let file = toml::from_str::<FileConfig>(&text).map_err(|e| file_error(path, &text, &e))?;
    check_io_threads(path, file.io_threads)?;
    Ok(file.io_threads)
}

fn check_io_threads(path: &std::path::Path, io_threads: Option<u16>) -> anyhow::Result<()> {
    match io_threads {
        Some(0) => anyhow::bail!(
            "config file {}: io_threads must be at least 1",
            path.display()
        ),
        Some(n) if n > IO_THREADS_MAX => anyhow::bail!(
            "config file {}: io_threads must be at most {IO_THREADS_MAX}",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// One line for a config file that does not parse: where, and the line itself (toml's
/// message alone does not name the key).
fn file_error(path: &std::path::Path, text: &str, error: &toml::de::Error) -> anyhow::Error {
    // A span over the whole document says nothing about where.
    let at = error
        .span()
        .filter(|span| span.start > 0 || span.end < text.len());
    let at = at.map(|span| {
        let mut start = span.start.min(text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let line = text[..start].matches('\n').count() + 1;
        let content = text.lines().nth(line - 1).unwrap_or("").trim();
        format!(" line {line} ({content})")
    });
    anyhow::anyhow!(
        "config file {}{}: {}",
        path.display(),
        at.unwrap_or_default(),
        error.message()
    )
}

/// The most runtime worker threads `--io-threads` or `io_threads` may ask for.
pub const IO_THREADS_MAX: u16 = 1024;

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// A complete, checked configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    pub listen: SocketAddr,
    pub advertise: String,
    /// Every other founding member's id and address (or addresses known for members).
    pub peers: BTreeMap<u64, String>,
    /// Members to learn the cluster from when this node joins it (empty: it founds it).
    pub join: Vec<String>,
    pub data_dir: PathBuf,
    pub cluster_id: String,
    pub tick_ms: u64,
    pub secret_file: Option<PathBuf>,
    pub tls: Option<TlsFiles>,
    pub token_ttl_secs: u64,
    /// Where `/metrics` is served (plain HTTP); None: nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Applied entries between two snapshots.
    pub snapshot_entries: u64,
}

impl NodeConfig {
    pub fn from_args(args: &NodeArgs) -> anyhow::Result<NodeConfig> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                let file =
                    toml::from_str::<FileConfig>(&text).map_err(|e| file_error(path, &text, &e))?;
                // Read before the runtime starts; checked here too, so that a bad value
                // is refused even when `--io-threads` overrides it.
                check_io_threads(path, file.io_threads)?;
                file
            }
            None => FileConfig::default(),
        };
        let mut peers = BTreeMap::new();
        for (id, addr) in &file.peers {
            peers.insert(parse_id(id)?, addr.clone());
        }
        if !args.peers.is_empty() {
            peers.clear();
            for spec in args.peers.iter().filter(|s| !s.is_empty()) {
                let (id, addr) = spec
                    .split_once('=')
                    .with_context(|| format!("peer {spec:?} is not ID=ADDR"))?;
                peers.insert(parse_id(id)?, addr.to_owned());
            }
        }
        let id = args
            .id
            .or(file.id)
            .context("missing --id (or `id` in the config file)")?;
        if id == 0 {
            bail!("--id must be positive");
        }
        peers.remove(&id);
        let listen = args
            .listen
            .or(file.listen)
            .context("missing --listen (or `listen` in the config file)")?;
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .context("missing --data-dir (or `data_dir` in the config file)")?;
        let tick_ms = args.tick_ms.or(file.tick_ms).unwrap_or(TICK_MS_DEFAULT);
        if !(1..=10_000).contains(&tick_ms) {
            bail!("--tick-ms must be between 1 and 10000");
        }
        let cert = args.tls_cert.clone().or(file.tls_cert);
        let key = args.tls_key.clone().or(file.tls_key);
        let tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                ca: args.tls_ca.clone().or(file.tls_ca),
            }),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        Ok(NodeConfig {
            id,
            listen,
            advertise: args
                .advertise
                .clone()
                .or(file.advertise)
                .unwrap_or_else(|| listen.to_string()),
            peers,
            join: if args.join.is_empty() {
                file.join
            } else {
                args.join
                    .iter()
                    .filter(|a| !a.is_empty())
                    .cloned()
                    .collect()
            },
            data_dir,
            cluster_id: args
                .cluster_id
                .clone()
                .or(file.cluster_id)
                .unwrap_or_else(|| CLUSTER_ID_DEFAULT.to_owned()),
            tick_ms,
            secret_file: args.secret_file.clone().or(file.secret_file),
            tls,
            token_ttl_secs: args
                .token_ttl_secs
                .or(file.token_ttl_secs)
                .unwrap_or(TOKEN_TTL_SECS_DEFAULT),
            metrics_addr: args.metrics_addr.or(file.metrics_addr),
            snapshot_entries: match args.snapshot_entries.or(file.snapshot_entries) {
                Some(0) => anyhow::bail!("snapshot_entries must be at least 1"),
                Some(n) => n,
                None => SNAPSHOT_ENTRIES_DEFAULT,
            },
        })
    }

    /// Every member (this node included) and its address.
    pub fn members(&self) -> BTreeMap<u64, String> {
        let mut members = self.peers.clone();
        members.insert(self.id, self.advertise.clone());
        members
    }
}

fn parse_id(text: &str) -> anyhow::Result<u64> {
    match text.trim().parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => bail!("node id {text:?} is not a positive integer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_file_merge() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "id = 2\nlisten = \"127.0.0.1:7002\"\ndata_dir = \"/tmp/x\"\n[peers]\n1 = \"a:1\"\n2 = \"b:2\"\n3 = \"c:3\"\n",
        )
        .expect("write config");
        let args = NodeArgs {
            config: Some(path),
            tick_ms: Some(20),
            ..NodeArgs::default()
        };
        let config = NodeConfig::from_args(&args).expect("valid");
        assert_eq!(
            config.metrics_addr, None,
            "no metrics endpoint unless asked for"
        );
        assert_eq!(config.id, 2);
        assert_eq!(config.tick_ms, 20);
        assert_eq!(config.peers.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(config.members()[&2], "127.0.0.1:7002");
    }

    #[test]
    fn metrics_addr_from_the_file_or_a_flag() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "id = 1\nlisten = \"127.0.0.1:7001\"\ndata_dir = \"/tmp/x\"\nmetrics_addr = \"127.0.0.1:9101\"\n",
        )
        .expect("write config");
        let mut args = NodeArgs {
            config: Some(path),
            ..NodeArgs::default()
        };
        let from_file = NodeConfig::from_args(&args).expect("valid");
        assert_eq!(from_file.metrics_addr, "127.0.0.1:9101".parse().ok());
        args.metrics_addr = "0.0.0.0:9200".parse().ok();
        let from_flag = NodeConfig::from_args(&args).expect("valid");
        assert_eq!(from_flag.metrics_addr, "0.0.0.0:9200".parse().ok());
    }

    #[test]
    fn io_threads_is_a_file_key_read_before_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.toml");
        let base = "id = 1\nlisten = \"127.0.0.1:7001\"\ndata_dir = \"/tmp/x\"\n";
        std::fs::write(&path, format!("{base}io_threads = 3\n")).expect("write config");
        assert_eq!(io_threads_in_file(&path).expect("valid"), Some(3));
        // The full parse accepts the key too (unknown keys are refused there).
        let args = NodeArgs {
            config: Some(path.clone()),
            ..NodeArgs::default()
        };
        NodeConfig::from_args(&args).expect("valid with io_threads");
        std::fs::write(&path, base).expect("write config");
        assert_eq!(io_threads_in_file(&path).expect("valid"), None);
        for bad in ["io_threads = 0", "io_threads = 5000", "io_threads = -1"] {
            std::fs::write(&path, format!("{base}{bad}\n")).expect("write config");
            let error = io_threads_in_file(&path).expect_err(bad);
            assert!(error.to_string().contains("io_threads"), "{bad}: {error}");
            let error = NodeConfig::from_args(&args).expect_err(bad);
            assert!(error.to_string().contains("io_threads"), "{bad}: {error}");
        }
    }

    #[test]
    fn missing_id_is_one_line() {
        let error = NodeConfig::from_args(&NodeArgs::default()).expect_err("no id");
        assert!(error.to_string().starts_with("missing --id"));
    }
}
