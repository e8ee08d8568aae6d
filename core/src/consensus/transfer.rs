//! Leadership transfer (Raft thesis §3.10): the leader stops taking writes, brings a
//! voter's log up to its own, and tells it to campaign at once (`TimeoutNow`); the voter's
//! vote requests carry a flag that lets voters answer them despite check-quorum's lease.
//! A graceful shutdown of a leader uses it so that a rolling restart costs no election
//! timeout.

use super::message::Message;
use super::replica::{Replica, Role};
use crate::types::{NodeId, Time};

/// A transfer in progress: the leader refuses writes until `deadline`, then gives up and
/// serves again if it is still leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Transfer {
    pub target: NodeId,
    pub deadline: Time,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("not the leader{}", match .leader_hint { Some(id) => format!("; the leader is {id}"), None => String::new() })]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("node {0} is not a voter of this cluster")]
    NotAVoter(NodeId),
    #[error("node {0} leads already")]
    AlreadyLeader(NodeId),
    #[error("no other voter to transfer leadership to")]
    NoOtherVoter,
}

impl Replica {
    /// Starts handing leadership to `target`, or to the voter whose log is most up to
    /// date. Returns the chosen voter; watch [`Replica::leader_id`] for the outcome. The
    /// leader refuses writes meanwhile (`NotLeader` with the target as hint) for at most
    /// the shortest election timeout.
    pub fn transfer_leadership(
        &mut self,
        now: Time,
        target: Option<NodeId>,
    ) -> Result<NodeId, TransferError> {
        self.advance_clock(now);
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader_hint: self.leader_id,
            });
        }
        let target = match target {
            Some(id) if id == self.config.id => return Err(TransferError::AlreadyLeader(id)),
            Some(id) if !self.membership().is_voter(id) => {
                return Err(TransferError::NotAVoter(id))
            }
            Some(id) => id,
            None => self
                .most_caught_up_voter()
                .ok_or(TransferError::NoOtherVoter)?,
        };
        self.transfer = Some(Transfer {
            target,
            deadline: now.saturating_add_us(self.config.election_timeout_us_min),
        });
        self.metrics.leadership_transfers += 1;
        self.continue_transfer();
        self.check_invariants();
        Ok(target)
    }

    /// Sends `TimeoutNow` once the target holds the whole log; until then keeps
    /// replicating to it. Called when a transfer starts and on each acknowledgement.
    pub(super) fn continue_transfer(&mut self) {
        let Some(transfer) = &self.transfer else {
            return;
        };
        let target = transfer.target;
        let caught_up = self
            .progress
            .get(&target)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send_timeout_now(target);
        } else {
            self.send_append_entries(target);
        }
    }

    pub(super) fn send_timeout_now(&mut self, to: NodeId) {
        let term = self.term;
        self.send(to, Message::TimeoutNow { term });
    }

    /// A transfer that did not end in a new leader by its deadline is abandoned.
    pub(super) fn expire_transfer(&mut self) {
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| self.now >= t.deadline)
        {
            self.transfer = None;
        }
    }

    /// Our leader asks us to campaign now. Only a voter of the configuration in force
    /// does, and only for the leader it follows in this term.
    pub(super) fn handle_timeout_now(&mut self, from: NodeId) {
        if self.role != Role::Follower || self.leader_id != Some(from) || !self.is_voter() {
            return self.reject();
        }
        self.become_candidate(true);
    }
}
