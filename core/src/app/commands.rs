//! Replicated writes. Each command first checks everything that can refuse it and only
//! then mutates, so a refused command leaves the state exactly as it was.

use super::limits::{DELETE_IDS_MAX, INBOX_MESSAGES_MAX, USERS_MAX};
use super::state::{account_hash, Account, ChatState, Inbox, StoredMessage};
use super::validate;
use super::{
    AppError, ApplyContext, Auth, Command, CommandOutput, Delivery, MessageId, MessageView,
};
use crate::types::SessionId;
use std::sync::Arc;

// `Deleted { count }` is a u32 and counts distinct ids from one command.
const _: () = assert!(DELETE_IDS_MAX <= u32::MAX as usize);

impl ChatState {
    /// Stateless checks the leader runs before a command enters the log, so junk never
    /// reaches it. `apply` runs them again.
    pub fn validate(command: &Command) -> Result<(), AppError> {
        validate::validate_command(command)
    }

    /// Applies one committed command at log position `ctx.index`, stamped with
    /// `ctx.timestamp` by the leader. Pure and deterministic: the result and the new state
    /// depend only on the old state, `ctx` and `command`. Messages to push to live
    /// subscribers are appended to `deliveries` (only on success).
    ///
    /// Stateless refusals come first, so a command `validate` refuses is refused the same
    /// way here whatever the state; then authentication; then the command's own checks.
    /// A refused command leaves the state unchanged. `ReadMessages` returns its views with
    /// `read: true`, describing the state after the command like every other output.
    ///
    /// `ctx.index` must grow from one call to the next, as log indexes do: message ids and
    /// account generations are taken from it.
    pub fn apply(
        &mut self,
        ctx: ApplyContext,
        command: &Command,
        deliveries: &mut Vec<Delivery>,
    ) -> Result<CommandOutput, AppError> {
        Self::validate(command)?;
        let output = match command {
            Command::CreateAccount {
                user,
                password_hash,
                registration,
            } => self.create_account(ctx, user, password_hash, *registration, USERS_MAX),
            // The session itself is registered by the caller, which owns the session
            // table; here the opener is authenticated and the id assigned.
            Command::OpenSession { auth } => {
                self.authenticate(auth)?;
                Ok(CommandOutput::SessionOpened {
                    session: SessionId(ctx.index.0),
                })
            }
            Command::Logout { auth } => self.logout(auth),
            Command::Send { auth, to, body } => self.send(ctx, auth, to, body, deliveries),
            Command::ReadMessages { auth, limit } => self.read_messages(auth, *limit),
            Command::DeleteMessages { auth, ids } => self.delete_messages(auth, ids),
            Command::DeleteAccount { auth } => self.delete_account(auth),
        };
        if cfg!(debug_assertions) {
            self.check_touched(command);
        }
        output
    }

    /// `users_max` is a parameter only so that tests can reach the bound without a
    /// million accounts; `apply` always passes `USERS_MAX`.
    pub(super) fn create_account(
        &mut self,
        ctx: ApplyContext,
        user: &str,
        password_hash: &str,
        registration: u128,
        users_max: usize,
    ) -> Result<CommandOutput, AppError> {
        if let Some(account) = self.users.get(user) {
            if account.registration == registration {
                // A retry of the registration that created this account.
                return Ok(CommandOutput::AccountCreated {
                    user: user.to_owned(),
                    generation: account.generation,
                });
            }
            return Err(AppError::UserExists(user.to_owned()));
        }
        if self.users.len() >= users_max {
            return Err(AppError::TooManyUsers);
        }
        let generation = ctx.index.0;
        let account = Account {
            password_hash: password_hash.to_owned(),
            generation,
            token_epoch: 0,
            registration,
            created_at: ctx.timestamp,
            inbox: Inbox::default(),
        };
        self.digest.add(account_hash(user, &account));
        self.users.insert(user.to_owned(), Arc::new(account));
        Ok(CommandOutput::AccountCreated {
            user: user.to_owned(),
            generation,
        })
    }

    fn logout(&mut self, auth: &Auth) -> Result<CommandOutput, AppError> {
        let account = Self::authenticate_in(&mut self.users, auth)?;
        let old = account_hash(&auth.user, account);
        // One log entry per logout: the epoch cannot realistically reach u64::MAX, and
        // saturating keeps even that case free of panics.
        account.token_epoch = account.token_epoch.saturating_add(1);
        Self::rehash(&mut self.digest, &auth.user, old, account);
        Ok(CommandOutput::LoggedOut)
    }

    fn send(
        &mut self,
        ctx: ApplyContext,
        auth: &Auth,
        to: &str,
        body: &str,
        deliveries: &mut Vec<Delivery>,
    ) -> Result<CommandOutput, AppError> {
        let sender_generation = self.authenticate(auth)?.generation;
        let recipient = self
            .users
            .get_mut(to)
            .ok_or_else(|| AppError::UnknownUser(to.to_owned()))?;
        if recipient.inbox.len() >= INBOX_MESSAGES_MAX {
            return Err(AppError::InboxFull(to.to_owned()));
        }
        // Copies the account only if a snapshot still shares it (see `ChatState`).
        let recipient = Arc::make_mut(recipient);
        let old = account_hash(to, recipient);
        let id = MessageId(ctx.index.0);
        let message = StoredMessage {
            sender: auth.user.clone(),
            sender_generation,
            body: body.to_owned(),
            timestamp: ctx.timestamp,
            read: false,
        };
        // The sender was just authenticated, so it is not deleted.
        let delivered = MessageView {
            id,
            sender: message.sender.clone(),
            sender_deleted: false,
            recipient: to.to_owned(),
            body: message.body.clone(),
            timestamp: message.timestamp,
            read: false,
        };
        if recipient.inbox.insert(id, message) {
            self.message_count += 1;
        }
        Self::rehash(&mut self.digest, to, old, recipient);
        deliveries.push(Delivery { message: delivered });
        Ok(CommandOutput::Sent {
            id,
            timestamp: ctx.timestamp,
        })
    }

    /// Returns the oldest `limit` unread messages and marks them read. The views say
    /// `read: true`: they describe the state after this command, like every other output.
    fn read_messages(&mut self, auth: &Auth, limit: u32) -> Result<CommandOutput, AppError> {
        let account = self.authenticate(auth)?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut views: Vec<MessageView> = account
            .inbox
            .messages()
            .iter()
            .filter(|(_, message)| !message.read)
            .take(limit)
            .map(|(id, message)| self.view(&auth.user, *id, message))
            .collect();
        let account = Self::authenticate_in(&mut self.users, auth)?;
        let old = account_hash(&auth.user, account);
        for view in &mut views {
            account.inbox.mark_read(view.id);
            view.read = true;
        }
        Self::rehash(&mut self.digest, &auth.user, old, account);
        Ok(CommandOutput::Messages(views))
    }

    /// All or nothing: every id must be in the actor's inbox, or nothing is deleted and
    /// the first missing id (in the order given) is reported. Repeated ids count once.
    fn delete_messages(
        &mut self,
        auth: &Auth,
        ids: &[MessageId],
    ) -> Result<CommandOutput, AppError> {
        let account = Self::authenticate_in(&mut self.users, auth)?;
        if let Some(missing) = ids.iter().find(|id| !account.inbox.contains(**id)) {
            return Err(AppError::MessageNotFound(missing.0));
        }
        // A repeated id finds its message already gone, so it is counted once.
        let old = account_hash(&auth.user, account);
        let mut count: u32 = 0;
        for id in ids {
            if account.inbox.remove(*id).is_some() {
                count = count.saturating_add(1);
            }
        }
        Self::rehash(&mut self.digest, &auth.user, old, account);
        debug_assert!(count as usize <= DELETE_IDS_MAX);
        self.message_count = self.message_count.saturating_sub(u64::from(count));
        Ok(CommandOutput::Deleted { count })
    }

    /// Removes the account and its inbox. Messages it sent to others stay where they are;
    /// their views turn to `sender_deleted` because the name no longer resolves to the
    /// generation that sent them.
    fn delete_account(&mut self, auth: &Auth) -> Result<CommandOutput, AppError> {
        self.authenticate(auth)?;
        if let Some(account) = self.users.remove(&auth.user) {
            self.message_count = self
                .message_count
                .saturating_sub(account.inbox.len() as u64);
            // The account hash covers the inbox's digest.
            self.digest.remove(account_hash(&auth.user, &account));
        }
        Ok(CommandOutput::AccountDeleted)
    }

    /// Debug-build invariant checks on the accounts a command may have changed. Constant
    /// time per account; the test suite recounts everything after every step.
    fn check_touched(&self, command: &Command) {
        match command {
            Command::CreateAccount { user, .. } => self.check_user(user),
            Command::Send { auth, to, .. } => {
                self.check_user(&auth.user);
                self.check_user(to);
            }
            Command::OpenSession { auth }
            | Command::Logout { auth }
            | Command::ReadMessages { auth, .. }
            | Command::DeleteMessages { auth, .. }
            | Command::DeleteAccount { auth } => self.check_user(&auth.user),
        }
        assert!(self.users.len() <= USERS_MAX);
    }
}
