//! Client requests: proposing writes with exactly-once sessions, linearizable reads by
//! read index, stale reads, and applying committed entries to the state machine.

use super::replica::{PendingQuery, PendingRead, ReadConsistency, Replica, Role};
use crate::app::{AppError, ApplyContext, Auth, ChatState, Command, CommandOutput, Query};
use crate::effects::{ClientError, Reply, Response};
use crate::entry::{Entry, EntryPayload, Proposal, SessionRef};
use crate::session::{command_digest, OpenRefused, SessionCheck, SessionOwner};
use crate::types::{LogIndex, RequestId, Term};

impl Replica {
    pub(super) fn reply_ok(&mut self, request_id: RequestId, response: Response) {
        self.ready.replies.push(Reply {
            request_id,
            outcome: Ok(response),
        });
    }

    pub(super) fn reply_err(&mut self, request_id: RequestId, error: ClientError) {
        self.ready.replies.push(Reply {
            request_id,
            outcome: Err(error),
        });
    }

    pub(super) fn not_leader(&self) -> ClientError {
        ClientError::NotLeader {
            leader_hint: self.leader_id.filter(|&id| id != self.config.id),
        }
    }

    pub(super) fn admit(&mut self, request_id: RequestId) -> bool {
        if self.role != Role::Leader {
            let error = self.not_leader();
            self.reply_err(request_id, error);
            return false;
        }
        let pending = self.pending_request_count();
        if pending >= self.config.pending_requests_max {
            self.reply_err(request_id, ClientError::Busy { pending });
            return false;
        }
        true
    }

    pub(super) fn propose(
        &mut self,
        request_id: RequestId,
        session: Option<SessionRef>,
        command: Command,
    ) {
        if let Err(error) = ChatState::validate(&command) {
            return self.reply_err(request_id, error.into());
        }
        if let Err(reason) = session_fits(session, &command) {
            return self.reply_err(request_id, ClientError::InvalidRequest(reason.to_owned()));
        }
        if !self.admit(request_id) {
            return;
        }
        if let Some(transfer) = &self.transfer {
            let error = ClientError::NotLeader {
                leader_hint: Some(transfer.target),
            };
            return self.reply_err(request_id, error);
        }
        // What the session table already says for certain is answered without another
        // trip through the log: a retry of an applied request (a committed fact), and
        // refusals that no later entry can change (session ids are log indexes bound to
        // one owner for good; an applied sequence number only ever falls further behind).
        // An unknown session is left to the log, because this leader's applied state may
        // lag its log: the session may be opened by an entry it has yet to apply.
        if let (Some(session), Some(auth)) = (session, command.session_auth()) {
            let digest = command_digest(&command);
            match self
                .machine
                .sessions
                .check(session, &owner_of(auth), digest)
            {
                SessionCheck::Apply | SessionCheck::Expired => {}
                SessionCheck::Duplicate(outcome) => return self.reply_outcome(request_id, outcome),
                refused => {
                    let error = self.session_refusal(session, auth, refused);
                    return self.reply_err(request_id, error);
                }
            }
        }
        let timestamp = self.stamp_time();
        let index = self.append_own(EntryPayload::Command(Proposal {
            session,
            timestamp,
            command,
        }));
        let replaced = self.pending_writes.insert(index, (self.term, request_id));
        debug_assert!(
            replaced.is_none(),
            "index {index} was proposed twice by this leader"
        );
        // A single-member cluster commits on its own.
        self.maybe_commit();
    }

    fn reply_outcome(&mut self, request_id: RequestId, outcome: Result<CommandOutput, AppError>) {
        match outcome {
            Ok(output) => self.reply_ok(request_id, Response::Command(output)),
            Err(error) => self.reply_err(request_id, error.into()),
        }
    }

    pub(super) fn read(
        &mut self,
        request_id: RequestId,
        query: Query,
        consistency: ReadConsistency,
    ) {
        if let Err(error) = ChatState::validate_query(&query) {
            return self.reply_err(request_id, error.into());
        }
        if consistency == ReadConsistency::Stale {
            return self.serve_read(request_id, &query);
        }
        if !self.admit(request_id) {
            return;
        }
        if self.log.term_at(self.commit_index) != Some(self.term) {
            // Until an entry of this term commits, this leader does not know the true
            // commit index (Raft §6.4).
            self.reads_awaiting_term_commit.push((request_id, query));
            return;
        }
        self.register_read(request_id, PendingQuery::Chat(query));
    }

    pub(super) fn register_read(&mut self, request_id: RequestId, query: PendingQuery) {
        // A read index is only as good as the commit index it copies: a leader knows the
        // true commit index once an entry of its own term is committed (Raft §6.4).
        debug_assert_eq!(self.role, Role::Leader, "only a leader takes a read index");
        debug_assert_eq!(
            self.log.term_at(self.commit_index),
            Some(self.term),
            "read index taken before this leader committed an entry of its term"
        );
        // All reads registered before the next heartbeat round share it.
        let seq = self.heartbeat_seq + 1;
        debug_assert!(
            self.reads_awaiting_quorum
                .back()
                .is_none_or(|last| last.seq <= seq && last.read_index <= self.commit_index),
            "reads wait in the order of their heartbeat rounds"
        );
        let read = PendingRead {
            request_id,
            query,
            read_index: self.commit_index,
            seq,
        };
        self.reads_awaiting_quorum.push_back(read);
        self.heartbeat_requested = true;
        if self.voter_peers().is_empty() {
            self.heartbeat_requested = false;
            self.broadcast_heartbeat();
        }
    }

    fn serve_pending(&mut self, request_id: RequestId, query: PendingQuery) {
        match query {
            PendingQuery::Chat(query) => self.serve_read(request_id, &query),
            PendingQuery::MembershipRefusal(error) => {
                self.reply_err(request_id, ClientError::Membership(error))
            }
        }
    }

    fn serve_read(&mut self, request_id: RequestId, query: &Query) {
        match self.machine.chat.query(query) {
            Ok(output) => self.reply_ok(request_id, Response::Query(output)),
            Err(error) => self.reply_err(request_id, error.into()),
        }
    }

    /// Moves reads whose heartbeat round a quorum acknowledged to wait for apply.
    pub(super) fn confirm_reads(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let Some(confirmed_seq) = self.quorum_value(self.heartbeat_seq, |p| p.heartbeat_seq_acked)
        else {
            return;
        };
        while self
            .reads_awaiting_quorum
            .front()
            .is_some_and(|r| r.seq <= confirmed_seq)
        {
            let read = self
                .reads_awaiting_quorum
                .pop_front()
                .expect("front exists: checked");
            // The quorum confirmed a round sent after the read was registered, so this
            // replica was leader at a moment after the read arrived.
            debug_assert!(
                read.seq <= self.heartbeat_seq,
                "confirmed a round never sent"
            );
            self.reads_awaiting_apply.push_back(read);
        }
        self.serve_applied_reads();
    }

    fn serve_applied_reads(&mut self) {
        debug_assert!(
            self.role == Role::Leader || self.reads_awaiting_apply.is_empty(),
            "a replica that lost leadership still holds confirmed reads"
        );
        while self
            .reads_awaiting_apply
            .front()
            .is_some_and(|r| r.read_index <= self.last_applied)
        {
            let read = self
                .reads_awaiting_apply
                .pop_front()
                .expect("front exists: checked");
            self.serve_pending(read.request_id, read.query);
        }
    }

    /// The leader's commit index moved: reads held back for a commit in this term may go.
    pub(super) fn on_commit_advanced(&mut self) {
        if self.log.term_at(self.commit_index) == Some(self.term)
            && !self.reads_awaiting_term_commit.is_empty()
        {
            for (request_id, query) in std::mem::take(&mut self.reads_awaiting_term_commit) {
                self.register_read(request_id, PendingQuery::Chat(query));
            }
        }
    }

    /// Applies committed entries not yet applied, in log order: at most
    /// `apply_entries_per_step_max` of them; the rest when the timeout it makes due is
    /// handled.
    pub(super) fn apply_committed(&mut self) {
        let mut budget = self.config.apply_entries_per_step_max;
        while self.last_applied < self.commit_index && budget > 0 {
            budget -= 1;
            let index = self.last_applied.next();
            let entry = self
                .log
                .entry(index)
                .cloned()
                .expect("committed entries above the snapshot are in the log");
            debug_assert_eq!(entry.index, index, "the log returned another entry");
            self.apply_entry(&entry);
            self.last_applied = index;
            self.metrics.entries_applied += 1;
            self.sample_state_hash();
        }
        self.serve_applied_reads();
        self.maybe_snapshot();
    }

    fn apply_entry(&mut self, entry: &Entry) {
        let timestamp = entry.payload.timestamp();
        self.machine.log_time = self.machine.log_time.max(timestamp);
        self.machine.sessions.expire(self.machine.log_time);
        let proposal = match &entry.payload {
            EntryPayload::Noop { .. } => return,
            EntryPayload::Membership { membership, .. } => {
                return self.apply_membership(entry, membership);
            }
            EntryPayload::Command(proposal) => proposal,
        };
        let ctx = ApplyContext {
            index: entry.index,
            timestamp: self.machine.log_time,
        };
        // The leader refuses a session that does not fit its command, but a log may hold
        // anything (an older leader's rules, a bug): refuse it the same way everywhere.
        if let Err(reason) = session_fits(proposal.session, &proposal.command) {
            let error = ClientError::InvalidRequest(reason.to_owned());
            return self.answer_pending_write(entry.index, entry.term, Err(error));
        }
        let outcome = match (proposal.session, proposal.command.session_auth()) {
            (Some(session), Some(auth)) => {
                let digest = command_digest(&proposal.command);
                match self
                    .machine
                    .sessions
                    .check(session, &owner_of(auth), digest)
                {
                    SessionCheck::Apply => {
                        let result = self.apply_command(ctx, &proposal.command);
                        let log_time = self.machine.log_time;
                        self.machine
                            .sessions
                            .record(session, digest, result.clone(), log_time);
                        result
                    }
                    SessionCheck::Duplicate(result) => result,
                    refused => {
                        let error = self.session_refusal(session, auth, refused);
                        return self.answer_pending_write(entry.index, entry.term, Err(error));
                    }
                }
            }
            _ => match self.apply_command(ctx, &proposal.command) {
                Ok(CommandOutput::SessionOpened { session }) => {
                    let Command::OpenSession { auth } = &proposal.command else {
                        unreachable!("only OpenSession answers SessionOpened");
                    };
                    let log_time = self.machine.log_time;
                    match self
                        .machine
                        .sessions
                        .open(session, owner_of(auth), log_time)
                    {
                        Ok(()) => Ok(CommandOutput::SessionOpened { session }),
                        Err(OpenRefused::TableFull) => Err(AppError::TooManySessions),
                    }
                }
                other => other,
            },
        };
        let outcome = outcome.map(Response::Command).map_err(ClientError::from);
        self.answer_pending_write(entry.index, entry.term, outcome);
    }

    fn apply_command(
        &mut self,
        ctx: ApplyContext,
        command: &Command,
    ) -> Result<CommandOutput, AppError> {
        let mut deliveries = Vec::new();
        let result = self.machine.chat.apply(ctx, command, &mut deliveries);
        self.ready.deliveries.extend(deliveries);
        result
    }

    pub(super) fn answer_pending_write(
        &mut self,
        index: LogIndex,
        term: Term,
        outcome: Result<Response, ClientError>,
    ) {
        let Some((proposed_term, request_id)) = self.pending_writes.remove(&index) else {
            return;
        };
        // Only a later leader can have replaced our entry at this index.
        debug_assert!(
            term >= proposed_term,
            "entry {index} of term {term} replaced one proposed in later term {proposed_term}"
        );
        if proposed_term == term {
            self.ready.replies.push(Reply {
                request_id,
                outcome,
            });
        } else {
            // Our entry was replaced by another leader's.
            let error = self.not_leader();
            self.reply_err(request_id, error);
        }
    }
}

/// The account a session of `auth`'s commands belongs to.
fn owner_of(auth: &Auth) -> SessionOwner {
    SessionOwner {
        user: auth.user.clone(),
        generation: auth.generation,
    }
}

/// Whether a request's session fits its command: account creation and session opening
/// take none, every other command needs one, and sequence numbers start at 1.
fn session_fits(session: Option<SessionRef>, command: &Command) -> Result<(), &'static str> {
    match (session, command.session_auth()) {
        (Some(_), None) => Err("account creation and session opening take no session"),
        (None, Some(_)) => Err("this command must be sent in a session (open one first)"),
        (Some(session), Some(_)) if session.seq == 0 => {
            Err("sequence numbers within a session start at 1")
        }
        _ => Ok(()),
    }
}

impl Replica {
    /// The client's answer for a request the session table refuses. A session that
    /// belongs to someone else, used with a dead identity (a logged-out token, or one of
    /// an account deleted since), is answered as what it is: not authenticated.
    fn session_refusal(
        &self,
        session: SessionRef,
        auth: &Auth,
        check: SessionCheck,
    ) -> ClientError {
        if check == SessionCheck::NotOwned && !self.machine.chat.authenticates(auth) {
            return ClientError::App(AppError::Unauthenticated);
        }
        session_refusal(session, check)
    }
}

/// The client's answer for a request the session table refuses.
fn session_refusal(session: SessionRef, check: SessionCheck) -> ClientError {
    match check {
        SessionCheck::Stale { last_seq } => ClientError::StaleRequest {
            seq: session.seq,
            last_seq,
        },
        SessionCheck::Expired => ClientError::SessionExpired,
        SessionCheck::NotOwned => ClientError::SessionNotOwned,
        SessionCheck::RetryMismatch { seq } => ClientError::RetryMismatch { seq },
        SessionCheck::Apply | SessionCheck::Duplicate(_) => {
            unreachable!("{check:?} is not a refusal")
        }
    }
}
