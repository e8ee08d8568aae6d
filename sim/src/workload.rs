//! Simulated chat clients: each has an account, a session, and a plan of operations it
//! performs one at a time, retrying with backoff and following leader hints.

use crate::history::OpKind;
use crate::scenario::{OpPlan, PlannedOp};
use chat_core::app::{Auth, Command, MessageId, Query};
use chat_core::entry::SessionRef;
use chat_core::{ClientId, ClientRequest, NodeId, ReadConsistency, RequestId, Time};

/// How long a client waits for an answer before it tries another node.
pub const REQUEST_TIMEOUT_US: u64 = 1_000_000;
pub const BACKOFF_US_MIN: u64 = 5_000;
pub const BACKOFF_US_MAX: u64 = 500_000;

pub struct InFlight {
    pub history_op: usize,
    pub request: ClientRequest,
    pub request_id: RequestId,
    pub started: Time,
}

pub struct Client {
    pub index: usize,
    pub user: String,
    pub session: ClientId,
    /// The sequence number of the last write started in this session.
    pub seq: u64,
    pub auth: Option<Auth>,
    pub plan: Vec<PlannedOp>,
    pub next_op: usize,
    pub current: Option<InFlight>,
    pub target: NodeId,
    pub retries: u32,
    /// Only the wake-up with the latest token counts.
    pub wake_token: u64,
    /// The pending wake-up ends a backoff (resend to the chosen target), not a timeout.
    pub backing_off: bool,
    /// Messages read and not yet deleted.
    pub read_ids: Vec<MessageId>,
    pub messages_sent: u64,
    /// Gave up: its account could not be created.
    pub stopped: bool,
}

impl Client {
    pub fn new(index: usize, session: ClientId, plan: Vec<PlannedOp>, target: NodeId) -> Client {
        Client {
            index,
            user: format!("c{index}"),
            session,
            seq: 0,
            auth: None,
            plan,
            next_op: 0,
            current: None,
            target,
            retries: 0,
            wake_token: 0,
            backing_off: false,
            read_ids: Vec::new(),
            messages_sent: 0,
            stopped: false,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.current.is_none()
    }

    fn write(&mut self, command: Command) -> ClientRequest {
        self.seq += 1;
        ClientRequest::Write {
            session: SessionRef {
                client: self.session,
                seq: self.seq,
            },
            command,
        }
    }

    /// The request and history entry for the account creation every client starts with.
    pub fn create_account(&mut self) -> (ClientRequest, OpKind) {
        let command = Command::CreateAccount {
            user: self.user.clone(),
            password_hash: format!("sim-hash-{}", self.user),
        };
        (
            self.write(command),
            OpKind::CreateAccount {
                user: self.user.clone(),
            },
        )
    }

    /// The request for a planned operation, or `None` if there is nothing to do for it
    /// (deleting with nothing read).
    pub fn request_for(
        &mut self,
        op: &OpPlan,
        users: &[String],
    ) -> Option<(ClientRequest, OpKind)> {
        let auth = self.auth.clone()?;
        match op {
            OpPlan::Send { to, body_bytes } => {
                let to = users.get(*to)?.clone();
                self.messages_sent += 1;
                let mut body = format!("{}-m{}-", self.user, self.messages_sent);
                while body.len() < *body_bytes {
                    body.push('x');
                }
                let kind = OpKind::Send {
                    from: self.user.clone(),
                    to: to.clone(),
                    body: body.clone(),
                };
                Some((self.write(Command::Send { auth, to, body }), kind))
            }
            OpPlan::Read { limit } => {
                let kind = OpKind::Read {
                    user: self.user.clone(),
                    limit: *limit,
                };
                Some((
                    self.write(Command::ReadMessages {
                        auth,
                        limit: *limit,
                    }),
                    kind,
                ))
            }
            OpPlan::DeleteRead => {
                if self.read_ids.is_empty() {
                    return None;
                }
                let ids: Vec<MessageId> = self
                    .read_ids
                    .iter()
                    .copied()
                    .take(chat_core::app::limits::DELETE_IDS_MAX)
                    .collect();
                let kind = OpKind::Delete {
                    user: self.user.clone(),
                    ids: ids.clone(),
                };
                Some((self.write(Command::DeleteMessages { auth, ids }), kind))
            }
            OpPlan::List { stale } => {
                let consistency = if *stale {
                    ReadConsistency::Stale
                } else {
                    ReadConsistency::Linearizable
                };
                let query = Query::ListAccounts {
                    pattern: "*".to_string(),
                    page: 0,
                };
                Some((
                    ClientRequest::Read { query, consistency },
                    OpKind::List { stale: *stale },
                ))
            }
        }
    }

    /// Exponential backoff with jitter drawn by the caller (`jitter_permille` in 0..1000).
    pub fn backoff_us(&self, jitter_permille: u64) -> u64 {
        let base = BACKOFF_US_MIN
            .saturating_mul(1 << self.retries.min(10))
            .min(BACKOFF_US_MAX);
        base / 2 + base * jitter_permille / 2000
    }
}
