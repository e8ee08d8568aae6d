//! Simulated chat clients: each has an account, a session, and a plan of operations it
//! performs one at a time, retrying with backoff and following leader hints.
//!
//! **Misbehaving clients** (`client-abuse`, in `all`, drawn for half the seeds). [`plan_abuse`] adds to some
//! clients' plans operations a polite client never sends (`OpPlan::FreshSession`,
//! `OpenSession` churn, `ForeignSession`, `Replay`, `SeqJump`, `Mismatch`) and bursts
//! of linearizable reads; the scenario also shrinks the session table's bounds and
//! expiry (`ReplicaTuning::sessions_max`, `sessions_per_user_max`,
//! `session_expiry_us`) so that churn reaches them. They are plan entries, so shrinking
//! removes them like any operation, and each is recorded in the history with its
//! [`Abuse`](crate::history::Abuse) tag for the checkers (`checker::check_abuse`).

use crate::history::OpKind;
use crate::scenario::{ClientPlan, OpPlan, PlannedOp, ReplicaTuning};
use chat_core::app::{Auth, Command, MessageId, Query};
use chat_core::entry::SessionRef;
use chat_core::{ClientRequest, NodeId, ReadConsistency, RequestId, SessionId, Time};
use rand::Rng;

/// How long a client waits for an answer before it tries another node.
pub const REQUEST_TIMEOUT_US: u64 = 1_000_000;
pub const BACKOFF_US_MIN: u64 = 5_000;
/// Messages one peek returns at most: the oldest, read or not.
pub const PEEK_LIMIT: u32 = 20;
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
    /// Picked once; every attempt of the account creation carries it.
    pub registration: u128,
    /// The session the client writes in, once opened (by the log).
    pub session: Option<SessionId>,
    /// The sequence number of the last write started in this session.
    pub seq: u64,
    /// The sequence number of the last write of this session acknowledged with a
    /// success: what a mismatched retry (`OpPlan::Mismatch`) reuses.
    pub seq_acked: Option<u64>,
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
    /// Every write request this client started, with its history operation: what a
    /// `Replay` sends again.
    pub sent: Vec<(ClientRequest, usize)>,
}

impl Client {
    pub fn new(index: usize, registration: u128, plan: Vec<PlannedOp>, target: NodeId) -> Client {
        Client {
            index,
            user: format!("c{index}"),
            registration,
            session: None,
            seq: 0,
            seq_acked: None,
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
            sent: Vec::new(),
        }
    }

    pub fn is_idle(&self) -> bool {
        self.current.is_none()
    }

    /// The next write of the session, or `None` without a session.
    fn write(&mut self, command: Command) -> Option<ClientRequest> {
        let id = self.session?;
        self.seq += 1;
        Some(ClientRequest::Write {
            session: Some(SessionRef { id, seq: self.seq }),
            command,
        })
    }

    /// Starts over in a session to be opened (the last one expired, was evicted, or
    /// refused this client).
    pub fn drop_session(&mut self) {
        self.session = None;
        self.seq = 0;
        self.seq_acked = None;
    }

    /// The request and history entry for the account creation every client starts with.
    pub fn create_account(&mut self) -> (ClientRequest, OpKind) {
        let command = Command::CreateAccount {
            user: self.user.clone(),
            password_hash: format!("sim-hash-{}", self.user),
            registration: self.registration,
        };
        (
            ClientRequest::Write {
                session: None,
                command,
            },
            OpKind::CreateAccount {
                user: self.user.clone(),
            },
        )
    }

    /// The request and history entry that opens a session, or `None` before the account
    /// exists.
    pub fn open_session(&self) -> Option<(ClientRequest, OpKind)> {
        let auth = self.auth.clone()?;
        Some((
            ClientRequest::Write {
                session: None,
                command: Command::OpenSession { auth },
            },
            OpKind::OpenSession {
                user: self.user.clone(),
            },
        ))
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
                Some((self.write(Command::Send { auth, to, body })?, kind))
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
                    })?,
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
                Some((self.write(Command::DeleteMessages { auth, ids })?, kind))
            }
            OpPlan::Peek => {
                let query = Query::MessagesAfter {
                    auth,
                    after: MessageId(0),
                    limit: PEEK_LIMIT,
                };
                let kind = OpKind::Peek {
                    user: self.user.clone(),
                    limit: PEEK_LIMIT,
                };
                Some((
                    ClientRequest::Read {
                        query,
                        consistency: ReadConsistency::Linearizable,
                    },
                    kind,
                ))
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
            // Misbehaviour needs the world (other clients' sessions, fresh ids):
            // `World::abusive_request`.
            OpPlan::FreshSession { .. }
            | OpPlan::ForeignSession { .. }
            | OpPlan::Replay { .. }
            | OpPlan::SeqJump { .. }
            | OpPlan::OpenSession
            | OpPlan::Mismatch { .. } => None,
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

/// The same request under another session reference (a read has none: unchanged).
pub fn with_session(request: ClientRequest, session: SessionRef) -> ClientRequest {
    match request {
        ClientRequest::Write { command, .. } => ClientRequest::Write {
            session: Some(session),
            command,
        },
        read => read,
    }
}

/// Adds misbehaviour to the plans (`client-abuse`): one to three abusers, each with a
/// few abuse phases at random points of its plan; every client may replay old requests.
pub fn plan_abuse(rng: &mut impl Rng, clients: &mut [ClientPlan], tuning: &ReplicaTuning) {
    let count = clients.len();
    if count == 0 {
        return;
    }
    let sessions_max = tuning.sessions_max.unwrap_or(64);
    let per_user_max = tuning.sessions_per_user_max.unwrap_or(4);
    let own_op = |rng: &mut dyn rand::RngCore| -> OpPlan {
        match rng.random_range(0..3) {
            0 => OpPlan::Send {
                to: rng.random_range(0..count),
                body_bytes: rng.random_range(1..=20),
            },
            1 => OpPlan::Read {
                limit: rng.random_range(1..=5),
            },
            _ => OpPlan::DeleteRead,
        }
    };
    for _ in 0..rng.random_range(1..=3usize.min(count)) {
        let abuser = rng.random_range(0..count);
        for _ in 0..rng.random_range(1..=4) {
            let mut burst = Vec::new();
            match rng.random_range(0..6) {
                // Session churn past the user's bound, and requests in sessions that were
                // never opened, with cheap requests.
                0 => {
                    for _ in 0..per_user_max + rng.random_range(1..=sessions_max) {
                        let op = if rng.random_bool(0.5) {
                            OpPlan::OpenSession
                        } else {
                            OpPlan::FreshSession {
                                op: Box::new(OpPlan::Read { limit: 1 }),
                            }
                        };
                        burst.push(PlannedOp {
                            think_us: rng.random_range(0..=2_000),
                            op,
                        });
                    }
                }
                // Another command under an answered sequence number, right after it.
                5 => {
                    burst.push(PlannedOp {
                        think_us: rng.random_range(0..=50_000),
                        op: own_op(rng),
                    });
                    burst.push(PlannedOp {
                        think_us: rng.random_range(0..=50_000),
                        op: OpPlan::Mismatch {
                            op: Box::new(own_op(rng)),
                        },
                    });
                }
                // Another client's session.
                1 => {
                    for _ in 0..rng.random_range(1..=4) {
                        burst.push(PlannedOp {
                            think_us: rng.random_range(0..=200_000),
                            op: OpPlan::ForeignSession {
                                // Another client (its own session at its own last number
                                // would be a retry of its own request, answered as one).
                                victim: (abuser + rng.random_range(1..count.max(2))) % count,
                                ahead: rng.random_bool(0.5),
                                op: Box::new(own_op(rng)),
                            },
                        });
                    }
                }
                // Out-of-order sequence numbers.
                2 => {
                    for _ in 0..rng.random_range(1..=4) {
                        let delta = if rng.random_bool(0.5) {
                            rng.random_range(2..=1_000)
                        } else {
                            -rng.random_range(1..=5)
                        };
                        burst.push(PlannedOp {
                            think_us: rng.random_range(0..=100_000),
                            op: OpPlan::SeqJump {
                                delta,
                                op: Box::new(own_op(rng)),
                            },
                        });
                    }
                }
                // A burst of linearizable reads (around leader changes when faults strike).
                3 => {
                    for _ in 0..rng.random_range(10..=50) {
                        burst.push(PlannedOp {
                            think_us: 0,
                            op: OpPlan::List { stale: false },
                        });
                    }
                }
                // A retry after a very long delay.
                _ => burst.push(PlannedOp {
                    think_us: rng.random_range(1_000_000..=5_000_000),
                    op: OpPlan::Replay {
                        back: rng.random_range(0..200),
                    },
                }),
            }
            let ops = &mut clients[abuser].ops;
            let at = rng.random_range(0..=ops.len());
            ops.splice(at..at, burst);
        }
    }
    // Anyone may retry an old request late (after floods evicted its session).
    for plan in clients.iter_mut() {
        for _ in 0..rng.random_range(0..=3) {
            let at = rng.random_range(0..=plan.ops.len());
            plan.ops.insert(
                at,
                PlannedOp {
                    think_us: rng.random_range(0..=1_000_000),
                    op: OpPlan::Replay {
                        back: rng.random_range(0..20),
                    },
                },
            );
        }
    }
}
