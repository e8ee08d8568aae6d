//! The leader lease, checked from outside at every pre-vote answer (check `pre-vote`).
//!
//! Pre-vote and the lease are what keep a healthy leader in office (Raft thesis §9.6): a
//! voter that heard from a leader within the minimum election timeout, by its own clock,
//! refuses to help anyone start an election, and a voter that did not grants a candidate
//! whose term is higher and whose log is at least as up to date. Both halves only show in
//! liveness, and weakly: a lease that is too long (bug 09) delays an election only until
//! the followers' own timers fire (a node that becomes a pre-candidate drops its leader,
//! and its lease with it), less than one election timeout, inside what any time bound
//! must allow a correct cluster; a lease that is ignored (bug 17) lets a node that missed
//! a few heartbeats depose a healthy leader, which only costs one more election.
//!
//! So the simulator keeps its own record of each replica's lease, from what it sees: the
//! local time (the node's own clock, as handed to the replica) of the last message from
//! the replica's leader of its term that it delivered (AppendEntries, Heartbeat,
//! InstallSnapshot: what makes a follower accept a leader), per incarnation. At each
//! PreVote delivered, it predicts the answer from that record and the replica's public
//! state (role, leader, term, log), and the answer sent must agree:
//! - **granted during a lease** fails: the voter leads, or follows a leader it heard from
//!   less than the minimum election timeout ago (less a margin);
//! - **refused outside any lease** fails: the voter has no leader, or heard from it more
//!   than the minimum election timeout ago (plus a margin), the candidate's term is above
//!   the voter's and its log at least as up to date.
//!
//! The margin ([`LEASE_MARGIN_DIVISOR`]) keeps the check off the boundary, where a
//! difference of rounding between the record and the replica would be a false alarm;
//! the record is in the same local time the replica uses, so the margin can be small.

use super::*;
use chat_core::{LogIndex, Message, Term};

/// The dead band around the lease's end, as a fraction of the minimum election timeout:
/// answers within `min / LEASE_MARGIN_DIVISOR` of it are not judged.
pub const LEASE_MARGIN_DIVISOR: u64 = 50;

/// What a PreVote answer must be, decided before the voter handles it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expected {
    /// In a lease: must refuse.
    Refusal,
    /// Outside any lease, the candidate's term higher and its log up to date: must grant.
    Grant,
    /// Near the lease's end, or refused for its term or log: either answer is right.
    Either,
}

/// The voter's state as the simulator sees it when a PreVote arrives.
#[derive(Clone, Copy, Debug)]
pub(super) struct VoterView {
    pub(super) leads: bool,
    pub(super) has_leader: bool,
    /// Local µs since the last message of its leader the simulator delivered, if any in
    /// this incarnation.
    pub(super) since_contact_us: Option<u64>,
    pub(super) lease_us: u64,
    pub(super) term: Term,
    pub(super) last_log: (Term, LogIndex),
}

/// The answer a correct voter gives to `PreVote { term, last_log_index, last_log_term }`.
pub(super) fn expected_answer(
    voter: &VoterView,
    term: Term,
    last_log_index: LogIndex,
    last_log_term: Term,
) -> Expected {
    let margin_us = voter.lease_us / LEASE_MARGIN_DIVISOR;
    let lease = if voter.leads {
        Some(true)
    } else if !voter.has_leader {
        Some(false)
    } else {
        match voter.since_contact_us {
            Some(us) if us + margin_us < voter.lease_us => Some(true),
            Some(us) if us >= voter.lease_us + margin_us => Some(false),
            // A leader without a delivery the record saw would be a gap in the record:
            // judge nothing rather than guess.
            _ => None,
        }
    };
    match lease {
        Some(true) => Expected::Refusal,
        Some(false)
            if term > voter.term
                && last_log_term <= term
                && (last_log_term, last_log_index) >= voter.last_log =>
        {
            Expected::Grant
        }
        _ => Expected::Either,
    }
}

/// The lease record: per node, the incarnation and local time of the last leader message
/// delivered.
#[derive(Debug, Default)]
pub(super) struct LeaseRecord {
    contact: BTreeMap<NodeId, (u64, Time)>,
    /// The PreVote being handled: (voter, candidate, what its answer must be).
    pending: Option<(NodeId, NodeId, Expected)>,
    /// The voter's lease as seen at that PreVote, for the failure's detail.
    situation: String,
}

impl World<'_> {
    /// Before a message is handled: if it is a PreVote, what the answer must be.
    pub(super) fn expect_pre_vote_answer(&mut self, envelope: &Envelope) {
        let Message::PreVote {
            term,
            last_log_index,
            last_log_term,
        } = envelope.message
        else {
            return;
        };
        if self.scenario.tuning.pre_vote == Some(false) {
            return;
        }
        let node = self.node(envelope.to);
        let Some(replica) = node.replica.as_ref() else {
            return;
        };
        let local_now = node.local_time(self.now);
        let since_contact_us = match self.lease_record.contact.get(&envelope.to) {
            Some(&(incarnation, at)) if incarnation == node.incarnation => {
                Some(local_now.saturating_since_us(at))
            }
            _ => None,
        };
        let lease_us = replica.config().election_timeout_us_min;
        let since_contact_us = match self.sabotage {
            Some(Sabotage::AgeLeaseRecord) => since_contact_us.map(|us| us + lease_us),
            _ => since_contact_us,
        };
        let last = replica.last_log_index();
        let voter = VoterView {
            leads: replica.role() == Role::Leader,
            has_leader: replica.leader_id().is_some(),
            since_contact_us,
            lease_us,
            term: replica.term(),
            last_log: (replica.term_at(last).unwrap_or(Term(0)), last),
        };
        let expected = expected_answer(&voter, term, last_log_index, last_log_term);
        let lease = match (voter.leads, replica.leader_id(), since_contact_us) {
            (true, _, _) => "it leads".to_string(),
            (false, None, _) => "it has no leader".to_string(),
            (false, Some(leader), Some(us)) => format!(
                "it last heard from its leader {leader} {:.1} ms ago by its clock, lease {:.1} ms",
                us as f64 / 1e3,
                voter.lease_us as f64 / 1e3
            ),
            (false, Some(leader), None) => format!("its leader is {leader}"),
        };
        self.lease_record.pending = Some((envelope.to, envelope.from, expected));
        self.lease_record.situation = lease;
    }

    /// After a message is handled: a leader message (`leader_message`: AppendEntries,
    /// Heartbeat or InstallSnapshot, of `term`, from `from`) that the replica accepted
    /// renews the record of its lease, at `local_now`, the time the replica was handed.
    pub(super) fn record_leader_contact(
        &mut self,
        from: NodeId,
        to: NodeId,
        term: Term,
        leader_message: bool,
        local_now: Time,
    ) {
        self.lease_record.pending = None;
        if !leader_message {
            return;
        }
        let node = self.node(to);
        let Some(replica) = node.replica.as_ref() else {
            return;
        };
        if replica.role() != Role::Leader
            && replica.leader_id() == Some(from)
            && replica.term() == term
        {
            let incarnation = node.incarnation;
            self.lease_record
                .contact
                .insert(to, (incarnation, local_now));
        }
    }

    /// As a replica's outputs leave: its answer to the PreVote being handled, against
    /// the prediction.
    pub(super) fn check_pre_vote_answer(&mut self, envelope: &Envelope) {
        let Message::PreVoteResponse { granted, .. } = envelope.message else {
            return;
        };
        let Some((voter, candidate, expected)) = self.lease_record.pending else {
            return;
        };
        if envelope.from != voter || envelope.to != candidate {
            return;
        }
        self.lease_record.pending = None;
        let wrong = match expected {
            Expected::Either => return,
            Expected::Refusal => {
                self.stats.pre_vote_refusals_judged += 1;
                granted
            }
            Expected::Grant => {
                self.stats.pre_vote_grants_judged += 1;
                !granted
            }
        };
        if wrong {
            let detail = match expected {
                Expected::Refusal => format!(
                    "{voter} granted {candidate} a pre-vote while in a leader's lease ({}): a \
                     node that missed a few heartbeats can depose a healthy leader",
                    self.lease_record.situation
                ),
                _ => format!(
                    "{voter} refused {candidate} a pre-vote outside any leader's lease ({}), \
                     though the candidate's term is higher and its log up to date: elections \
                     after a leader's loss are delayed",
                    self.lease_record.situation
                ),
            };
            self.fail(Violation {
                check: "pre-vote",
                detail,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(since_contact_us: Option<u64>) -> VoterView {
        VoterView {
            leads: false,
            has_leader: true,
            since_contact_us,
            lease_us: 150_000,
            term: Term(4),
            last_log: (Term(4), LogIndex(10)),
        }
    }

    #[test]
    fn a_pre_vote_answer_follows_the_lease_then_the_term_and_the_log() {
        let ask = |voter: &VoterView| expected_answer(voter, Term(5), LogIndex(10), Term(4));
        // In the lease (and a leader is always in its own): refuse, whatever else.
        assert_eq!(ask(&follower(Some(20_000))), Expected::Refusal);
        let leader = VoterView {
            leads: true,
            ..follower(None)
        };
        assert_eq!(ask(&leader), Expected::Refusal);
        // Past it (bug 09 kept refusing for four maximum timeouts): grant.
        assert_eq!(ask(&follower(Some(400_000))), Expected::Grant);
        let no_leader = VoterView {
            has_leader: false,
            ..follower(None)
        };
        assert_eq!(ask(&no_leader), Expected::Grant);
        // Near the lease's end, either answer.
        assert_eq!(ask(&follower(Some(150_000))), Expected::Either);
        assert_eq!(ask(&follower(Some(148_000))), Expected::Either);
        // Outside the lease, a candidate behind or of no higher term may be refused.
        let behind = expected_answer(&follower(Some(400_000)), Term(5), LogIndex(9), Term(4));
        assert_eq!(behind, Expected::Either);
        let same_term = expected_answer(&follower(Some(400_000)), Term(4), LogIndex(10), Term(4));
        assert_eq!(same_term, Expected::Either);
    }
}
