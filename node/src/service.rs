//! The client API: each call becomes one core request (or, for login, a read plus work
//! done here), and each answer or refusal a typed gRPC response or status.

use crate::auth::{self, Secret, TokenClaims};
use crate::clock::unix_now_us;
use crate::convert;
use crate::driver::{CoreHandle, Input, StatusSnapshot, SubmitError};
use crate::hashing::HashPool;
use crate::limiter::{Attempt, LoginLimiter};
use crate::listen;
use crate::metrics::{ClientMetrics, RequestKind};
use chat_core::app::{
    limits, Auth, ChatState, Command, CommandOutput, MessageId, Query, QueryOutput,
};
use chat_core::{ClientError, ClientRequest, ReadConsistency, Response as CoreResponse, Role};
use chat_proto::chat::chat_server::Chat;
use chat_proto::chat::*;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tonic::{Request, Response, Status};

/// How long a call waits for the cluster before answering UNAVAILABLE. The client then
/// retries with the same session number, so an answer lost here is never applied twice.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// A client request, password and all, fits in this.
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 16 * 1024;

#[derive(Clone)]
pub struct ChatService {
    pub inner: Arc<Shared>,
}

pub struct Shared {
    pub core: CoreHandle,
    pub secret: Secret,
    /// Where each member is reached (leader hints, `Status`): follows the membership.
    pub addresses: crate::members::AddressBook,
    pub token_ttl_us: u64,
    pub shutdown: watch::Receiver<bool>,
    /// The live `Listen` streams, bounded per user and per node.
    pub listeners: listen::Listeners,
    /// Where register and login hash passwords: bounded threads, bounded queue.
    pub hashing: Arc<HashPool>,
    /// Wrong passwords per account and per client address (this node's own count).
    pub login_limiter: Mutex<LoginLimiter>,
    /// Requests handed to the core and their latency; login refusals.
    pub metrics: ClientMetrics,
}

impl Shared {
    pub(crate) async fn submit(&self, request: ClientRequest) -> Result<CoreResponse, Status> {
        let (reply, answer) = oneshot::channel();
        let kind = RequestKind::of(&request);
        let started = Instant::now();
        self.core
            .submit(Input::Client { request, reply })
            .map_err(submit_error)?;
        self.metrics.submitted(kind);
        let answered = tokio::time::timeout(REQUEST_TIMEOUT, answer).await;
        self.metrics.answered(kind, started.elapsed());
        match answered {
            Err(_) => Err(Status::unavailable(
                "no answer from the cluster in time (no quorum?); retry",
            )),
            Ok(Err(_)) => Err(Status::unavailable(
                "node is shutting down; retry elsewhere",
            )),
            Ok(Ok(outcome)) => {
                outcome.map_err(|e| convert::client_error(&e, &self.addresses.map()))
            }
        }
    }

    /// A write in the client's session.
    async fn write(
        &self,
        session: Option<Session>,
        command: Command,
    ) -> Result<CommandOutput, Status> {
        let session = Some(convert::session(session)?);
        self.write_in(session, command).await
    }

    /// A write in `session`, or outside any session (account creation, session opening).
    async fn write_in(
        &self,
        session: Option<chat_core::entry::SessionRef>,
        command: Command,
    ) -> Result<CommandOutput, Status> {
        match self
            .submit(ClientRequest::Write { session, command })
            .await?
        {
            CoreResponse::Command(output) => Ok(output),
            CoreResponse::Query(output) => Err(unexpected(output)),
            CoreResponse::Membership(output) => Err(unexpected(output)),
        }
    }

    pub async fn read(
        &self,
        query: Query,
        consistency: ReadConsistency,
    ) -> Result<QueryOutput, Status> {
        match self
            .submit(ClientRequest::Read { query, consistency })
            .await?
        {
            CoreResponse::Query(output) => Ok(output),
            CoreResponse::Command(output) => Err(unexpected(output)),
            CoreResponse::Membership(output) => Err(unexpected(output)),
        }
    }

    /// The identity a token proves, for the user the request names. A token for someone
    /// else is PERMISSION_DENIED: a user acts only on their own inbox.
    pub fn authenticate(&self, credentials: Option<Credentials>) -> Result<Auth, Status> {
        self.verify(credentials).map(|claims| claims.auth)
    }

    pub fn verify(&self, credentials: Option<Credentials>) -> Result<TokenClaims, Status> {
        let credentials =
            credentials.ok_or_else(|| Status::unauthenticated("missing credentials"))?;
        let claims = self
            .secret
            .verify_token(&credentials.token, unix_now_us())
            .map_err(|e| convert::auth_error(&e))?;
        if claims.auth.user != credentials.user {
            return Err(Status::permission_denied(format!(
                "the token belongs to {:?}, not {:?}",
                claims.auth.user, credentials.user
            )));
        }
        Ok(claims)
    }

    pub async fn status(&self) -> Result<StatusSnapshot, Status> {
        let (reply, answer) = oneshot::channel();
        self.core
            .submit(Input::Status(reply))
            .map_err(submit_error)?;
        answer
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))
    }
}

/// Password work only the leader can make worthwhile.
impl Shared {
    /// Refuses at once, with the usual "not the leader" answer and address, when this
    /// node is not the leader as of its core's last batch. Register and login call it
    /// before hashing, so a client pointed at a follower costs it no hash. (Core checks
    /// leadership again when the request arrives; this only saves the work.)
    fn require_leader(&self) -> Result<(), Status> {
        let leadership = self.core.leadership();
        if leadership.role == Role::Leader {
            return Ok(());
        }
        let refusal = ClientError::NotLeader {
            leader_hint: leadership.leader_id,
        };
        Err(convert::client_error(&refusal, &self.addresses.map()))
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, LoginLimiter> {
        // A panic while holding the lock leaves at worst one bucket a token off.
        self.login_limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one login attempt from `user`'s and `address`'s allowance, or refuses.
    fn begin_login(&self, user: &str, address: Option<IpAddr>) -> Result<Attempt, Status> {
        self.limiter()
            .begin(user, address, Instant::now())
            .map_err(|e| {
                self.metrics.login_refused(&e);
                convert::login_limited(&e)
            })
    }

    /// Only a wrong password (or unknown user) spends the attempt; anything else (a right
    /// password, a busy pool, a lost leader) gives it back.
    fn end_login<T>(&self, attempt: Attempt, outcome: &Result<T, Status>) {
        let mut limiter = self.limiter();
        match outcome {
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                limiter.failed(attempt);
            }
            _ => limiter.refund(attempt),
        }
    }

    /// Checks `user`'s password against the hash a linearizable read returns; mints a
    /// token on success.
    async fn check_login(&self, user: String, password: String) -> Result<LoginResponse, Status> {
        let wrong = || Status::unauthenticated(auth::AuthError::WrongPassword.to_string());
        let query = Query::Credentials { user: user.clone() };
        let output = match self.read(query, ReadConsistency::Linearizable).await {
            // An unknown or impossible name gets the same answer as a wrong password,
            // so login cannot be used to probe which accounts exist.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound | tonic::Code::InvalidArgument
                ) =>
            {
                return Err(wrong())
            }
            other => other?,
        };
        let QueryOutput::Credentials {
            user,
            password_hash,
            generation,
            token_epoch,
            unread_count,
        } = output
        else {
            return Err(unexpected(output));
        };
        self.hashing
            .verify(password, password_hash)
            .await
            .map_err(|e| convert::hash_error(&e))?;
        let expires_at_us = unix_now_us().saturating_add(self.token_ttl_us);
        let auth = Auth {
            user,
            generation,
            token_epoch,
        };
        Ok(LoginResponse {
            token: self.secret.mint_token(&auth, expires_at_us),
            unread_count,
            expires_at_us,
        })
    }
}

fn submit_error(error: SubmitError) -> Status {
    Status::unavailable(error.to_string())
}

/// Core answered a call with an output of another kind: a bug. The details (which may
/// hold message bodies) go to the node's log, never to the client.
fn unexpected(output: impl std::fmt::Debug) -> Status {
    tracing::error!(?output, "core answered with an output of another kind");
    Status::internal("internal error: unexpected answer from core; see the node's log")
}

#[tonic::async_trait]
impl Chat for ChatService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let RegisterRequest {
            user,
            password,
            registration_id,
        } = request.into_inner();
        let registration = convert::registration(&registration_id)?;
        // Refuse a bad name before paying for a hash (the leader checks again).
        ChatState::validate(&Command::CreateAccount {
            user: user.clone(),
            password_hash: "-".to_owned(),
            registration,
        })
        .map_err(|e| convert::app_error(&e))?;
        auth::check_password_size(&password).map_err(|e| convert::auth_error(&e))?;
        self.inner.require_leader()?;
        let password_hash = self
            .inner
            .hashing
            .hash(password)
            .await
            .map_err(|e| convert::hash_error(&e))?;
        let command = Command::CreateAccount {
            user,
            password_hash,
            registration,
        };
        match self.inner.write_in(None, command).await? {
            CommandOutput::AccountCreated { user, .. } => {
                Ok(Response::new(RegisterResponse { user }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let address = request.remote_addr().map(|a| a.ip());
        let LoginRequest { user, password } = request.into_inner();
        auth::check_password_size(&password).map_err(|e| convert::auth_error(&e))?;
        // An impossible name cannot log in: the same answer as a wrong password, and no
        // limiter entry, so its keys stay within the name length limit.
        let impossible = Command::CreateAccount {
            user: user.clone(),
            password_hash: "-".to_owned(),
            registration: 0,
        };
        if ChatState::validate(&impossible).is_err() {
            return Err(Status::unauthenticated(
                auth::AuthError::WrongPassword.to_string(),
            ));
        }
        // Cheapest refusals first: not the leader, then over the limits; only then the
        // read and the hash.
        self.inner.require_leader()?;
        let attempt = self.inner.begin_login(&user, address)?;
        let outcome = self.inner.check_login(user, password).await;
        self.inner.end_login(attempt, &outcome);
        outcome.map(Response::new)
    }

    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> Result<Response<OpenSessionResponse>, Status> {
        let auth = self.inner.authenticate(request.into_inner().auth)?;
        match self
            .inner
            .write_in(None, Command::OpenSession { auth })
            .await?
        {
            CommandOutput::SessionOpened { session } => Ok(Response::new(OpenSessionResponse {
                session_id: session.0,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let request = request.into_inner();
        let auth = self.inner.authenticate(request.auth)?;
        match self
            .inner
            .write(request.session, Command::Logout { auth })
            .await?
        {
            CommandOutput::LoggedOut => Ok(Response::new(LogoutResponse {})),
            other => Err(unexpected(other)),
        }
    }

    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let request = request.into_inner();
        let auth = self.inner.authenticate(request.auth)?;
        let command = Command::Send {
            auth,
            to: request.to,
            body: request.body,
        };
        match self.inner.write(request.session, command).await? {
            CommandOutput::Sent { id, timestamp } => Ok(Response::new(SendResponse {
                id: id.0,
                timestamp_us: timestamp.as_micros(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let request = request.into_inner();
        let auth = self.inner.authenticate(request.auth)?;
        let limit = if request.limit == 0 {
            limits::READ_LIMIT_MAX
        } else {
            request.limit
        };
        let command = Command::ReadMessages { auth, limit };
        match self.inner.write(request.session, command).await? {
            CommandOutput::Messages(views) => Ok(Response::new(ReadResponse {
                messages: views.iter().map(convert::message).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ListRequest {
            pattern,
            page,
            auth,
        } = request.into_inner();
        // Only users may see who else is here: a valid token, not logged out (as this
        // replica has applied it), before the linearizable listing.
        let auth = self.inner.authenticate(auth)?;
        self.inner
            .read(Query::UnreadCount { auth }, ReadConsistency::Stale)
            .await?;
        let pattern = if pattern.is_empty() {
            "*".to_owned()
        } else {
            pattern
        };
        let query = Query::ListAccounts { pattern, page };
        match self
            .inner
            .read(query, ReadConsistency::Linearizable)
            .await?
        {
            QueryOutput::Accounts {
                names,
                page,
                total,
                has_more,
            } => Ok(Response::new(ListResponse {
                names,
                page,
                total,
                has_more,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_messages(
        &self,
        request: Request<DeleteMessagesRequest>,
    ) -> Result<Response<DeleteMessagesResponse>, Status> {
        let request = request.into_inner();
        let auth = self.inner.authenticate(request.auth)?;
        let ids = request.ids.into_iter().map(MessageId).collect();
        match self
            .inner
            .write(request.session, Command::DeleteMessages { auth, ids })
            .await?
        {
            CommandOutput::Deleted { count } => {
                Ok(Response::new(DeleteMessagesResponse { deleted: count }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_account(
        &self,
        request: Request<DeleteAccountRequest>,
    ) -> Result<Response<DeleteAccountResponse>, Status> {
        let request = request.into_inner();
        let auth = self.inner.authenticate(request.auth)?;
        match self
            .inner
            .write(request.session, Command::DeleteAccount { auth })
            .await?
        {
            CommandOutput::AccountDeleted => Ok(Response::new(DeleteAccountResponse {})),
            other => Err(unexpected(other)),
        }
    }

    type ListenStream = listen::ListenStream;

    async fn listen(
        &self,
        request: Request<ListenRequest>,
    ) -> Result<Response<Self::ListenStream>, Status> {
        let request = request.into_inner();
        let claims = self.inner.verify(request.auth)?;
        listen::start(Arc::clone(&self.inner), claims, MessageId(request.after_id))
            .map(Response::new)
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let s = self.inner.status().await?;
        let leader_id = s.leader_id.map_or(0, |id| id.0);
        let addresses = self.inner.addresses.map();
        Ok(Response::new(StatusResponse {
            id: s.id.0,
            role: convert::role(s.role).to_owned(),
            term: s.term.0,
            leader_id,
            leader_address: addresses.get(&leader_id).cloned().unwrap_or_default(),
            commit_index: s.commit_index.0,
            last_applied: s.last_applied.0,
            last_log_index: s.last_log_index.0,
            state_hash: s.state_hash,
            members: addresses
                .iter()
                .map(|(&id, address)| Member {
                    id,
                    address: address.clone(),
                })
                .collect(),
        }))
    }
}
