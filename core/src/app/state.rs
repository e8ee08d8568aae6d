//! The replicated chat state: what it holds, how it is hashed, and the invariants that
//! must hold between any two applied commands. Commands live in `commands.rs`, queries
//! in `queries.rs`.

use super::limits::INBOX_MESSAGES_MAX;
use super::validate;
use super::{AppError, Auth, MessageId, MessageView};
use crate::digest::{fold64, Digest, ItemHasher, ItemKind};
use crate::types::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every account and every inbox. Only ordered maps, so that iteration order and the
/// encoding are the same on every replica.
///
/// Copy-on-write: each account and each stored message sits behind an `Arc`, and every
/// mutation goes through `Arc::make_mut`. Cloning the state (what a snapshot takes) thus
/// copies one pointer per account, never a message; the clone and the live state share
/// everything until the live state changes an account, which then copies that account's
/// inbox tree (pointers to messages, not the messages). serde's `rc` feature encodes an
/// `Arc<T>` as its `T`, so the encoding is the one a plain map had.
///
/// `digest` is the incremental hash of every account (see [`crate::digest`]), and an
/// account's item hash covers its inbox's digest, the sum of its messages' hashes: every
/// mutation below updates both, so [`ChatState::state_hash`] costs O(1). Neither is
/// serialized: decoding rebuilds them from the items ([`InboxImage`],
/// [`ChatStateImage`]), so a snapshot cannot carry a digest that hides a divergence.
/// Each inbox is hashed as soon as it is decoded, while its messages are still in the
/// cache: a pass over the whole decoded state afterwards cost a restart at 1M messages
/// a cache miss per message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ChatStateImage")]
pub struct ChatState {
    pub(super) users: BTreeMap<String, Arc<Account>>,
    /// The sum of all inbox sizes, kept so that counting is not a scan.
    pub(super) message_count: u64,
    #[serde(skip)]
    pub(super) digest: Digest,
}

/// What a snapshot holds of a [`ChatState`]: its fields in the same order, without the
/// digest. Every decoding of a `ChatState` goes through it.
#[derive(Deserialize)]
struct ChatStateImage {
    #[serde(deserialize_with = "crate::arc_map::deserialize")]
    users: BTreeMap<String, Arc<Account>>,
    message_count: u64,
}

impl From<ChatStateImage> for ChatState {
    fn from(image: ChatStateImage) -> ChatState {
        let mut state = ChatState {
            users: image.users,
            message_count: image.message_count,
            digest: Digest::default(),
        };
        state.digest = state.sum_account_hashes();
        state
    }
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
#[serde(from = "InboxImage")]
pub(super) struct Inbox {
    /// Keyed by id, which is the log index of the send, so iteration is oldest first.
    /// Each message behind an `Arc`, so that copying an inbox (the first change to an
    /// account a snapshot still shares) copies pointers, not bodies.
    messages: BTreeMap<MessageId, Arc<StoredMessage>>,
    /// Kept in step with `messages` by every mutation below, so unread counts cost no
    /// scan.
    unread_count: u64,
    /// The sum of the item hashes of `messages`, kept in step by every mutation below.
    /// It enters the owner's account hash, which ties the messages to their recipient.
    #[serde(skip)]
    pub(super) digest: Digest,
}

/// What a snapshot holds of an [`Inbox`]: its fields in the same order, without the
/// digest. Every decoding of an `Inbox` goes through it.
#[derive(Deserialize)]
struct InboxImage {
    #[serde(deserialize_with = "crate::arc_map::deserialize")]
    messages: BTreeMap<MessageId, Arc<StoredMessage>>,
    unread_count: u64,
}

impl From<InboxImage> for Inbox {
    fn from(image: InboxImage) -> Inbox {
        let mut inbox = Inbox {
            messages: image.messages,
            unread_count: image.unread_count,
            digest: Digest::default(),
        };
        inbox.digest = inbox.recompute_digest();
        inbox
    }
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

    pub(super) fn messages(&self) -> &BTreeMap<MessageId, Arc<StoredMessage>> {
        &self.messages
    }

    pub(super) fn contains(&self, id: MessageId) -> bool {
        self.messages.contains_key(&id)
    }

    // Each mutation updates the inbox's digest, so that no message can change without
    // its hash changing; the caller then replaces the owner's account hash in the
    // state's digest (`ChatState::rehash`).

    /// Returns whether the inbox grew. Ids are log indexes, so a collision means the caller
    /// applied the same log index twice; the counters and digest stay right even then.
    pub(super) fn insert(&mut self, id: MessageId, message: StoredMessage) -> bool {
        if !message.read {
            self.unread_count += 1;
        }
        self.digest.add(message_hash(id, &message));
        let replaced = self.messages.insert(id, Arc::new(message));
        debug_assert!(replaced.is_none(), "message id {id:?} applied twice");
        match replaced {
            Some(old) => {
                if !old.read {
                    self.unread_count = self.unread_count.saturating_sub(1);
                }
                self.digest.remove(message_hash(id, &old));
                false
            }
            None => true,
        }
    }

    pub(super) fn mark_read(&mut self, id: MessageId) {
        if let Some(message) = self.messages.get_mut(&id) {
            if !message.read {
                let old = message_hash(id, message);
                // Copies the message only if a snapshot still shares it.
                let message = Arc::make_mut(message);
                message.read = true;
                self.digest.replace(old, message_hash(id, message));
                self.unread_count = self.unread_count.saturating_sub(1);
            }
        }
    }

    pub(super) fn remove(&mut self, id: MessageId) -> Option<Arc<StoredMessage>> {
        let removed = self.messages.remove(&id)?;
        if !removed.read {
            self.unread_count = self.unread_count.saturating_sub(1);
        }
        self.digest.remove(message_hash(id, &removed));
        Some(removed)
    }

    /// The sum of the hashes of every message, from scratch. Linear.
    fn recompute_digest(&self) -> Digest {
        let mut digest = Digest::default();
        for (&id, message) in &self.messages {
            digest.add(message_hash(id, message));
        }
        digest
    }
}

/// The item hash of an account: every field, its inbox by the inbox's digest. A message
/// moved to another inbox changes both owners' hashes.
pub(super) fn account_hash(name: &str, account: &Account) -> u128 {
    ItemHasher::new(ItemKind::Account)
        .str(name)
        .str(&account.password_hash)
        .u64(account.generation)
        .u64(account.token_epoch)
        .u128(account.registration)
        .u64(account.created_at.0)
        .u128(account.inbox.digest.value())
        .finish()
}

/// The item hash of a stored message, keyed by its id (its log index, unique in the
/// state); its recipient enters through the recipient's account hash.
fn message_hash(id: MessageId, message: &StoredMessage) -> u128 {
    ItemHasher::new(ItemKind::Message)
        .u64(id.0)
        .str(&message.sender)
        .u64(message.sender_generation)
        .str(&message.body)
        .u64(message.timestamp.0)
        .bool(message.read)
        .finish()
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

    /// A deterministic 64-bit hash of the whole chat state, in O(1): the incremental
    /// digest of every account and message, with the message count. Replicas that applied
    /// the same log prefix have equal hashes, so the simulator can compare replicas
    /// without shipping whole states around.
    pub fn state_hash(&self) -> u64 {
        fold64(self.digest_value())
    }

    /// The 128-bit form of [`ChatState::state_hash`], which `MachineState` combines.
    pub(crate) fn digest_value(&self) -> u128 {
        ItemHasher::new(ItemKind::ChatState)
            .u128(self.digest.value())
            .u64(self.message_count)
            .finish()
    }

    /// The sum of the account hashes, each over its inbox's digest as kept. Linear in
    /// the accounts: decoding uses it, after each inbox computed its own digest.
    pub(super) fn sum_account_hashes(&self) -> Digest {
        let mut digest = Digest::default();
        for (name, account) in &self.users {
            digest.add(account_hash(name, account));
        }
        digest
    }

    /// Replaces `name`'s account hash `old` (taken before a mutation) with the hash of
    /// `account` as it is now: every mutation of an account ends here.
    pub(super) fn rehash(digest: &mut Digest, name: &str, old: u128, account: &Account) {
        digest.replace(old, account_hash(name, account));
    }

    /// Whether the incremental digests (every inbox's, and the state's) equal a
    /// recomputation from scratch. Linear in the whole state.
    pub fn check_digest(&self) -> Result<(), String> {
        for (name, account) in &self.users {
            let recomputed = account.inbox.recompute_digest();
            if recomputed != account.inbox.digest {
                return Err(format!(
                    "inbox digest of {name:?} is {:032x} but its messages sum to {:032x}",
                    account.inbox.digest.value(),
                    recomputed.value()
                ));
            }
        }
        let recomputed = self.sum_account_hashes();
        if recomputed != self.digest {
            return Err(format!(
                "chat digest {:032x} but the items sum to {:032x}",
                self.digest.value(),
                recomputed.value()
            ));
        }
        Ok(())
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
            .map(Arc::as_ref)
            .filter(|account| account.accepts(auth))
            .ok_or(AppError::Unauthenticated)
    }

    /// The account of a live token, borrowed from `users` alone so that the caller can
    /// update `digest` (a sibling field) while it holds the account. Copies the account
    /// (see [`ChatState`]) only if a snapshot still shares it, and only once it is
    /// authenticated: a refused command copies nothing.
    pub(super) fn authenticate_in<'a>(
        users: &'a mut BTreeMap<String, Arc<Account>>,
        auth: &Auth,
    ) -> Result<&'a mut Account, AppError> {
        users
            .get_mut(&auth.user)
            .filter(|account| account.accepts(auth))
            .map(Arc::make_mut)
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
        if let Err(problem) = self.check_digest() {
            panic!("{problem}");
        }
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
