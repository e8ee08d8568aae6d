//! The replicated chat state: what it holds, how it is hashed, and the invariants that
//! must hold between any two applied commands. Commands live in `commands.rs`, queries
//! in `queries.rs`.

use super::limits::INBOX_MESSAGES_MAX;
use super::validate;
use super::{AppError, Auth, MessageId, MessageView};
use crate::types::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every account and every inbox. Only ordered maps, so that iteration order, the
/// encoding and therefore [`ChatState::state_hash`] are the same on every replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatState {
    pub(super) users: BTreeMap<String, Account>,
    /// The sum of all inbox sizes, kept so that counting is not a scan.
    pub(super) message_count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Account {
    pub(super) password_hash: String,
    /// The log index of the `CreateAccount`: tells this account apart from an earlier or
    /// later one that had the same name.
    pub(super) generation: u64,
    /// Counts logouts; a token is valid only for the epoch it was minted in.
    pub(super) token_epoch: u64,
    /// The client's number for the registration that created the account, so that a
    /// retry of it is answered `AccountCreated` (see `Command::CreateAccount`).
    pub(super) registration: u128,
    pub(super) created_at: Time,
    pub(super) inbox: Inbox,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Inbox {
    /// Keyed by id, which is the log index of the send, so iteration is oldest first.
    messages: BTreeMap<MessageId, StoredMessage>,
    /// Kept in step with `messages` by every mutation below, so unread counts cost no
    /// scan.
    unread_count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredMessage {
    pub(super) sender: String,
    /// The sender's generation when it sent this: if the name now belongs to another
    /// generation (or to nobody), the message is shown as from a deleted sender.
    pub(super) sender_generation: u64,
    pub(super) body: String,
    pub(super) timestamp: Time,
    pub(super) read: bool,
}

impl Inbox {
    pub(super) fn len(&self) -> usize {
        self.messages.len()
    }

    pub(super) fn unread_count(&self) -> u64 {
        self.unread_count
    }

    pub(super) fn messages(&self) -> &BTreeMap<MessageId, StoredMessage> {
        &self.messages
    }

    pub(super) fn contains(&self, id: MessageId) -> bool {
        self.messages.contains_key(&id)
    }

    /// Returns whether the inbox grew. Ids are log indexes, so a collision means the caller
    /// applied the same log index twice; the counters stay right even then.
    pub(super) fn insert(&mut self, id: MessageId, message: StoredMessage) -> bool {
        if !message.read {
            self.unread_count += 1;
        }
        let replaced = self.messages.insert(id, message);
        debug_assert!(replaced.is_none(), "message id {id:?} applied twice");
        match replaced {
            Some(old) => {
                if !old.read {
                    self.unread_count = self.unread_count.saturating_sub(1);
                }
                false
            }
            None => true,
        }
    }

    pub(super) fn mark_read(&mut self, id: MessageId) {
        if let Some(message) = self.messages.get_mut(&id) {
            if !message.read {
                message.read = true;
                self.unread_count = self.unread_count.saturating_sub(1);
            }
        }
    }

    pub(super) fn remove(&mut self, id: MessageId) -> Option<StoredMessage> {
        let removed = self.messages.remove(&id)?;
        if !removed.read {
            self.unread_count = self.unread_count.saturating_sub(1);
        }
        Some(removed)
    }
}

impl ChatState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The total number of messages in all inboxes.
    pub fn message_count(&self) -> usize {
        usize::try_from(self.message_count).unwrap_or(usize::MAX)
    }

    /// A deterministic 64-bit digest of the whole state: FNV-1a over its bincode encoding
    /// (standard config). Replicas that applied the same log prefix have equal hashes, so
    /// the simulator can compare replicas without shipping whole states around. The bytes
    /// stream straight into the hash; the encoding is never materialized.
    pub fn state_hash(&self) -> u64 {
        let mut hasher = Fnv1a::new();
        // Encoding fails only for serde shapes bincode cannot express (sequences of
        // unknown length); derived maps, vectors and strings always report their length,
        // and the writer itself never fails.
        bincode::serde::encode_into_writer(self, &mut hasher, bincode::config::standard())
            .expect("chat state is always encodable");
        hasher.finish()
    }

    /// The account if `auth` is a live token for it: the name exists with the same
    /// generation and token epoch. Every failure is the same error, so a client cannot
    /// probe which names exist.
    /// Whether `auth` is a live identity: its account exists in that generation and the
    /// token's epoch is current.
    pub fn authenticates(&self, auth: &Auth) -> bool {
        self.authenticate(auth).is_ok()
    }

    pub(super) fn authenticate(&self, auth: &Auth) -> Result<&Account, AppError> {
        self.users
            .get(&auth.user)
            .filter(|account| account.accepts(auth))
            .ok_or(AppError::Unauthenticated)
    }

    pub(super) fn authenticate_mut(&mut self, auth: &Auth) -> Result<&mut Account, AppError> {
        self.users
            .get_mut(&auth.user)
            .filter(|account| account.accepts(auth))
            .ok_or(AppError::Unauthenticated)
    }

    /// How a stored message looks to its recipient now.
    pub(super) fn view(
        &self,
        recipient: &str,
        id: MessageId,
        message: &StoredMessage,
    ) -> MessageView {
        let sender_alive = self
            .users
            .get(&message.sender)
            .is_some_and(|sender| sender.generation == message.sender_generation);
        MessageView {
            id,
            sender: message.sender.clone(),
            sender_deleted: !sender_alive,
            recipient: recipient.to_owned(),
            body: message.body.clone(),
            timestamp: message.timestamp,
            read: message.read,
        }
    }

    /// Every invariant, across all accounts, recounting every counter. Linear in the whole
    /// state, so the test suite runs it after every step while `apply` (in debug builds)
    /// runs only the constant-time [`ChatState::check_user`] on what it touched.
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        assert!(self.users.len() <= super::limits::USERS_MAX);
        let mut message_count: u64 = 0;
        for (name, account) in &self.users {
            self.check_user(name);
            check_inbox(name, account);
            message_count += account.inbox.len() as u64;
        }
        assert_eq!(
            message_count, self.message_count,
            "total message count drifted"
        );
    }

    /// The invariants of one account that cost no scan. `apply` runs this in debug builds
    /// on every account a command touched; a full recount per command would make a
    /// debug simulation quadratic in inbox size.
    pub(super) fn check_user(&self, name: &str) {
        let Some(account) = self.users.get(name) else {
            return;
        };
        assert!(
            validate::validate_username(name).is_ok(),
            "bad name {name:?}"
        );
        assert!(!account.password_hash.is_empty());
        assert!(account.inbox.len() <= INBOX_MESSAGES_MAX);
        assert!(account.inbox.unread_count <= account.inbox.len() as u64);
        assert!(self.message_count >= account.inbox.len() as u64);
        if let Some((newest, _)) = account.inbox.messages.last_key_value() {
            assert!(
                newest.0 > account.generation,
                "{newest:?} predates {name:?}"
            );
        }
    }
}

/// Recounts one inbox. Linear in its size; see [`ChatState::check_invariants`].
#[cfg(test)]
fn check_inbox(name: &str, account: &Account) {
    let unread_count = account.inbox.messages.values().filter(|m| !m.read).count();
    assert_eq!(
        unread_count as u64, account.inbox.unread_count,
        "unread counter of {name:?} drifted"
    );
    for (id, message) in &account.inbox.messages {
        // A message is sent after its recipient and its sender were created, and ids and
        // generations are both log indexes.
        assert!(
            id.0 > account.generation,
            "message {id:?} predates {name:?}"
        );
        assert!(id.0 > message.sender_generation);
        assert!(!message.body.is_empty());
    }
}

impl Account {
    fn accepts(&self, auth: &Auth) -> bool {
        self.generation == auth.generation && self.token_epoch == auth.token_epoch
    }
}

/// 64-bit FNV-1a, fed by bincode as it encodes.
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Fnv1a {
        Fnv1a(Self::OFFSET_BASIS)
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl bincode::enc::write::Writer for Fnv1a {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
        Ok(())
    }
}

/// FNV-1a over a byte slice, for tests that check the streamed hash against the
/// materialized encoding.
#[cfg(test)]
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    use bincode::enc::write::Writer;
    let mut hasher = Fnv1a::new();
    // Writing into the hasher cannot fail.
    hasher.write(bytes).expect("the hasher never fails");
    hasher.finish()
}
