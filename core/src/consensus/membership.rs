//! The configuration in force and changes to it: which membership a replica uses (the
//! latest in its log, committed or not), how it follows appends, truncations, applies and
//! snapshots, and the leader's rules for proposing a change. The structural rules of a
//! change are in [`crate::membership`].

use super::progress::Progress;
use super::replica::{PendingQuery, Replica, Role};
use crate::effects::{ClientError, Response};
use crate::entry::{Entry, EntryPayload};
use crate::membership::{Membership, MembershipChange, MembershipError};
use crate::types::{LogIndex, NodeId, RequestId};

impl Replica {
    /// The configuration in force: the latest membership in this replica's log,
    /// committed or not (Raft thesis §4.1), or the applied one if the log holds none past
    /// it.
    pub fn membership(&self) -> &Membership {
        self.membership_unapplied
            .last()
            .map_or(&self.machine.membership, |(_, membership)| membership)
    }

    /// Whether this replica knows it was removed from the cluster: it applied its own
    /// removal, or a member told it (`Message::Removed`). A removed replica never
    /// campaigns; its shell should stop serving.
    pub fn is_removed(&self) -> bool {
        self.removed_notice || self.machine.membership.is_removed(self.config.id)
    }

    /// Whether this replica votes in the configuration in force.
    pub fn is_voter(&self) -> bool {
        self.membership().is_voter(self.config.id) && !self.is_removed()
    }

    /// Whether this replica may campaign: a voter of the configuration in force, or one
    /// whose removal is the latest change in its log and still pending (thesis §4.2.2:
    /// a server not in its own latest configuration must still start elections, as it
    /// may be needed until that configuration commits; it does not count its own vote).
    /// Without this, a leader that logged its own removal and lost leadership before
    /// replicating it could be the only replica whose log wins an election, yet never
    /// campaign: a cluster of two voters then stays leaderless for good.
    pub(super) fn may_campaign(&self) -> bool {
        let id = self.config.id;
        if self.is_removed() {
            return false;
        }
        if self.membership().is_voter(id) {
            return true;
        }
        let Some(((_, latest), before)) = self.membership_unapplied.split_last() else {
            return false;
        };
        // The configuration the pending removal changed (after a restart the applied
        // one may be older than the log's: what the log holds is what counts).
        let previous = before.last().map_or(&self.machine.membership, |(_, m)| m);
        latest.is_removed(id) && previous.is_voter(id)
    }

    /// Voters of the configuration in force other than this replica.
    pub(super) fn voter_peers(&self) -> Vec<NodeId> {
        let id = self.config.id;
        self.membership().voters().filter(|&v| v != id).collect()
    }

    /// The `quorum`-th largest of the voters' values (this replica's own `own` if it
    /// votes, its followers' from their progress), or `None` if no quorum of voters has
    /// reported one. What a quorum of the configuration in force holds at least.
    pub(super) fn quorum_value<T: Ord + Copy>(
        &self,
        own: T,
        of_follower: impl Fn(&Progress) -> T,
    ) -> Option<T> {
        let membership = self.membership();
        let mut values: Vec<T> = membership
            .voters()
            .filter_map(|voter| {
                if voter == self.config.id {
                    Some(own)
                } else {
                    self.progress.get(&voter).map(&of_follower)
                }
            })
            .collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        values.get(membership.quorum().checked_sub(1)?).copied()
    }

    /// Entries just added to the log (by this leader or from one): their memberships are
    /// in force at once.
    pub(super) fn note_appended_memberships<'a>(
        &mut self,
        entries: impl Iterator<Item = &'a Entry>,
    ) {
        let mut changed = false;
        for entry in entries {
            if let EntryPayload::Membership { membership, .. } = &entry.payload {
                debug_assert!(
                    self.membership_unapplied
                        .last()
                        .is_none_or(|(index, _)| *index < entry.index),
                    "membership entries are noted in log order"
                );
                self.membership_unapplied
                    .push((entry.index, membership.clone()));
                changed = true;
            }
        }
        if changed {
            self.refresh_membership();
        }
    }

    /// The log lost its entries from `from` on: so did the configuration in force.
    pub(super) fn note_log_truncated(&mut self, from: LogIndex) {
        let before = self.membership_unapplied.len();
        self.membership_unapplied.retain(|(index, _)| *index < from);
        if self.membership_unapplied.len() != before {
            self.refresh_membership();
        }
    }

    /// A snapshot through `last_index` replaced the applied state (whose membership it
    /// carries); entries it covers are no longer pending, and if the log kept no suffix,
    /// none are.
    pub(super) fn note_snapshot_installed(&mut self, last_index: LogIndex, kept_suffix: bool) {
        if kept_suffix {
            self.membership_unapplied
                .retain(|(index, _)| *index > last_index);
        } else {
            self.membership_unapplied.clear();
        }
        self.refresh_membership();
    }

    /// A committed membership entry was applied: it is now part of the replicated state.
    /// A leader that is no longer a member hands leadership to the most up-to-date voter
    /// and steps down (thesis §4.2.2); it led until now without counting itself.
    pub(super) fn apply_membership(&mut self, entry: &Entry, membership: &Membership) {
        let front = self.membership_unapplied.first().map(|(index, _)| *index);
        debug_assert_eq!(
            front,
            Some(entry.index),
            "the membership applied is the oldest pending one"
        );
        if front == Some(entry.index) {
            self.membership_unapplied.remove(0);
        }
        self.machine.membership = membership.clone();
        let response = Ok(Response::Membership(membership.clone()));
        self.answer_pending_write(entry.index, entry.term, response);
        if self.role == Role::Leader && !membership.contains(self.config.id) {
            if let Some(successor) = self.most_caught_up_voter() {
                self.send_timeout_now(successor);
            }
            self.become_follower(self.term, None);
        }
        self.refresh_membership();
    }

    /// Brings everything derived from the configuration in force up to date: the peers
    /// this replica talks to, a leader's progress per follower, and a campaign that lost
    /// its vote.
    pub(super) fn refresh_membership(&mut self) {
        let id = self.config.id;
        self.peers = self
            .membership()
            .members()
            .keys()
            .copied()
            .filter(|&m| m != id)
            .collect();
        if self.role == Role::Leader {
            let next_index = self.log.last_index().next();
            let peers = &self.peers;
            self.progress.retain(|peer, _| peers.contains(peer));
            for &peer in &self.peers {
                self.progress
                    .entry(peer)
                    .or_insert_with(|| Progress::new(next_index));
            }
            if self
                .transfer
                .as_ref()
                .is_some_and(|t| !self.membership().is_voter(t.target))
            {
                self.transfer = None;
            }
            self.replication_requested = true;
        } else if matches!(self.role, Role::PreCandidate | Role::Candidate) && !self.may_campaign()
        {
            self.become_follower(self.term, None);
        }
    }

    /// The voter other than this one whose log matches the leader's furthest (ties: the
    /// lowest id).
    pub(super) fn most_caught_up_voter(&self) -> Option<NodeId> {
        self.voter_peers()
            .into_iter()
            .filter_map(|v| self.progress.get(&v).map(|p| (p.match_index, v)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, v)| v)
    }

    /// An operator's membership change, proposed by the leader once it is safe: an entry
    /// of this leader's term is committed (so no change of an earlier leader can still
    /// commit behind this one), and no other change is pending.
    pub(super) fn propose_membership_change(
        &mut self,
        request_id: RequestId,
        change: MembershipChange,
    ) {
        if !self.admit(request_id) {
            return;
        }
        if let Err(error) = self.check_membership_change(&change) {
            return self.reply_err(request_id, ClientError::Membership(error));
        }
        let next = match self.membership().apply(&change) {
            Ok(next) => next,
            // Answered once a quorum confirms this node still leads (see
            // `PendingQuery::MembershipRefusal`); the check above made sure an entry of
            // this term has committed, so the configuration read is the committed one.
            Err(error) => {
                return self.register_read(request_id, PendingQuery::MembershipRefusal(error))
            }
        };
        let timestamp = self.stamp_time();
        let index = self.append_own(EntryPayload::Membership {
            timestamp,
            membership: next,
        });
        let replaced = self.pending_writes.insert(index, (self.term, request_id));
        debug_assert!(replaced.is_none(), "index {index} was proposed twice");
        self.maybe_commit();
    }

    /// The leader's rules for a change, beyond its structure.
    fn check_membership_change(&self, change: &MembershipChange) -> Result<(), MembershipError> {
        if let Some(transfer) = &self.transfer {
            return Err(MembershipError::TransferInProgress(transfer.target));
        }
        if self.log.term_at(self.commit_index) != Some(self.term) {
            return Err(MembershipError::LeaderNotReady);
        }
        if let Some((index, _)) = self.membership_unapplied.last() {
            return Err(MembershipError::ChangeInProgress { index: index.0 });
        }
        match *change {
            // Only a learner's lag matters: promoting a voter is refused as
            // `AlreadyVoter` by the structural rules, however far behind it is, so that
            // an operator retrying a promotion whose answer was lost learns it is done.
            MembershipChange::Promote { id }
                if self.membership().contains(id) && !self.membership().is_voter(id) =>
            {
                let match_index = self
                    .progress
                    .get(&id)
                    .map_or(LogIndex::ZERO, |p| p.match_index);
                let behind_entries = self.log.last_index().0.saturating_sub(match_index.0);
                let bound = self.config.promotion_lag_entries_max;
                if behind_entries > bound {
                    return Err(MembershipError::LearnerLagging {
                        id,
                        behind_entries,
                        bound,
                    });
                }
            }
            MembershipChange::Remove { id } if self.membership().is_voter(id) => {
                let next = self.membership().apply(change)?;
                let reachable = next
                    .voters()
                    .filter(|&v| v == self.config.id || self.heard_recently(v))
                    .count();
                if reachable < next.quorum() {
                    return Err(MembershipError::BelowQuorum {
                        id,
                        reachable,
                        voters: next.voter_count(),
                        quorum: next.quorum(),
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether this leader heard from `peer` within the shortest election timeout.
    fn heard_recently(&self, peer: NodeId) -> bool {
        self.progress
            .get(&peer)
            .and_then(|p| p.last_heard)
            .is_some_and(|heard| {
                self.now.saturating_since_us(heard) < self.config.election_timeout_us_min
            })
    }

    /// The membership entries pending in the log are exactly the log's membership
    /// entries above the applied index, in order. Debug and simulator builds.
    pub(super) fn check_membership_invariants(&self) {
        let mut previous = self.last_applied;
        for (index, membership) in &self.membership_unapplied {
            assert!(*index > previous, "pending memberships out of order");
            previous = *index;
            match self.log.entry(*index).map(|e| &e.payload) {
                Some(EntryPayload::Membership {
                    membership: held, ..
                }) => {
                    assert_eq!(
                        held, membership,
                        "pending membership differs from its entry"
                    )
                }
                _ => panic!("pending membership at {index} is not a membership entry"),
            }
        }
        if let Err(problem) = self.membership().check_well_formed() {
            panic!("{} uses a malformed membership: {problem}", self.config.id);
        }
        let mut above_applied = self.last_applied.next();
        let mut pending = self.membership_unapplied.iter().map(|(index, _)| *index);
        while above_applied <= self.log.last_index() {
            if let Some(EntryPayload::Membership { .. }) =
                self.log.entry(above_applied).map(|e| &e.payload)
            {
                assert_eq!(
                    pending.next(),
                    Some(above_applied),
                    "membership entry {above_applied} is not pending"
                );
            }
            above_applied = above_applied.next();
        }
        if self.role == Role::Leader {
            let own_uncommitted = self
                .membership_unapplied
                .iter()
                .filter(|(index, _)| {
                    *index > self.commit_index && self.log.term_at(*index) == Some(self.term)
                })
                .count();
            assert!(
                own_uncommitted <= 1,
                "a leader proposed a second membership change before the first committed"
            );
        }
    }
}
