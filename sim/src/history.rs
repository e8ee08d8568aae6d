//! The client history: every operation the simulated clients invoked and how it ended.

use chat_core::app::MessageId;
use chat_core::{ClientError, Response};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    CreateAccount {
        user: String,
    },
    /// Opens a session for `user` (registered by the log).
    OpenSession {
        user: String,
    },
    Send {
        from: String,
        to: String,
        body: String,
    },
    Read {
        user: String,
        limit: u32,
    },
    /// A linearizable read of the inbox that marks nothing read (`MessagesAfter` from the
    /// start): the read that a stale leader could serve wrongly.
    Peek {
        user: String,
        limit: u32,
    },
    Delete {
        user: String,
        ids: Vec<MessageId>,
    },
    List {
        stale: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRecord {
    pub client: usize,
    pub kind: OpKind,
    pub invoke_us: u64,
    pub complete_us: Option<u64>,
    /// `None` while (or if forever) unknown.
    pub outcome: Option<Result<Response, ClientError>>,
    pub attempts: u32,
    /// Set when the request misbehaved (`client-abuse`): the checkers judge it by this.
    pub abuse: Option<Abuse>,
}

/// How an operation's request misbehaved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abuse {
    /// Sent in a session that was never opened: must be refused, never applied.
    FreshSession,
    /// A session opened only to be abandoned (churn).
    Churn,
    /// Another command under an answered sequence number: must be refused.
    Mismatch,
    /// Sent under client `owner`'s session.
    Foreign { owner: usize },
    /// The very request of operation `of`, sent again long after: not a new operation,
    /// so it may only take effect if `of` did not, and must be answered with `of`'s
    /// answer or refused.
    Replay { of: usize },
    /// Sent with a sequence number out of order.
    SeqJump,
}

#[derive(Clone, Debug, Default)]
pub struct History {
    pub ops: Vec<OpRecord>,
}

impl History {
    pub fn invoke(&mut self, client: usize, kind: OpKind, now_us: u64) -> usize {
        self.ops.push(OpRecord {
            client,
            kind,
            invoke_us: now_us,
            complete_us: None,
            outcome: None,
            attempts: 0,
            abuse: None,
        });
        self.ops.len() - 1
    }

    pub fn complete(&mut self, op: usize, outcome: Result<Response, ClientError>, now_us: u64) {
        let record = &mut self.ops[op];
        debug_assert!(record.outcome.is_none(), "an operation completes once");
        record.outcome = Some(outcome);
        record.complete_us = Some(now_us);
    }

    pub fn pending_count(&self) -> usize {
        self.ops.iter().filter(|op| op.outcome.is_none()).count()
    }
}
