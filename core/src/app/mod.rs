//! The chat state machine: accounts, per-user inboxes, and the operations on them.
//!
//! `apply` is a pure function of the command and its [`ApplyContext`] (log index and the
//! timestamp the leader stamped): every replica that applies the same log reaches the same
//! state, byte for byte. Passwords never reach this module, only hashes computed by the
//! shell. Authentication is checked here against the account generation and token epoch
//! that the shell read out of a verified token, so a token dies with its account and on
//! logout, on every replica, at the same log position.

use crate::types::{LogIndex, SessionId, Time};
use serde::{Deserialize, Serialize};

mod commands;
mod glob;
mod queries;
mod state;
#[cfg(test)]
mod tests;
mod validate;

pub use state::ChatState;

/// Bounds on everything that grows from input.
pub mod limits {
    pub const USERNAME_BYTES_MIN: usize = 1;
    pub const USERNAME_BYTES_MAX: usize = 32;
    pub const PASSWORD_HASH_BYTES_MAX: usize = 256;
    pub const BODY_BYTES_MAX: usize = 4_096;
    pub const INBOX_MESSAGES_MAX: usize = 10_000;
    pub const READ_LIMIT_MAX: u32 = 1_000;
    pub const DELETE_IDS_MAX: usize = 1_000;
    pub const PATTERN_BYTES_MAX: usize = 64;
    pub const LIST_PAGE_SIZE: usize = 50;
    pub const USERS_MAX: usize = 1_000_000;
}

/// Message ids are the log index of the `Send` that created them: unique, increasing,
/// and the same on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub u64);

/// Who is acting, as proven by a token the shell verified. `generation` is the log index
/// at which the account was created; `token_epoch` counts the account's logouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    pub user: String,
    pub generation: u64,
    pub token_epoch: u64,
}

/// Replicated writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates an account. `registration` is a random number the client picks once per
    /// registration and repeats on every retry of it: a retry that finds the account it
    /// created answers `AccountCreated` again instead of `UserExists`, which makes
    /// registration exactly-once without a session (a session needs an account).
    CreateAccount {
        user: String,
        password_hash: String,
        registration: u128,
    },
    /// Registers an exactly-once session bound to the authenticated account; its id is
    /// the index of this entry. Sent outside any session.
    OpenSession {
        auth: Auth,
    },
    /// Invalidates every token issued to the account so far.
    Logout {
        auth: Auth,
    },
    Send {
        auth: Auth,
        to: String,
        body: String,
    },
    /// Returns up to `limit` unread messages, oldest first, and marks them read.
    ReadMessages {
        auth: Auth,
        limit: u32,
    },
    /// Deletes messages from the actor's own inbox; all or nothing.
    DeleteMessages {
        auth: Auth,
        ids: Vec<MessageId>,
    },
    DeleteAccount {
        auth: Auth,
    },
}

impl Command {
    /// Upper-bound estimate of the encoded size, for batching.
    pub fn size_bytes_estimate(&self) -> usize {
        const FIXED_BYTES: usize = 64;
        FIXED_BYTES
            + match self {
                Command::CreateAccount {
                    user,
                    password_hash,
                    registration: _,
                } => user.len() + password_hash.len(),
                Command::OpenSession { auth }
                | Command::Logout { auth }
                | Command::DeleteAccount { auth } => auth.user.len(),
                Command::Send { auth, to, body } => auth.user.len() + to.len() + body.len(),
                Command::ReadMessages { auth, .. } => auth.user.len(),
                Command::DeleteMessages { auth, ids } => auth.user.len() + 8 * ids.len(),
            }
    }

    /// The account acting, for the commands that run in a session: every command but
    /// account creation and session opening.
    pub fn session_auth(&self) -> Option<&Auth> {
        match self {
            Command::CreateAccount { .. } | Command::OpenSession { .. } => None,
            Command::Logout { auth }
            | Command::Send { auth, .. }
            | Command::ReadMessages { auth, .. }
            | Command::DeleteMessages { auth, .. }
            | Command::DeleteAccount { auth } => Some(auth),
        }
    }
}

/// Reads that do not change state. Served linearizably (read index) or stale on request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// Accounts whose name matches a glob (`*`, `?`), sorted, `page` counted from 0.
    ListAccounts {
        pattern: String,
        page: u32,
    },
    /// What the shell needs to verify a password and mint a token.
    Credentials {
        user: String,
    },
    UnreadCount {
        auth: Auth,
    },
    /// Messages in the actor's inbox with an id above `after`, oldest first, read or not:
    /// how a live listener resumes after failover without gaps or repeats.
    MessagesAfter {
        auth: Auth,
        after: MessageId,
        limit: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub id: MessageId,
    pub sender: String,
    /// The sender's account was deleted (or deleted and its name taken again) since.
    pub sender_deleted: bool,
    pub recipient: String,
    pub body: String,
    pub timestamp: Time,
    pub read: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutput {
    AccountCreated { user: String, generation: u64 },
    SessionOpened { session: SessionId },
    LoggedOut,
    Sent { id: MessageId, timestamp: Time },
    Messages(Vec<MessageView>),
    Deleted { count: u32 },
    AccountDeleted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryOutput {
    Accounts {
        names: Vec<String>,
        page: u32,
        total: u64,
        has_more: bool,
    },
    Credentials {
        user: String,
        password_hash: String,
        generation: u64,
        token_epoch: u64,
        unread_count: u64,
    },
    UnreadCount(u64),
    Messages(Vec<MessageView>),
}

/// A message to push to the recipient's live subscriptions, produced on every replica that
/// applies the `Send`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub message: MessageView,
}

/// Every way a chat operation can be refused. Each is a normal outcome, never a panic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AppError {
    #[error("invalid username {name:?}: {reason}")]
    InvalidUsername { name: String, reason: String },
    #[error("username {0:?} is taken")]
    UserExists(String),
    #[error("no such user {0:?}")]
    UnknownUser(String),
    #[error("message body is {size_bytes} bytes; the limit is {max_bytes}")]
    BodyTooLarge { size_bytes: usize, max_bytes: usize },
    #[error("message body is empty")]
    EmptyBody,
    #[error("password hash is malformed")]
    InvalidPasswordHash,
    #[error("not authenticated: the token is expired, logged out, or its account is gone")]
    Unauthenticated,
    #[error("inbox of {0:?} is full")]
    InboxFull(String),
    #[error("no message {0} in your inbox")]
    MessageNotFound(u64),
    #[error("invalid pattern: {0}")]
    InvalidPattern(String),
    #[error("{what} must be between {min} and {max}, got {got}")]
    OutOfRange {
        what: String,
        min: u64,
        max: u64,
        got: u64,
    },
    #[error("the cluster holds the maximum number of accounts")]
    TooManyUsers,
    #[error("the session table is full; retry after idle sessions expire")]
    TooManySessions,
}

/// Where in the log a command is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyContext {
    pub index: LogIndex,
    pub timestamp: Time,
}
