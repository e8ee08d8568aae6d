//! Tests of the chat state machine.
//!
//! [`Chat`] is the only code here that calls the state machine's API (`apply`, `query`,
//! `validate*`, the counters and the hash), so an API change is one edit. On every step it
//! also checks what must hold for any command: `validate` agrees with `apply`, a refused
//! command changes nothing and delivers nothing, and every invariant holds afterwards.
//! The scenario tests in the submodules read as scripts on top of it.

mod accounts;
mod determinism;
mod listing;
mod messages;

use super::limits::USERS_MAX;
use super::{
    AppError, ApplyContext, Auth, ChatState, Command, CommandOutput, Delivery, MessageId,
    MessageView, Query, QueryOutput,
};
use crate::types::{LogIndex, Time};

/// Log time advances by this much per applied command, so timestamps are predictable.
const STEP_US: u64 = 1_000;

/// A replica's view of the log: applies commands at consecutive log indexes from 1.
#[derive(Clone)]
struct Chat {
    state: ChatState,
    next_index: u64,
    now: Time,
    /// Deliveries produced by the most recent command.
    deliveries: Vec<Delivery>,
}

impl Chat {
    fn new() -> Chat {
        Chat {
            state: ChatState::new(),
            next_index: 1,
            now: Time(1_000_000),
            deliveries: Vec::new(),
        }
    }

    /// The log index the next command will be applied at.
    fn next_index(&self) -> u64 {
        self.next_index
    }

    fn now(&self) -> Time {
        self.now
    }

    fn apply(&mut self, command: Command) -> Result<CommandOutput, AppError> {
        let before = self.state.clone();
        let validated = ChatState::validate(&command);
        let (result, deliveries) = self.apply_unchecked(&command);
        self.finish_step(&before, validated, &result, &deliveries);
        self.deliveries = deliveries;
        result
    }

    /// Sends `count` messages that must all succeed, checking the whole state once at the
    /// end instead of after every step: filling an inbox would otherwise be quadratic.
    fn send_many(&mut self, auth: &Auth, to: &str, count: usize) {
        for n in 0..count {
            let (result, deliveries) = self.apply_unchecked(&send(auth, to, &format!("m{n}")));
            assert!(
                matches!(result, Ok(CommandOutput::Sent { .. })),
                "{result:?}"
            );
            assert_eq!(deliveries.len(), 1);
        }
        self.state.check_invariants();
    }

    fn apply_unchecked(
        &mut self,
        command: &Command,
    ) -> (Result<CommandOutput, AppError>, Vec<Delivery>) {
        let ctx = ApplyContext {
            index: LogIndex(self.next_index),
            timestamp: self.now,
        };
        self.next_index += 1;
        self.now = self.now.saturating_add_us(STEP_US);
        let mut deliveries = Vec::new();
        let result = self.state.apply(ctx, command, &mut deliveries);
        (result, deliveries)
    }

    /// Bypasses `apply` to reach the account bound with a handful of accounts instead of
    /// `USERS_MAX`; everything else goes through `apply`.
    fn create_bounded(&mut self, user: &str, users_max: usize) -> Result<CommandOutput, AppError> {
        self.create_bounded_as(user, users_max, 0)
    }

    /// `create_bounded` as registration number `registration`.
    fn create_bounded_as(
        &mut self,
        user: &str,
        users_max: usize,
        registration: u128,
    ) -> Result<CommandOutput, AppError> {
        assert!(users_max < USERS_MAX);
        let ctx = ApplyContext {
            index: LogIndex(self.next_index),
            timestamp: self.now,
        };
        self.next_index += 1;
        let before = self.state.clone();
        let result = self
            .state
            .create_account(ctx, user, "hash", registration, users_max);
        self.finish_step(&before, Ok(()), &result, &[]);
        result
    }

    fn finish_step(
        &self,
        before: &ChatState,
        validated: Result<(), AppError>,
        result: &Result<CommandOutput, AppError>,
        deliveries: &[Delivery],
    ) {
        if let Err(error) = validated {
            assert_eq!(result, &Err(error), "apply disagrees with validate");
        }
        if result.is_err() {
            assert_eq!(&self.state, before, "a refused command changed the state");
            assert_eq!(self.state.state_hash(), before.state_hash());
            assert!(deliveries.is_empty(), "a refused command delivered");
        }
        if !matches!(result, Ok(CommandOutput::Sent { .. })) {
            assert!(deliveries.is_empty(), "only a send delivers");
        }
        self.state.check_invariants();
    }

    fn query(&self, query: Query) -> Result<QueryOutput, AppError> {
        let validated = ChatState::validate_query(&query);
        let before_hash = self.state.state_hash();
        let result = self.state.query(&query);
        if let Err(error) = validated {
            assert_eq!(result, Err(error), "query disagrees with validate_query");
        }
        assert_eq!(
            self.state.state_hash(),
            before_hash,
            "a query changed the state"
        );
        result
    }

    /// The leader's stateless check, which needs no replica.
    fn validate(command: &Command) -> Result<(), AppError> {
        ChatState::validate(command)
    }

    fn validate_query(query: &Query) -> Result<(), AppError> {
        ChatState::validate_query(query)
    }

    fn hash(&self) -> u64 {
        self.state.state_hash()
    }

    /// The state as a snapshot would carry it.
    fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(&self.state, bincode::config::standard()).unwrap()
    }

    /// A replica restored from `bytes`, positioned in the log where this one is.
    fn restore(&self, bytes: &[u8]) -> Chat {
        let (state, read_bytes): (ChatState, usize) =
            bincode::serde::decode_from_slice(bytes, bincode::config::standard()).unwrap();
        assert_eq!(read_bytes, bytes.len());
        state.check_invariants();
        Chat {
            state,
            ..self.clone()
        }
    }

    fn same_state(&self, other: &Chat) -> bool {
        self.state == other.state
    }

    fn user_count(&self) -> usize {
        self.state.user_count()
    }

    fn message_count(&self) -> usize {
        self.state.message_count()
    }

    // Script steps built on `apply` and `query`. They unwrap because a script that
    // expects success should fail loudly, with the error, when it does not get it.

    /// Creates an account and returns its first token.
    fn create(&mut self, user: &str) -> Auth {
        let output = self.apply(create_account(user)).unwrap();
        let CommandOutput::AccountCreated { user, generation } = output else {
            panic!("unexpected output {output:?}");
        };
        Auth {
            user,
            generation,
            token_epoch: 0,
        }
    }

    fn send(&mut self, auth: &Auth, to: &str, body: &str) -> MessageId {
        match self.apply(send(auth, to, body)).unwrap() {
            CommandOutput::Sent { id, .. } => id,
            output => panic!("unexpected output {output:?}"),
        }
    }

    fn read(&mut self, auth: &Auth, limit: u32) -> Vec<MessageView> {
        match self.apply(read(auth, limit)).unwrap() {
            CommandOutput::Messages(views) => views,
            output => panic!("unexpected output {output:?}"),
        }
    }

    fn after(&self, auth: &Auth, after: u64, limit: u32) -> Vec<MessageView> {
        match self.query(messages_after(auth, after, limit)).unwrap() {
            QueryOutput::Messages(views) => views,
            output => panic!("unexpected output {output:?}"),
        }
    }

    fn unread(&self, auth: &Auth) -> u64 {
        match self
            .query(Query::UnreadCount { auth: auth.clone() })
            .unwrap()
        {
            QueryOutput::UnreadCount(count) => count,
            output => panic!("unexpected output {output:?}"),
        }
    }

    /// (generation, token_epoch, unread_count) of an account.
    fn credentials(&self, user: &str) -> (u64, u64, u64) {
        match self.query(credentials(user)).unwrap() {
            QueryOutput::Credentials {
                generation,
                token_epoch,
                unread_count,
                ..
            } => (generation, token_epoch, unread_count),
            output => panic!("unexpected output {output:?}"),
        }
    }

    /// (names, total, has_more) of one page of a listing.
    fn list(&self, pattern: &str, page: u32) -> (Vec<String>, u64, bool) {
        match self.query(list(pattern, page)).unwrap() {
            QueryOutput::Accounts {
                names,
                page: echoed,
                total,
                has_more,
            } => {
                assert_eq!(echoed, page);
                (names, total, has_more)
            }
            output => panic!("unexpected output {output:?}"),
        }
    }
}

// Command and query constructors, so scripts stay short.

fn create_account(user: &str) -> Command {
    Command::CreateAccount {
        user: user.to_owned(),
        password_hash: format!("hash-of-{user}"),
        registration: 1,
    }
}

fn send(auth: &Auth, to: &str, body: &str) -> Command {
    Command::Send {
        auth: auth.clone(),
        to: to.to_owned(),
        body: body.to_owned(),
    }
}

fn read(auth: &Auth, limit: u32) -> Command {
    Command::ReadMessages {
        auth: auth.clone(),
        limit,
    }
}

fn delete_messages(auth: &Auth, ids: &[u64]) -> Command {
    Command::DeleteMessages {
        auth: auth.clone(),
        ids: ids.iter().map(|&id| MessageId(id)).collect(),
    }
}

fn logout(auth: &Auth) -> Command {
    Command::Logout { auth: auth.clone() }
}

fn delete_account(auth: &Auth) -> Command {
    Command::DeleteAccount { auth: auth.clone() }
}

fn messages_after(auth: &Auth, after: u64, limit: u32) -> Query {
    Query::MessagesAfter {
        auth: auth.clone(),
        after: MessageId(after),
        limit,
    }
}

fn credentials(user: &str) -> Query {
    Query::Credentials {
        user: user.to_owned(),
    }
}

fn list(pattern: &str, page: u32) -> Query {
    Query::ListAccounts {
        pattern: pattern.to_owned(),
        page,
    }
}

fn out_of_range(what: &str, min: u64, max: u64, got: u64) -> AppError {
    AppError::OutOfRange {
        what: what.to_owned(),
        min,
        max,
        got,
    }
}

/// Ids of a list of views, for compact assertions.
fn ids(views: &[MessageView]) -> Vec<u64> {
    views.iter().map(|view| view.id.0).collect()
}
