//! Checkers: safety after every step (from outside the replicas, across all of them),
//! and the client history against the final state at the end. Each is fed plain
//! observations so that its tests can hand it a broken state or history.

use crate::history::{Abuse, History, OpKind};
use chat_core::app::{CommandOutput, MessageId, MessageView, QueryOutput};
use chat_core::{ClientError, LogIndex, NodeId, Replica, Response, Role, Term};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// A short, stable name of the property that broke.
    pub check: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.detail)
    }
}

fn violation(check: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { check, detail })
}

/// Election safety and log safety, checked after every event.
#[derive(Clone, Debug, Default)]
pub struct SafetyChecker {
    leader_of_term: BTreeMap<Term, NodeId>,
    /// Per term, the voters of the configuration its leader was elected under.
    voters_of_term: BTreeMap<Term, Vec<NodeId>>,
    /// The newest membership entry seen committed anywhere: its index and voters.
    committed_voters: Option<(LogIndex, Vec<NodeId>)>,
    /// Digest of the committed entry at each index, as first seen committed anywhere.
    committed: BTreeMap<LogIndex, (Term, u64)>,
    /// Per node, the highest index whose committed entry was compared.
    checked_through: BTreeMap<NodeId, LogIndex>,
    /// Per leader: its term, the last index of its log seen, and whether it had
    /// committed an entry of its term then (see [`SafetyChecker::observe_leader_log`]).
    leader_logs: BTreeMap<NodeId, LeaderLog>,
}

#[derive(Clone, Copy, Debug)]
struct LeaderLog {
    term: Term,
    seen_through: LogIndex,
    term_committed: bool,
}

impl SafetyChecker {
    pub fn observe_leader(&mut self, node: NodeId, term: Term) -> Result<(), Violation> {
        let leader = *self.leader_of_term.entry(term).or_insert(node);
        if leader != node {
            return violation(
                "election-safety",
                format!("{leader} and {node} both lead term {term}"),
            );
        }
        Ok(())
    }

    /// A leader appends a membership change only once it has committed an entry of its
    /// own term (Ongaro, raft-dev, 2015): before that, the configuration it was elected
    /// under may not be the committed one, and a change made from it can give two
    /// configurations whose majorities do not overlap. The consequence, two leaders of
    /// one term, needs a rare interleaving after the change (bug 29 was found by it at
    /// seeds 466 and 1593 only); the rule is seen broken at the append. Observed after
    /// every input: an entry that appeared in the leader's log since its previous input
    /// is judged by whether the term had committed by the end of that input (a change
    /// is appended by a client request, which commits nothing before it).
    fn observe_leader_log(&mut self, replica: &Replica) -> Result<(), Violation> {
        let (node, term, last) = (replica.id(), replica.term(), replica.last_log_index());
        let term_committed = replica.term_at(replica.commit_index()) == Some(term);
        let log = match self.leader_logs.get(&node) {
            Some(log) if log.term == term => *log,
            // Newly elected: its log ends with its no-op, appended as it won.
            _ => LeaderLog {
                term,
                seen_through: last,
                term_committed,
            },
        };
        let mut index = log.seen_through.next();
        while index <= last && !log.term_committed {
            if let Some(entry) = replica.log_entry(index) {
                let change = matches!(
                    entry.payload,
                    chat_core::entry::EntryPayload::Membership { .. }
                );
                if change && entry.term == term {
                    return violation(
                        "change-before-commit",
                        format!(
                            "{node}, leader of term {term}, appended a membership change at \
                             index {index} before committing an entry of its term (commit \
                             index {} is of term {}): the configuration it changed may not be \
                             the committed one, and two configurations' majorities need not \
                             overlap",
                            replica.commit_index(),
                            replica
                                .term_at(replica.commit_index())
                                .map_or("?".to_string(), |t| t.to_string())
                        ),
                    );
                }
            }
            index = index.next();
        }
        self.leader_logs.insert(
            node,
            LeaderLog {
                term,
                seen_through: last,
                term_committed,
            },
        );
        Ok(())
    }

    /// A node holds `digest` as the committed entry at `index`.
    pub fn observe_committed(
        &mut self,
        node: NodeId,
        index: LogIndex,
        term: Term,
        digest: u64,
    ) -> Result<(), Violation> {
        let (first_term, first_digest) = *self.committed.entry(index).or_insert((term, digest));
        if (first_term, first_digest) != (term, digest) {
            return violation(
                "log-safety",
                format!(
                    "{node} holds a different committed entry at index {index} (term {term}, digest {digest:016x}) than was committed before (term {first_term}, digest {first_digest:016x})"
                ),
            );
        }
        Ok(())
    }

    /// The voters of the newest committed configuration seen, if any was seen.
    pub fn committed_voters(&self) -> Option<&[NodeId]> {
        self.committed_voters.as_ref().map(|(_, v)| v.as_slice())
    }

    /// A leader of `term` elected under a configuration with `voters`: one configuration
    /// per term, and any majority of it overlaps any majority of the newest configuration
    /// committed before (with one change in flight at a time, the leader's configuration
    /// is that one or differs from it by one voter). Two configurations whose majorities
    /// need not overlap could each elect a leader in one term.
    pub fn observe_leader_configuration(
        &mut self,
        node: NodeId,
        term: Term,
        voters: Vec<NodeId>,
    ) -> Result<(), Violation> {
        if let Some(first) = self.voters_of_term.get(&term) {
            if *first != voters {
                return violation(
                    "election-safety",
                    format!("term {term} has leaders under two configurations: voters {first:?} and {voters:?} ({node})"),
                );
            }
            return Ok(());
        }
        // A leader of an older term than one already seen was elected by votes cast back
        // then (answers delayed while it was paused, say): compare only the newest.
        let newest = self
            .leader_of_term
            .keys()
            .next_back()
            .is_none_or(|&t| t <= term);
        if let (true, Some((index, committed))) = (newest, &self.committed_voters) {
            if !majorities_overlap(&voters, committed) {
                return violation(
                    "election-safety",
                    format!(
                        "{node} leads term {term} under voters {voters:?}, whose majorities need not overlap those of the configuration committed at index {index} (voters {committed:?})"
                    ),
                );
            }
        }
        self.voters_of_term.insert(term, voters);
        Ok(())
    }

    /// Observes a replica after an event: its role, the seam between its snapshot and
    /// its log, and any newly committed entries.
    pub fn observe_replica(&mut self, replica: &Replica) -> Result<(), Violation> {
        let node = replica.id();
        // Terms never decrease along a log, across the snapshot too: an entry after the
        // snapshot of an older term than the snapshot's last is a suffix of another
        // history that an install kept. It does no harm until it is matched or the node
        // restarts (recovery refuses such a log), and the next AppendEntries usually
        // replaces it first: checked here, it is seen at the install itself.
        let snapshot = replica.snapshot_meta();
        if let Some(term) = replica.term_at(snapshot.last_index.next()) {
            if term < snapshot.last_term {
                return violation(
                    "log-terms",
                    format!(
                        "{node}'s entry {} has term {term}, older than its snapshot's last term {} (through {})",
                        snapshot.last_index.next(),
                        snapshot.last_term,
                        snapshot.last_index
                    ),
                );
            }
        }
        if replica.role() == Role::Leader {
            self.observe_leader(node, replica.term())?;
            self.observe_leader_log(replica)?;
            if !self.voters_of_term.contains_key(&replica.term()) {
                let voters = replica.membership().voters().collect();
                self.observe_leader_configuration(node, replica.term(), voters)?;
            }
        }
        let from = self
            .checked_through
            .get(&node)
            .copied()
            .unwrap_or(LogIndex::ZERO)
            .next();
        let commit = replica.commit_index();
        for index in from.0..=commit.0 {
            if let Some(entry) = replica.log_entry(LogIndex(index)) {
                self.observe_committed(node, entry.index, entry.term, entry.digest())?;
                if let chat_core::entry::EntryPayload::Membership { membership, .. } =
                    &entry.payload
                {
                    if self
                        .committed_voters
                        .as_ref()
                        .is_none_or(|(seen, _)| *seen < entry.index)
                    {
                        self.committed_voters = Some((entry.index, membership.voters().collect()));
                    }
                }
            }
        }
        if commit >= from {
            self.checked_through.insert(node, commit);
        }
        Ok(())
    }

    /// A restarted node re-learns its commit index; compare its entries again.
    pub fn node_restarted(&mut self, node: NodeId) {
        self.checked_through.remove(&node);
    }
}

/// Whether every majority of voters `a` shares a voter with every majority of `b`: the
/// smallest overlap two majorities can have, each taking as few shared voters as it can,
/// is positive.
pub fn majorities_overlap(a: &[NodeId], b: &[NodeId]) -> bool {
    let shared = a.iter().filter(|v| b.contains(v)).count();
    let (only_a, only_b) = (a.len() - shared, b.len() - shared);
    let need_a = (a.len() / 2 + 1).saturating_sub(only_a);
    let need_b = (b.len() / 2 + 1).saturating_sub(only_b);
    need_a + need_b > shared
}

/// The final state as the history checker needs it: each account's inbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinalState {
    pub inboxes: BTreeMap<String, Vec<MessageView>>,
}

/// Checks the client history against the final state:
/// - each acknowledged send is in the recipient's inbox exactly once, unless they deleted it;
/// - no message is there twice (a retry applied twice), no account created twice;
/// - no message is returned as unread by two reads;
/// - a linearizable read sees every write acknowledged before it began.
pub fn check_history(history: &History, state: &FinalState) -> Result<(), Violation> {
    check_abuse(history)?;
    let mut deleted: BTreeMap<&str, BTreeSet<MessageId>> = BTreeMap::new();
    for op in &history.ops {
        // A delete whose outcome is unknown may have been applied.
        if let (
            OpKind::Delete { user, ids },
            Some(Ok(_))
            | None
            | Some(Err(
                ClientError::SessionExpired
                | ClientError::StaleRequest { .. }
                | ClientError::SessionNotOwned
                | ClientError::RetryMismatch { .. },
            )),
        ) = (&op.kind, &op.outcome)
        {
            deleted.entry(user).or_default().extend(ids.iter().copied());
        }
        if let (
            OpKind::CreateAccount { user },
            Some(Err(ClientError::App(chat_core::app::AppError::UserExists(_)))),
        ) = (&op.kind, &op.outcome)
        {
            return violation(
                "exactly-once",
                format!(
                    "client {} saw its own account {user} created twice",
                    op.client
                ),
            );
        }
    }
    let mut bodies_seen: BTreeMap<&str, (&str, MessageId)> = BTreeMap::new();
    for (user, inbox) in &state.inboxes {
        for message in inbox {
            if let Some((other_user, other_id)) =
                bodies_seen.insert(&message.body, (user, message.id))
            {
                return violation(
                    "exactly-once",
                    format!(
                        "message body {:?} is stored twice: {other_user}#{} and {user}#{}",
                        message.body, other_id.0, message.id.0
                    ),
                );
            }
        }
    }
    for op in history.ops.iter().filter(|op| !is_replay(op)) {
        let (
            OpKind::Send { to, body, .. },
            Some(Ok(Response::Command(CommandOutput::Sent { id, .. }))),
        ) = (&op.kind, &op.outcome)
        else {
            continue;
        };
        let Some(inbox) = state.inboxes.get(to) else {
            continue;
        };
        if deleted.get(to.as_str()).is_some_and(|ids| ids.contains(id)) {
            continue;
        }
        match inbox.iter().find(|m| m.id == *id) {
            Some(message) if message.body == *body => {}
            Some(message) => {
                return violation(
                    "durability",
                    format!(
                        "message {to}#{} holds {:?}, acknowledged as {body:?}",
                        id.0, message.body
                    ),
                )
            }
            None => {
                return violation(
                    "durability",
                    format!("acknowledged send {to}#{} ({body:?}) is lost", id.0),
                )
            }
        }
    }
    check_reads(history)?;
    check_linearizable_lists(history)
}

fn check_reads(history: &History) -> Result<(), Violation> {
    // Reads of one user come from one client, one at a time, in history order.
    let mut read_ids: BTreeMap<&str, BTreeMap<MessageId, usize>> = BTreeMap::new();
    let mut unknown_read_seen: BTreeSet<&str> = BTreeSet::new();
    for (n, op) in history.ops.iter().enumerate() {
        let OpKind::Read { user, limit } = &op.kind else {
            continue;
        };
        if is_replay(op) {
            // Judged by `check_abuse` when answered; unanswered or refused, it may have
            // been applied again and marked messages read.
            if !matches!(op.outcome, Some(Ok(_))) {
                unknown_read_seen.insert(user);
            }
            continue;
        }
        let Some(outcome) = op.outcome.as_ref().filter(|o| {
            !matches!(
                o,
                Err(ClientError::SessionExpired
                    | ClientError::StaleRequest { .. }
                    | ClientError::SessionNotOwned
                    | ClientError::RetryMismatch { .. })
            )
        }) else {
            // It may have marked messages read that nobody saw.
            unknown_read_seen.insert(user);
            continue;
        };
        let Ok(Response::Command(CommandOutput::Messages(messages))) = outcome else {
            continue;
        };
        let seen = read_ids.entry(user).or_default();
        for message in messages {
            if let Some(first) = seen.insert(message.id, n) {
                return violation(
                    "exactly-once",
                    format!(
                        "message {user}#{} was returned unread by two reads (ops {first} and {n})",
                        message.id.0
                    ),
                );
            }
        }
        if messages.len() as u32 >= *limit || unknown_read_seen.contains(user.as_str()) {
            continue;
        }
        for send in &history.ops {
            let (
                OpKind::Send { to, body, .. },
                Some(Ok(Response::Command(CommandOutput::Sent { id, .. }))),
                Some(acked),
            ) = (&send.kind, &send.outcome, send.complete_us)
            else {
                continue;
            };
            if to == user && acked < op.invoke_us && !seen.contains_key(id) {
                return violation(
                    "linearizability",
                    format!("read op {n} by {user} began after send {to}#{} ({body:?}) was acknowledged but did not see it", id.0),
                );
            }
        }
    }
    Ok(())
}

fn check_linearizable_lists(history: &History) -> Result<(), Violation> {
    for (n, op) in history.ops.iter().enumerate() {
        let (
            OpKind::List { stale: false },
            Some(Ok(Response::Query(QueryOutput::Accounts {
                names,
                has_more: false,
                ..
            }))),
        ) = (&op.kind, &op.outcome)
        else {
            continue;
        };
        for create in &history.ops {
            let (OpKind::CreateAccount { user }, Some(Ok(_)), Some(acked)) =
                (&create.kind, &create.outcome, create.complete_us)
            else {
                continue;
            };
            if acked < op.invoke_us && !names.contains(user) {
                return violation(
                    "linearizability",
                    format!("linearizable list op {n} began after account {user} was acknowledged but did not see it"),
                );
            }
        }
    }
    Ok(())
}

fn is_replay(op: &crate::history::OpRecord) -> bool {
    matches!(op.abuse, Some(Abuse::Replay { .. }))
}

/// What misbehaving clients (`client-abuse`) must not achieve, judged from the answers:
/// - `session-isolation`: every answer is an answer to the request that was sent (a
///   send is answered with a send's result, a read of `u` with messages to `u`, a
///   creation of `u` with `u`'s account), and no two operations were given the same new
///   message: a request in a session that is not its own never gets another
///   request's stored answer;
/// - `exactly-once`: a late retry of an operation (the same request, sent again) is
///   answered with the operation's answer or refused, never applied again;
/// - requests that only a broken session table would answer are refused: one in a
///   session never opened, one in another user's session, and another command under an
///   already answered sequence number.
pub fn check_abuse(history: &History) -> Result<(), Violation> {
    let mut sent_by: BTreeMap<MessageId, usize> = BTreeMap::new();
    for (n, op) in history.ops.iter().enumerate() {
        let Some(Ok(response)) = &op.outcome else {
            if let (Some(Abuse::Replay { of }), Some(Err(ClientError::App(error)))) =
                (op.abuse, &op.outcome)
            {
                if let Some(Ok(first)) = &history.ops[of].outcome {
                    return violation(
                        "exactly-once",
                        format!(
                            "op #{n} by c{}, a late retry of op #{of} (answered {first:?}), was applied again: {error}",
                            op.client
                        ),
                    );
                }
            }
            continue;
        };
        // Requests that must be refused whatever happened before them.
        let must_refuse = match op.abuse {
            Some(Abuse::FreshSession) => Some(("exactly-once", "in a session never opened")),
            Some(Abuse::Foreign { .. }) => Some(("session-isolation", "in another user's session")),
            Some(Abuse::Mismatch) => Some((
                "exactly-once",
                "under an answered sequence number with another command",
            )),
            _ => None,
        };
        if let Some((check, why)) = must_refuse {
            return violation(
                check,
                format!(
                    "op #{n} by c{} ({:?}), sent {why}, was answered instead of refused: {response:?}",
                    op.client, op.kind
                ),
            );
        }
        let whose = match op.abuse {
            Some(Abuse::Foreign { owner }) => format!(" (sent in c{owner}'s session)"),
            _ => String::new(),
        };
        let fits = match (&op.kind, response) {
            (
                OpKind::CreateAccount { user },
                Response::Command(CommandOutput::AccountCreated { user: created, .. }),
            ) => user == created,
            (
                OpKind::OpenSession { .. },
                Response::Command(CommandOutput::SessionOpened { .. }),
            ) => true,
            (OpKind::Send { .. }, Response::Command(CommandOutput::Sent { .. })) => true,
            (OpKind::Read { user, .. }, Response::Command(CommandOutput::Messages(messages))) => {
                messages.iter().all(|m| m.recipient == *user)
            }
            (OpKind::Delete { .. }, Response::Command(CommandOutput::Deleted { .. })) => true,
            (OpKind::List { .. }, Response::Query(QueryOutput::Accounts { .. })) => true,
            (OpKind::Peek { user, .. }, Response::Query(QueryOutput::Messages(messages))) => {
                messages.iter().all(|m| m.recipient == *user)
            }
            _ => false,
        };
        if !fits {
            return violation(
                "session-isolation",
                format!(
                    "op #{n} by c{}{whose} ({:?}) was answered with another request's answer: {response:?}",
                    op.client, op.kind
                ),
            );
        }
        if let Some(Abuse::Replay { of }) = op.abuse {
            if let Some(Ok(first)) = &history.ops[of].outcome {
                if first != response {
                    return violation(
                        "exactly-once",
                        format!(
                            "op #{n} by c{}, a late retry of op #{of}, was applied again: answered {response:?}, first {first:?}",
                            op.client
                        ),
                    );
                }
            }
            continue;
        }
        if let Response::Command(CommandOutput::Sent { id, .. }) = response {
            if let Some(first) = sent_by.insert(*id, n) {
                return violation(
                    "session-isolation",
                    format!(
                        "ops #{first} (c{}) and #{n} (c{}){whose} were both answered with message {}",
                        history.ops[first].client, op.client, id.0
                    ),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn majorities_of_configurations_one_voter_apart_overlap() {
        let three = ids(&[1, 2, 3]);
        assert!(majorities_overlap(&three, &three));
        assert!(majorities_overlap(&three, &ids(&[1, 2, 3, 4])));
        assert!(majorities_overlap(&three, &ids(&[1, 2])));
        assert!(majorities_overlap(&ids(&[1, 2, 3, 4]), &ids(&[1, 2, 4])));
        // Two voters apart: {4, 5, 1} and {2, 3} are disjoint majorities.
        assert!(!majorities_overlap(&three, &ids(&[1, 2, 3, 4, 5])));
        // A voter replaced in one step: {1, 3} and {2, 4} are disjoint majorities.
        assert!(!majorities_overlap(&three, &ids(&[1, 2, 4])));
        assert!(!majorities_overlap(&ids(&[1, 2]), &ids(&[3, 4])));
    }
}
