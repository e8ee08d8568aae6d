//! The client library behind `chatctl` (and the cluster tests): discovers the cluster
//! from any one address, follows the leader, and retries with an exactly-once session.
//!
//! The first write opens a session (registered by the cluster's log, bound to the user).
//! Each write takes the next sequence number of that session once, and every retry of
//! it (after a timeout, a dead node, or a "not the leader") reuses it, so the cluster
//! applies it at most once and answers the retry from its session table. One write is
//! outstanding at a time, as the core's sessions require. Registration needs no session:
//! it carries a random registration id, repeated on its retries.

use chat_proto::chat::chat_client::ChatClient;
use chat_proto::chat::{
    ChatMessage, Credentials, ListenRequest, OpenSessionRequest, Session, StatusRequest,
    StatusResponse,
};
use chat_proto::metadata::LEADER_ADDR;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one operation keeps retrying before it gives up.
pub const RETRY_BUDGET_DEFAULT: Duration = Duration::from_secs(20);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

pub struct ClusterClient {
    /// Every address known, from the command line and from discovery.
    addresses: Vec<String>,
    leader: Option<String>,
    next: usize,
    tls: Option<ClientTlsConfig>,
    unary: BTreeMap<String, Channel>,
    streaming: BTreeMap<String, Channel>,
    /// The open session and the user it belongs to.
    session: Option<(u64, String)>,
    seq: u64,
    pub retry_budget: Duration,
}

impl ClusterClient {
    pub fn new(addresses: Vec<String>, tls: Option<ClientTlsConfig>) -> ClusterClient {
        ClusterClient {
            addresses,
            leader: None,
            next: 0,
            tls,
            unary: BTreeMap::new(),
            streaming: BTreeMap::new(),
            session: None,
            seq: 0,
            retry_budget: RETRY_BUDGET_DEFAULT,
        }
    }

    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Learns every member's address from the first node that answers.
    pub async fn discover(&mut self) -> Result<StatusResponse, Status> {
        let status = self
            .call(|mut c| async move { c.status(StatusRequest {}).await })
            .await?;
        for member in &status.members {
            self.learn(&member.address);
        }
        if !status.leader_address.is_empty() {
            self.leader = Some(status.leader_address.clone());
        }
        Ok(status)
    }

    /// The status of one node, without retries (for a per-node table).
    pub async fn status_of(&mut self, address: &str) -> Result<StatusResponse, Status> {
        let mut client = ChatClient::new(self.channel(address, false)?);
        Ok(client.status(StatusRequest {}).await?.into_inner())
    }

    /// The session stamp of the next write by `credentials`' user, opening a session
    /// first if this client has none for that user. Take it once per operation and
    /// reuse it for every retry of the operation.
    pub async fn session(&mut self, credentials: &Credentials) -> Result<Session, Status> {
        let open = self
            .session
            .as_ref()
            .filter(|(_, user)| *user == credentials.user)
            .map(|(id, _)| *id);
        let id = match open {
            Some(id) => id,
            None => {
                let request = OpenSessionRequest {
                    auth: Some(credentials.clone()),
                };
                let opened = self
                    .call(|mut c| {
                        let request = request.clone();
                        async move { c.open_session(request).await }
                    })
                    .await?;
                self.session = Some((opened.session_id, credentials.user.clone()));
                self.seq = 0;
                opened.session_id
            }
        };
        self.seq += 1;
        Ok(Session { id, seq: self.seq })
    }

    /// Forgets the session, so that the next write opens a new one (after the cluster
    /// answered that it expired).
    pub fn forget_session(&mut self) {
        self.session = None;
        self.seq = 0;
    }

    /// A fresh registration id: 16 random bytes, to repeat on every retry of one
    /// registration.
    pub fn registration_id() -> Vec<u8> {
        uuid::Uuid::new_v4().as_bytes().to_vec()
    }

    fn learn(&mut self, address: &str) {
        if !address.is_empty() && !self.addresses.iter().any(|a| a == address) {
            self.addresses.push(address.to_owned());
        }
    }

    fn channel(&mut self, address: &str, streaming: bool) -> Result<Channel, Status> {
        let cache = if streaming {
            &self.streaming
        } else {
            &self.unary
        };
        if let Some(channel) = cache.get(address) {
            return Ok(channel.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let bad = |e: tonic::transport::Error| {
            Status::invalid_argument(format!("bad address {address:?}: {e}"))
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(bad)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if !streaming {
            endpoint = endpoint.timeout(CALL_TIMEOUT);
        }
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
        }
        let channel = endpoint.connect_lazy();
        let cache = if streaming {
            &mut self.streaming
        } else {
            &mut self.unary
        };
        cache.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    fn target(&mut self) -> Result<String, Status> {
        if let Some(leader) = &self.leader {
            return Ok(leader.clone());
        }
        if self.addresses.is_empty() {
            return Err(Status::invalid_argument("no cluster address given"));
        }
        Ok(self.addresses[self.next % self.addresses.len()].clone())
    }

    /// Calls the cluster until it answers, following leader hints and moving on from
    /// nodes that do not answer, for up to `retry_budget`.
    pub async fn call<T, F, Fut>(&mut self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(ChatClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_on(|channel| call(ChatClient::new(channel))).await
    }

    /// [`ClusterClient::call`] for any service on the nodes' port (the admin API): the
    /// closure makes its client from the channel.
    pub async fn call_on<T, F, Fut>(&mut self, call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_on_with(false, call).await
    }

    /// [`ClusterClient::call_on`] over a channel without the per-call timeout, for a
    /// call that may legitimately take long (a backup); it must set its own deadline
    /// (`Request::set_timeout`).
    pub async fn call_on_long<T, F, Fut>(&mut self, call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_on_with(true, call).await
    }

    async fn call_on_with<T, F, Fut>(&mut self, untimed: bool, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut backoff = BACKOFF_MIN;
        loop {
            let address = self.target()?;
            let channel = self.channel(&address, untimed)?;
            let status = match call(channel).await {
                Ok(response) => {
                    self.leader = Some(address);
                    return Ok(response.into_inner());
                }
                Err(status) => status,
            };
            if !retryable(&status) {
                return Err(status);
            }
            let hint = leader_hint(&status).filter(|hint| *hint != address);
            self.leader = None;
            if started.elapsed() >= self.retry_budget {
                return Err(status);
            }
            match hint {
                Some(hint) => {
                    self.learn(&hint);
                    self.leader = Some(hint);
                }
                None => {
                    self.next += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Streams the user's messages with ids above `after` to `on_message` until it
    /// returns false. When a node dies the stream resumes on another from the last id
    /// seen, so nothing is missed and nothing comes twice.
    pub async fn listen(
        &mut self,
        credentials: Credentials,
        mut after: u64,
        mut on_message: impl FnMut(ChatMessage) -> bool,
    ) -> Result<(), Status> {
        let mut backoff = BACKOFF_MIN;
        let mut failing_since: Option<Instant> = None;
        // A node that cannot serve the stream (out of contact, or behind the cursor)
        // names the leader, which can.
        let mut hinted: Option<String> = None;
        loop {
            if self.addresses.is_empty() {
                return Err(Status::invalid_argument("no cluster address given"));
            }
            let address = match hinted.take() {
                Some(address) => address,
                None => self.addresses[self.next % self.addresses.len()].clone(),
            };
            let mut client = ChatClient::new(self.channel(&address, true)?);
            let request = ListenRequest {
                auth: Some(credentials.clone()),
                after_id: after,
            };
            let error = match client.listen(request).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(message)) => {
                                failing_since = None;
                                backoff = BACKOFF_MIN;
                                if message.id > after {
                                    after = message.id;
                                    if !on_message(message) {
                                        return Ok(());
                                    }
                                }
                            }
                            Ok(None) => break Status::unavailable("stream ended"),
                            Err(status) => break status,
                        }
                    }
                }
                Err(status) => status,
            };
            if !retryable(&error) {
                return Err(error);
            }
            let since = *failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.retry_budget {
                return Err(error);
            }
            hinted = leader_hint(&error).filter(|hint| *hint != address);
            if let Some(hint) = &hinted {
                self.learn(hint);
            }
            self.next += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Failures after which the same request may succeed elsewhere or later.
pub fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_ADDR)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
