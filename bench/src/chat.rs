//! One benchmark client of our cluster: its own account and exactly-once session,
//! driven through `chat_node::client::ClusterClient`, the same leader-following client
//! `chatctl` uses (it sends to the leader it knows, follows the UNAVAILABLE hint, and
//! retries a write with the same session number).
//!
//! - write: `Send` of a `payload_bytes` body to the client's own inbox (a replicated,
//!   fsynced, exactly-once write);
//! - read: `List` with the client's own name as the pattern, a linearizable read (read
//!   index on the leader) returning one short row, the analogue of etcd's one-key Range;
//! - fill (`chatbench fill`): `Send` of a given body to another account, accounts made
//!   beforehand by a [`Registrar`] and logged in with [`ChatBench::login`].

use anyhow::{bail, Context};
use chat_node::client::ClusterClient;
use chat_proto::chat::{
    Credentials, ListRequest, LoginRequest, RegisterRequest, SendRequest, Session,
};
use std::time::{Duration, Instant};
use tonic::Code;

/// Every benchmark account has this password; the accounts are throwaway.
const PASSWORD: &str = "chatbench-password";
/// How long one operation may keep retrying (leader changes included) before it counts
/// as an error. Shorter than chatctl's: a benchmark should report trouble, not hide it.
pub const RETRY_BUDGET: Duration = Duration::from_secs(5);
/// Setup may meet a cluster still electing its first leader, or a leader busy hashing
/// passwords: it is patient.
const SETUP_RETRY_BUDGET: Duration = Duration::from_secs(20);
/// After the leader refused a registration because its hashing queue was full.
const BUSY_PAUSE: Duration = Duration::from_millis(50);
/// After a login was refused because too many were in progress from this address.
const LOGIN_LIMITED_PAUSE: Duration = Duration::from_millis(250);

pub struct ChatBench {
    cluster: ClusterClient,
    credentials: Credentials,
    user: String,
    body: String,
}

/// Registers accounts through one leader-following client (its channels reused).
pub struct Registrar {
    cluster: ClusterClient,
}

impl Registrar {
    pub fn new(endpoints: &[String]) -> anyhow::Result<Registrar> {
        if endpoints.is_empty() {
            bail!("no chat endpoint given");
        }
        let mut cluster = ClusterClient::new(endpoints.to_vec(), None);
        // Setup may meet a cluster still electing its first leader: be patient here.
        cluster.retry_budget = SETUP_RETRY_BUDGET;
        Ok(Registrar { cluster })
    }

    /// Registers `user`. A leader whose password hashing is saturated refuses with
    /// RESOURCE_EXHAUSTED; that is waited out here, with the same registration id, so
    /// the account is created once.
    pub async fn register(&mut self, user: &str) -> anyhow::Result<()> {
        let register = RegisterRequest {
            registration_id: ClusterClient::registration_id(),
            user: user.to_owned(),
            password: PASSWORD.to_owned(),
        };
        let started = Instant::now();
        loop {
            let result = self
                .cluster
                .call(|mut c| {
                    let request = register.clone();
                    async move { c.register(request).await }
                })
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(status)
                    if status.code() == Code::ResourceExhausted
                        && started.elapsed() < SETUP_RETRY_BUDGET =>
                {
                    tokio::time::sleep(BUSY_PAUSE).await;
                }
                Err(status) => return Err(status).with_context(|| format!("register {user}")),
            }
        }
    }
}

impl ChatBench {
    /// Registers a fresh account `user` and logs it in.
    pub async fn connect(
        endpoints: &[String],
        user: String,
        payload_bytes: usize,
    ) -> anyhow::Result<ChatBench> {
        Registrar::new(endpoints)?.register(&user).await?;
        ChatBench::login(endpoints, user, payload_bytes, RETRY_BUDGET).await
    }

    /// Logs in as `user`, an account that exists (created by a [`Registrar`]); the
    /// login and each operation afterwards retry for up to `retry_budget` (a login
    /// refused by the node's login limiter is waited out longer).
    pub async fn login(
        endpoints: &[String],
        user: String,
        payload_bytes: usize,
        retry_budget: Duration,
    ) -> anyhow::Result<ChatBench> {
        if endpoints.is_empty() {
            bail!("no chat endpoint given");
        }
        let mut cluster = ClusterClient::new(endpoints.to_vec(), None);
        cluster.retry_budget = retry_budget;
        let login = LoginRequest {
            user: user.clone(),
            password: PASSWORD.to_owned(),
        };
        let started = Instant::now();
        let token = loop {
            let result = cluster
                .call(|mut c| {
                    let request = login.clone();
                    async move { c.login(request).await }
                })
                .await;
            match result {
                Ok(answer) => break answer.token,
                // The node limits logins in progress per client address (all of ours
                // come from 127.0.0.1): wait for those ahead to finish.
                Err(status)
                    if status.code() == Code::ResourceExhausted
                        && started.elapsed() < SETUP_RETRY_BUDGET =>
                {
                    tokio::time::sleep(LOGIN_LIMITED_PAUSE).await;
                }
                Err(status) => return Err(status).with_context(|| format!("login {user}")),
            }
        };
        Ok(ChatBench {
            cluster,
            credentials: Credentials {
                user: user.clone(),
                token,
            },
            user,
            body: "x".repeat(payload_bytes),
        })
    }

    /// The stamp of this client's next write (opening its session on the first one).
    pub async fn session(&mut self) -> Result<Session, tonic::Status> {
        self.cluster.session(&self.credentials).await
    }

    /// `Send` of `body` to `to` under `session`: a replicated, exactly-once write.
    pub async fn send_to(
        &mut self,
        session: Session,
        to: &str,
        body: &str,
    ) -> Result<(), tonic::Status> {
        let request = SendRequest {
            session: Some(session),
            auth: Some(self.credentials.clone()),
            to: to.to_owned(),
            body: body.to_owned(),
        };
        self.cluster
            .call(|mut c| {
                let request = request.clone();
                async move { c.send(request).await }
            })
            .await
            .map(drop)
    }

    pub async fn write(&mut self) -> Result<(), tonic::Status> {
        let session = self.session().await?;
        let (to, body) = (self.user.clone(), self.body.clone());
        self.send_to(session, &to, &body).await
    }

    pub async fn read(&mut self) -> Result<(), tonic::Status> {
        let request = ListRequest {
            pattern: self.user.clone(),
            page: 0,
            auth: Some(self.credentials.clone()),
        };
        let listed = self
            .cluster
            .call(|mut c| {
                let request = request.clone();
                async move { c.list(request).await }
            })
            .await?;
        if listed.names.len() != 1 {
            return Err(tonic::Status::internal(format!(
                "list {:?} found {} accounts, expected 1",
                self.user,
                listed.names.len()
            )));
        }
        Ok(())
    }
}
