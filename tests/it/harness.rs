//! The one place the cluster tests touch processes and the API.

use chat_node::client::ClusterClient;
use chat_proto::chat::chat_client::ChatClient;
use chat_proto::chat::*;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

pub const PASSWORD: &str = "correct horse";
/// Every test finishes within this, or fails.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const TICK_MS: &str = "50";

/// One cluster at a time: elections need CPU on time.
pub fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    // A test that panicked released the lock by unwinding; the next one may go on.
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The tests' own builds of the binaries (always current: Cargo builds them first).
pub fn chatnode() -> &'static str {
    env!("CARGO_BIN_EXE_it-chatnode")
}

pub fn chatctl() -> &'static str {
    env!("CARGO_BIN_EXE_it-chatctl")
}

pub fn free_ports(count: usize) -> Vec<u16> {
    // Held together so they differ; released just before the nodes bind them.
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound address").port())
        .collect()
}

pub struct Node {
    pub id: u64,
    pub address: String,
    /// Where the node serves `/metrics` (plain HTTP).
    pub metrics_address: String,
    /// Started with `--peers` (a founder) or with `--join` (added later).
    pub founder: bool,
    /// Removed from the cluster: no longer among the addresses a client is given, nor
    /// among the nodes that must converge.
    pub removed: bool,
    child: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    /// Serve (and reach peers) over TLS with the test certificates.
    pub tls: bool,
    /// `--snapshot-entries` for every node (None: the default).
    pub snapshot_entries: Option<u64>,
}

/// The test certificates: a CA and one certificate for 127.0.0.1 and localhost, shared
/// by every node (test material only, valid for a century).
pub fn tls_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
}

impl Cluster {
    pub fn start(size: u64) -> Cluster {
        Cluster::start_with(size, false)
    }

    pub fn start_with(size: u64, tls: bool) -> Cluster {
        Cluster::start_configured(size, tls, None)
    }

    /// A cluster whose nodes snapshot every `snapshot_entries` applied entries (when
    /// given), so that a test can reach snapshots with a few hundred writes.
    pub fn start_configured(size: u64, tls: bool, snapshot_entries: Option<u64>) -> Cluster {
        let mut cluster = Cluster::prepare(size, tls, snapshot_entries);
        for id in 1..=size {
            cluster.restart(id);
        }
        cluster
    }

    /// A cluster's layout (ports, secret, data dirs) with no node started yet, so that a
    /// test can seed a data dir first (a restore).
    pub fn prepare(size: u64, tls: bool, snapshot_entries: Option<u64>) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("secret"),
            "test-secret-of-the-cluster-tests",
        )
        .expect("write secret");
        // One port for the node's API and one for its metrics.
        let ports = free_ports(2 * size as usize);
        let nodes = (1..=size)
            .zip(ports.chunks(2))
            .map(|(id, ports)| Node {
                id,
                address: format!("127.0.0.1:{}", ports[0]),
                metrics_address: format!("127.0.0.1:{}", ports[1]),
                founder: true,
                removed: false,
                child: None,
            })
            .collect();
        Cluster {
            dir,
            nodes,
            tls,
            snapshot_entries,
        }
    }

    /// The addresses of the nodes not removed.
    pub fn addresses(&self) -> Vec<String> {
        self.members().map(|n| n.address.clone()).collect()
    }

    fn members(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| !n.removed)
    }

    /// Ids of the nodes not removed.
    pub fn member_ids(&self) -> Vec<u64> {
        self.members().map(|n| n.id).collect()
    }

    /// A new node (the next id, an empty data dir) started with `--join`: it waits to
    /// be added (`chatctl member add`). Its id.
    pub fn start_joining(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let ports = free_ports(2);
        self.nodes.push(Node {
            id,
            address: format!("127.0.0.1:{}", ports[0]),
            metrics_address: format!("127.0.0.1:{}", ports[1]),
            founder: false,
            removed: false,
            child: None,
        });
        self.restart(id);
        id
    }

    /// Marks node `id` removed (after `chatctl member remove`).
    pub fn forget(&mut self, id: u64) {
        self.nodes[(id - 1) as usize].removed = true;
    }

    /// Runs `chatctl --cluster <members> --secret-file <secret> ARGS`.
    pub fn chatctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(chatctl())
            .arg("--cluster")
            .arg(self.addresses().join(","))
            .arg("--secret-file")
            .arg(self.secret_file())
            .args(args)
            .env_remove("CHAT_TOKEN")
            .env_remove("CHAT_PASSWORD")
            .output()
            .expect("run chatctl")
    }

    pub fn address(&self, id: u64) -> String {
        self.node(id).address.clone()
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    pub fn secret_file(&self) -> PathBuf {
        self.dir.path().join("secret")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// The command line of node `id` (also used to start it by hand in a test).
    pub fn command(&self, id: u64) -> Command {
        self.command_in(id, &self.data_dir(id))
    }

    /// Node `id`'s command line with another data dir.
    pub fn command_in(&self, id: u64, data_dir: &Path) -> Command {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.id != id && n.founder)
            .map(|n| format!("{}={}", n.id, n.address))
            .collect();
        let log = self.log_file(id);
        let mut command = Command::new(chatnode());
        command
            .arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(self.address(id));
        if self.node(id).founder {
            command.arg("--peers").arg(peers.join(","));
        } else {
            let others: Vec<String> = self
                .members()
                .filter(|n| n.id != id)
                .map(|n| n.address.clone())
                .collect();
            command.arg("--join").arg(others.join(","));
        }
        command
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--secret-file")
            .arg(self.secret_file())
            .arg("--tick-ms")
            .arg(TICK_MS)
            .arg("--metrics-addr")
            .arg(&self.node(id).metrics_address)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(entries) = self.snapshot_entries {
            command.arg("--snapshot-entries").arg(entries.to_string());
        }
        if self.tls {
            command
                .arg("--tls-cert")
                .arg(tls_file("node.pem"))
                .arg("--tls-key")
                .arg(tls_file("node.key"))
                .arg("--tls-ca")
                .arg(tls_file("ca.pem"));
        }
        command
    }

    fn log_file(&self, id: u64) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{id}.log")))
            .expect("open node log")
    }

    /// The process id of node `id`, if it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(Child::id)
    }

    /// SIGSTOP: the process freezes, as if cut off by a partition (its sockets stay
    /// open, nothing is answered). [`Cluster::resume`] undoes it.
    pub fn pause(&self, id: u64) {
        self.signal(id, "STOP");
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&self, id: u64) {
        self.signal(id, "CONT");
    }

    fn signal(&self, id: u64, signal: &str) {
        let pid = self.pid(id).expect("node runs");
        // The shell's builtin `kill`: no dependency on a procps binary.
        let sent = Command::new("sh")
            .args(["-c", &format!("kill -{signal} {pid}")])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// Node `id`'s resident memory (VmRSS) in bytes, from `/proc`; None if it does not run.
    pub fn rss_bytes(&self, id: u64) -> Option<u64> {
        rss_bytes_of(self.pid(id)?)
    }

    /// A plain client of node `id` alone: no leader following, no retries, so a test sees
    /// exactly what that node answers. Its connections come from `source` when given (any
    /// 127.x.y.z is loopback on Linux), so that one test can be several client addresses.
    pub fn raw_client(&self, id: u64, source: Option<std::net::IpAddr>) -> ChatClient<Channel> {
        let scheme = if self.tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.address(id)))
            .expect("valid address")
            .local_address(source);
        if let Some(tls) = self.client_tls() {
            endpoint = endpoint.tls_config(tls).expect("test TLS config");
        }
        ChatClient::new(endpoint.connect_lazy())
    }

    /// Node `id`'s `/metrics` page: the body of a 200 answer, or what went wrong.
    pub async fn scrape(&self, id: u64) -> Result<String, String> {
        let response = http_get(&self.node(id).metrics_address, "/metrics").await?;
        match response.status {
            200 => Ok(response.body),
            status => Err(format!("HTTP {status}: {}", response.body)),
        }
    }

    /// SIGTERM, then waits for the exit; its status.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        let pid = self.pid(id).expect("node runs");
        // The shell's builtin `kill`: no dependency on a procps binary.
        let sent = Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        tokio::task::block_in_place(|| self.wait(id)).expect("exit status")
    }

    /// Waits for node `id` to exit by itself; its exit status.
    pub fn wait(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let mut child = self.nodes[(id - 1) as usize].child.take()?;
        child.wait().ok()
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    pub fn restart(&mut self, id: u64) {
        let child = self.command(id).spawn().expect("spawn chatnode");
        self.nodes[(id - 1) as usize].child = Some(child);
    }

    /// Stops node `id` and starts it again with RLIMIT_NOFILE `nofile` (soft and hard,
    /// set by the shell's `ulimit` before it `exec`s the node), so that a test can run
    /// it short of file descriptors.
    pub fn restart_with_nofile(&mut self, id: u64, nofile: u64) {
        self.kill(id);
        let node = self.command(id);
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(node.get_program())
            .args(node.get_args())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file(id));
        let child = command.spawn().expect("spawn sh for chatnode");
        self.nodes[(id - 1) as usize].child = Some(child);
    }

    /// SIGKILL: no shutdown, no flush beyond what was already synced.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes[(id - 1) as usize].child.take() {
            // Already exited is fine: it is dead either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// True if node `id` is still running (it did not crash).
    pub fn is_running(&mut self, id: u64) -> bool {
        match self.nodes[(id - 1) as usize].child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn client(&self) -> ClusterClient {
        ClusterClient::new(self.addresses(), self.client_tls())
    }

    pub fn client_tls(&self) -> Option<tonic::transport::ClientTlsConfig> {
        self.tls.then(|| {
            let ca = std::fs::read(tls_file("ca.pem")).expect("test CA");
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        })
    }

    /// Waits until a leader is known and every running node in `ids` reports it.
    pub async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut client = self.client();
            if let Ok(status) = client.discover().await {
                if status.leader_id != 0 {
                    if let Ok(s) = client.status_of(&self.address(status.leader_id)).await {
                        if s.role == "leader" {
                            return s.id;
                        }
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for a leader, then for node `id` to answer a status call; some node other
    /// than the leader.
    pub async fn follower(&self) -> u64 {
        let leader = self.leader().await;
        let follower = self
            .nodes
            .iter()
            .map(|n| n.id)
            .find(|&id| id != leader)
            .expect("a cluster of two or more");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .client()
            .status_of(&self.address(follower))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "node {follower} silent for 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        follower
    }

    /// Waits until every node reports the same commit index, applied index and state
    /// hash; returns them.
    pub async fn converged(&self) -> (u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut client = self.client();
            let mut views = Vec::new();
            for address in self.addresses() {
                if let Ok(s) = client.status_of(&address).await {
                    views.push((s.commit_index, s.last_applied, s.state_hash));
                }
            }
            let all_same = views.windows(2).all(|w| w[0] == w[1]);
            if views.len() == self.addresses().len() && all_same && views[0].0 == views[0].1 {
                return (views[0].0, views[0].2);
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not converge within 30 s: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // Best effort: the process may be gone already.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub struct HttpResponse {
    pub status: u16,
    /// Header lines, as sent.
    pub head: String,
    pub body: String,
}

/// One plain HTTP/1.1 GET over a fresh connection (closed by the server after the
/// answer): all a test needs to read a metrics page, with no HTTP client library.
pub async fn http_get(address: &str, path: &str) -> Result<HttpResponse, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TIMEOUT: Duration = Duration::from_secs(10);
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("GET {path} from {address}: no answer in {TIMEOUT:?}"))?
        .map_err(|e| format!("GET {path} from {address}: {e}"))?;
    let text = String::from_utf8(response).map_err(|e| format!("not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    // "HTTP/1.1 200 OK"
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok(HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// A process's resident memory (VmRSS) in bytes, from `/proc`; None if it is gone.
pub fn rss_bytes_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    // "VmRSS:\t   23456 kB"
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1_024)
}

pub async fn register(client: &mut ClusterClient, user: &str) -> Result<(), Status> {
    let request = RegisterRequest {
        registration_id: ClusterClient::registration_id(),
        user: user.to_owned(),
        password: PASSWORD.to_owned(),
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.register(request).await }
        })
        .await
        .map(|_| ())
}

pub async fn login_with(
    client: &mut ClusterClient,
    user: &str,
    password: &str,
) -> Result<Credentials, Status> {
    let request = LoginRequest {
        user: user.to_owned(),
        password: password.to_owned(),
    };
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.login(request).await }
        })
        .await?;
    Ok(Credentials {
        user: user.to_owned(),
        token: response.token,
    })
}

pub async fn login(client: &mut ClusterClient, user: &str) -> Credentials {
    login_with(client, user, PASSWORD).await.expect("login")
}

pub async fn send(
    client: &mut ClusterClient,
    auth: &Credentials,
    to: &str,
    body: &str,
) -> Result<u64, Status> {
    let request = SendRequest {
        session: Some(client.session(auth).await?),
        auth: Some(auth.clone()),
        to: to.to_owned(),
        body: body.to_owned(),
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.send(request).await }
        })
        .await
        .map(|r| r.id)
}

/// Reads (and marks read) every unread message, page by page.
pub async fn read_all(client: &mut ClusterClient, auth: &Credentials) -> Vec<ChatMessage> {
    let mut all = Vec::new();
    loop {
        let request = ReadRequest {
            session: Some(client.session(auth).await.expect("open a session")),
            auth: Some(auth.clone()),
            limit: 1_000,
        };
        let page = client
            .call(|mut c| {
                let request = request.clone();
                async move { c.read(request).await }
            })
            .await
            .expect("read")
            .messages;
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Every message in the inbox, read or not (through a listen stream from id 0).
pub async fn inbox(client: &mut ClusterClient, auth: &Credentials) -> Vec<ChatMessage> {
    let mut all = Vec::new();
    // The stream never ends by itself: stop when it has been quiet for a while.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        client
            .listen(auth.clone(), 0, |m| {
                all.push(m);
                true
            })
            .await
    })
    .await;
    all
}

/// Runs a test body on a fresh runtime, one at a time, within [`TEST_TIMEOUT`].
pub fn run<F: std::future::Future<Output = ()>>(body: F) {
    let _turn = serial();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, body)
            .await
            .expect("test exceeded its time bound");
    });
}

/// One unary call with `body` sent as the raw bytes of the request message, whatever
/// they are: how a client that does not use our generated code can go wrong.
pub async fn raw_call(address: &str, method: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("address")
        .connect()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(method).expect("a method path");
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// Bytes in, bytes out: no protobuf on this side.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut bytes = vec![0; bytes::Buf::remaining(buf)];
        bytes::Buf::copy_to_slice(buf, &mut bytes);
        Ok(Some(bytes))
    }
}

/// CPU time (user + system) process `pid` has used, from /proc (Linux).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after_name = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, so 11 and 12 after the name.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let per_second = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(100);
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

/// A memory figure of process `pid` in KiB, from /proc/PID/status: `VmRSS` (now) or
/// `VmHWM` (the peak resident set so far).
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Every message in an inbox is there once, and every acknowledged send (body -> id) is
/// among them.
pub fn check_exactly_once(
    messages: &[ChatMessage],
    acked: &std::collections::BTreeMap<String, u64>,
) {
    let mut seen: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for message in messages {
        *seen.entry(message.body.as_str()).or_default() += 1;
    }
    for (body, count) in &seen {
        assert_eq!(*count, 1, "{body:?} is in the inbox {count} times");
    }
    for (body, id) in acked {
        assert!(
            seen.contains_key(body.as_str()),
            "acknowledged send {body:?} (id {id}) is missing"
        );
    }
}
