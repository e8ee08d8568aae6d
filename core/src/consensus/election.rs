//! Leader election: randomized timeouts, pre-vote, votes, check-quorum and the leader
//! lease that keeps a partitioned node from disrupting a healthy leader.

use super::message::Message;
use super::progress::Progress;
use super::replica::{Replica, Role};
use crate::effects::ClientError;
use crate::entry::{Entry, EntryPayload};
use crate::types::{LogIndex, NodeId, Term};
use rand::Rng;
use std::collections::BTreeSet;

impl Replica {
    pub(super) fn reset_election_deadline(&mut self) {
        let (min, max) = (
            self.config.election_timeout_us_min,
            self.config.election_timeout_us_max,
        );
        debug_assert!(min <= max);
        let timeout_us = self.rng.random_range(min..=max);
        self.election_deadline = self.now.saturating_add_us(timeout_us);
    }

    /// Has a leader been heard from recently enough that an election would only disrupt
    /// it? A leader is always in its own lease.
    pub(super) fn in_leader_lease(&self) -> bool {
        if self.role == Role::Leader {
            return true;
        }
        match (self.leader_id, self.last_leader_contact) {
            (Some(_), Some(contact)) => {
                self.now.saturating_since_us(contact) < self.config.election_timeout_us_min
            }
            _ => false,
        }
    }

    pub(super) fn on_election_timeout(&mut self) {
        if !self.may_campaign() {
            // Learners, removed nodes and nodes waiting to join never campaign.
            return self.reset_election_deadline();
        }
        if self.config.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(false);
        }
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        debug_assert!(term >= self.term);
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.persist_hard_state();
        }
        if self.role == Role::Leader {
            self.fail_pending_requests(leader);
        }
        self.role = Role::Follower;
        self.transfer = None;
        self.leader_id = leader;
        if leader.is_some() {
            self.last_leader_contact = Some(self.now);
        }
        self.votes.clear();
        self.progress.clear();
        self.reset_election_deadline();
    }

    /// Asks whether an election could be won before disturbing anyone's term.
    fn become_pre_candidate(&mut self) {
        debug_assert_ne!(self.role, Role::Leader);
        self.role = Role::PreCandidate;
        self.leader_id = None;
        self.votes = BTreeSet::from([self.config.id]);
        self.reset_election_deadline();
        if self.membership().is_quorum(&self.votes) {
            return self.become_candidate(false);
        }
        let (term, last_log_index, last_log_term) = (
            Term(self.term.0 + 1),
            self.log.last_index(),
            self.log.last_term(),
        );
        for peer in self.voter_peers() {
            self.send(
                peer,
                Message::PreVote {
                    term,
                    last_log_index,
                    last_log_term,
                },
            );
        }
    }

    /// `leadership_transfer`: the leader asked for this election (`TimeoutNow`), so the
    /// vote requests say so and voters answer them despite their leader lease.
    pub(super) fn become_candidate(&mut self, leadership_transfer: bool) {
        debug_assert!(self.may_campaign(), "only a voter campaigns");
        self.metrics.elections_started += 1;
        self.role = Role::Candidate;
        self.term = Term(self.term.0 + 1);
        self.voted_for = Some(self.config.id);
        self.persist_hard_state();
        self.leader_id = None;
        self.votes = BTreeSet::from([self.config.id]);
        self.reset_election_deadline();
        if self.membership().is_quorum(&self.votes) {
            return self.become_leader();
        }
        let (term, last_log_index, last_log_term) =
            (self.term, self.log.last_index(), self.log.last_term());
        for peer in self.voter_peers() {
            self.send(
                peer,
                Message::RequestVote {
                    term,
                    last_log_index,
                    last_log_term,
                    leadership_transfer,
                },
            );
        }
    }

    fn become_leader(&mut self) {
        debug_assert_eq!(self.role, Role::Candidate);
        self.role = Role::Leader;
        self.leader_id = Some(self.config.id);
        self.votes.clear();
        self.transfer = None;
        let next_index = self.log.last_index().next();
        self.progress = self
            .peers
            .iter()
            .map(|&peer| (peer, Progress::new(next_index)))
            .collect();
        self.heartbeat_seq = 0;
        self.heartbeat_deadline = self
            .now
            .saturating_add_us(self.config.heartbeat_interval_us);
        self.check_quorum_deadline = self
            .now
            .saturating_add_us(self.config.election_timeout_us_min);
        // A leader may only count replicas for entries of its own term; the no-op gives it
        // one at once, which also settles every entry it inherited.
        let timestamp = self.stamp_time();
        self.append_own(EntryPayload::Noop { timestamp });
        self.maybe_commit();
    }

    /// Steps down if a quorum has not been heard from in an election timeout, so that a
    /// partitioned leader stops accepting requests it cannot commit.
    pub(super) fn check_quorum(&mut self) {
        let id = self.config.id;
        let active: Vec<_> = self
            .progress
            .iter()
            .filter(|(_, p)| p.recently_active)
            .map(|(&peer, _)| peer)
            .chain(std::iter::once(id))
            .collect();
        for progress in self.progress.values_mut() {
            progress.recently_active = false;
        }
        if !self.membership().is_quorum(&active) {
            self.become_follower(self.term, None);
        }
    }

    pub(super) fn handle_pre_vote(
        &mut self,
        from: NodeId,
        term: Term,
        last_log_index: LogIndex,
        last_log_term: Term,
    ) {
        if last_log_term > term {
            return self.reject();
        }
        let granted = term > self.term
            && !self.in_leader_lease()
            && self.log.is_up_to_date(last_log_index, last_log_term);
        let term = if granted { term } else { self.term };
        self.send(from, Message::PreVoteResponse { term, granted });
    }

    pub(super) fn handle_pre_vote_response(&mut self, from: NodeId, term: Term, granted: bool) {
        if !granted {
            if term > self.term {
                // We are behind: someone has moved on to a later term.
                self.become_follower(term, None);
            }
            return;
        }
        if self.role != Role::PreCandidate || term != Term(self.term.0 + 1) {
            return;
        }
        self.votes.insert(from);
        if self.membership().is_quorum(&self.votes) {
            self.become_candidate(false);
        }
    }

    pub(super) fn handle_request_vote(
        &mut self,
        from: NodeId,
        last_log_index: LogIndex,
        last_log_term: Term,
    ) {
        if last_log_term > self.term {
            return self.reject();
        }
        let can_vote = self.voted_for.is_none_or(|v| v == from) && self.leader_id.is_none();
        let granted = can_vote && self.log.is_up_to_date(last_log_index, last_log_term);
        if granted {
            self.voted_for = Some(from);
            // The vote leaves only after this is durable: see `effects`.
            self.persist_hard_state();
            self.reset_election_deadline();
        }
        self.send(
            from,
            Message::RequestVoteResponse {
                term: self.term,
                granted,
            },
        );
    }

    pub(super) fn handle_request_vote_response(&mut self, from: NodeId, granted: bool) {
        if self.role != Role::Candidate || !granted {
            return;
        }
        self.votes.insert(from);
        if self.membership().is_quorum(&self.votes) {
            self.become_leader();
        }
    }

    /// The timestamp for a new entry: the leader's clock, but never before an entry
    /// already in the log, so log time only moves forward across leaders.
    pub(super) fn stamp_time(&self) -> crate::types::Time {
        self.now.max(self.log_time_max)
    }

    pub(super) fn append_own(&mut self, payload: EntryPayload) -> LogIndex {
        debug_assert_eq!(self.role, Role::Leader);
        let index = self.log.last_index().next();
        let entry = Entry {
            term: self.term,
            index,
            payload,
        };
        self.log_time_max = self.log_time_max.max(entry.payload.timestamp());
        let membership = matches!(entry.payload, EntryPayload::Membership { .. });
        self.ready.persist.entries.push(entry.clone());
        if membership {
            self.note_appended_memberships(std::iter::once(&entry));
        }
        self.log.append(entry);
        self.replication_requested = true;
        index
    }

    /// Answers every request this leader holds: it can no longer promise an outcome.
    pub(super) fn fail_pending_requests(&mut self, leader_hint: Option<NodeId>) {
        let error = ClientError::NotLeader { leader_hint };
        // A write already committed takes effect whoever leads now: it stays pending and
        // is answered with its outcome when this replica applies it (applying is bounded
        // per input, so committed entries may still wait). Only the others may not.
        let undecided = self.pending_writes.split_off(&self.commit_index.next());
        let writes = undecided.into_values().map(|(_, id)| id);
        let reads_term = std::mem::take(&mut self.reads_awaiting_term_commit)
            .into_iter()
            .map(|(id, _)| id);
        let reads_quorum = std::mem::take(&mut self.reads_awaiting_quorum)
            .into_iter()
            .map(|r| r.request_id);
        let reads_apply = std::mem::take(&mut self.reads_awaiting_apply)
            .into_iter()
            .map(|r| r.request_id);
        let ids: Vec<_> = writes
            .chain(reads_term)
            .chain(reads_quorum)
            .chain(reads_apply)
            .collect();
        for request_id in ids {
            self.reply_err(request_id, error.clone());
        }
    }
}
