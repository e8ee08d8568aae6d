//! One benchmark client of our cluster: its own account and exactly-once session,
//! driven through `chat_node::client::ClusterClient`, the same leader-following client
//! `chatctl` uses (it sends to the leader it knows, follows the UNAVAILABLE hint, and
//! retries a write with the same session number).
//!
//! - write: `Send` of a `payload_bytes` body to the client's own inbox (a replicated,
//!   fsynced, exactly-once write);
//! - read: `List` with the client's own name as the pattern, a linearizable read (read
//!   index on the leader) returning one short row, the analogue of etcd's one-key Range.

use anyhow::{bail, Context};
use chat_node::client::ClusterClient;
use chat_proto::chat::{Credentials, ListRequest, LoginRequest, RegisterRequest, SendRequest};
use std::time::Duration;

/// Every benchmark account has this password; the accounts are throwaway.
const PASSWORD: &str = "chatbench-password";
/// How long one operation may keep retrying (leader changes included) before it counts
/// as an error. Shorter than chatctl's: a benchmark should report trouble, not hide it.
const RETRY_BUDGET: Duration = Duration::from_secs(5);

pub struct ChatBench {
    cluster: ClusterClient,
    credentials: Credentials,
    user: String,
    body: String,
}

impl ChatBench {
    /// Registers a fresh account `user` and logs it in.
    pub async fn connect(
        endpoints: &[String],
        user: String,
        payload_bytes: usize,
    ) -> anyhow::Result<ChatBench> {
        if endpoints.is_empty() {
            bail!("no chat endpoint given");
        }
        let mut cluster = ClusterClient::new(endpoints.to_vec(), None);
        // Setup may meet a cluster still electing its first leader: be patient here.
        cluster.retry_budget = Duration::from_secs(20);
        let register = RegisterRequest {
            registration_id: ClusterClient::registration_id(),
            user: user.clone(),
            password: PASSWORD.to_owned(),
        };
        cluster
            .call(|mut c| {
                let request = register.clone();
                async move { c.register(request).await }
            })
            .await
            .with_context(|| format!("register {user}"))?;
        let login = LoginRequest {
            user: user.clone(),
            password: PASSWORD.to_owned(),
        };
        let token = cluster
            .call(|mut c| {
                let request = login.clone();
                async move { c.login(request).await }
            })
            .await
            .with_context(|| format!("login {user}"))?
            .token;
        cluster.retry_budget = RETRY_BUDGET;
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

    pub async fn write(&mut self) -> Result<(), tonic::Status> {
        let session = self.cluster.session(&self.credentials).await?;
        let request = SendRequest {
            session: Some(session),
            auth: Some(self.credentials.clone()),
            to: self.user.clone(),
            body: self.body.clone(),
        };
        self.cluster
            .call(|mut c| {
                let request = request.clone();
                async move { c.send(request).await }
            })
            .await
            .map(drop)
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
