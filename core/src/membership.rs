//! Cluster membership: who votes, who only follows (learners), and which ids are gone for
//! good. A `Membership` is part of the replicated state: every change is an entry of the
//! log that carries the whole resulting membership, and a replica uses the latest one in
//! its log, committed or not (Raft thesis §4.1), as the configuration in force.
//!
//! Changes are one server at a time (see ARCHITECTURE.md, "Membership"): any two
//! majorities of configurations that differ by one voter overlap, so no two
//! configurations can each elect a leader in one term, provided one change is in flight
//! at a time and a leader commits an entry of its own term before it proposes one (the
//! fix for the single-server change bug found in 2015). This module holds the pure,
//! structural rules of a change; the leader's rules that need its view of the cluster
//! (in flight, catch-up lag, reachable quorum) are in `consensus::membership`.

use crate::types::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Members of one cluster, voters and learners together. Bounded so that a membership
/// entry, and the fan-out of every leader, stay small.
pub const MEMBERS_MAX: usize = 16;
/// A member's address is an opaque string to the core (the node reads it as host:port).
pub const MEMBER_ADDRESS_BYTES_MAX: usize = 256;
/// Ids removed from the cluster are remembered so that none is ever reused; this bounds
/// how many a cluster remembers (about 16 bytes each).
pub const REMOVED_IDS_MAX: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberRole {
    /// Counts toward quorums and may become leader.
    Voter,
    /// Receives the log but neither votes nor counts toward any quorum.
    Learner,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub role: MemberRole,
    /// Where peers and clients reach it; empty for founding members, whose addresses come
    /// from each node's own configuration.
    pub address: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    members: BTreeMap<NodeId, Member>,
    /// Every id ever removed: a removed id never becomes a member again, so a node that
    /// hears it was removed knows it for good.
    removed: BTreeSet<NodeId>,
}

/// One change an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A new node joins as a learner and catches up without affecting any quorum.
    AddLearner { id: NodeId, address: String },
    /// A learner that has caught up becomes a voter.
    Promote { id: NodeId },
    /// A voter or learner leaves for good (the leader included).
    Remove { id: NodeId },
}

impl MembershipChange {
    pub fn id(&self) -> NodeId {
        match self {
            MembershipChange::AddLearner { id, .. }
            | MembershipChange::Promote { id }
            | MembershipChange::Remove { id } => *id,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MembershipError {
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    #[error("node {0} was removed from this cluster; a replacement needs a new id")]
    IdRemoved(NodeId),
    #[error("address {address} is already used by node {id}")]
    DuplicateAddress { address: String, id: NodeId },
    #[error("node {0} is not a member")]
    UnknownMember(NodeId),
    #[error("node {0} is already a voter")]
    AlreadyVoter(NodeId),
    #[error("node {0} is the last voter; add and promote another first")]
    LastVoter(NodeId),
    #[error("a cluster holds at most {max} members")]
    TooManyMembers { max: usize },
    #[error("node id 0 is reserved")]
    ReservedId,
    #[error("invalid address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error("the cluster remembers at most {max} removed ids")]
    TooManyRemoved { max: usize },
    #[error(
        "learner {id} is {behind_entries} entries behind the leader; promotion needs at most {bound}"
    )]
    LearnerLagging {
        id: NodeId,
        behind_entries: u64,
        bound: u64,
    },
    #[error(
        "removing node {id} would leave {reachable} reachable of {voters} voters, below a quorum of {quorum}"
    )]
    BelowQuorum {
        id: NodeId,
        reachable: usize,
        voters: usize,
        quorum: usize,
    },
    #[error("membership change at log index {index} is still in progress; retry once it commits")]
    ChangeInProgress { index: u64 },
    #[error("the leader has not committed an entry of its term yet; retry shortly")]
    LeaderNotReady,
    #[error("leadership is being transferred to node {0}; retry at the new leader")]
    TransferInProgress(NodeId),
}

impl Membership {
    /// The founding configuration: every listed node a voter, addresses unknown.
    pub fn founding(voters: &[NodeId]) -> Membership {
        Membership {
            members: voters
                .iter()
                .map(|&id| {
                    let member = Member {
                        role: MemberRole::Voter,
                        address: String::new(),
                    };
                    (id, member)
                })
                .collect(),
            removed: BTreeSet::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }
    pub fn removed(&self) -> &BTreeSet<NodeId> {
        &self.removed
    }
    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.members
            .get(&id)
            .is_some_and(|m| m.role == MemberRole::Voter)
    }
    pub fn is_removed(&self, id: NodeId) -> bool {
        self.removed.contains(&id)
    }
    /// Voters in ascending id order.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.role == MemberRole::Voter)
            .map(|(&id, _)| id)
    }
    pub fn voter_count(&self) -> usize {
        self.voters().count()
    }
    /// Votes or acknowledgements a decision needs: a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voter_count() / 2 + 1
    }
    /// Whether the voters among `ids` form a majority of the voters.
    pub fn is_quorum<'a>(&self, ids: impl IntoIterator<Item = &'a NodeId>) -> bool {
        let voters = ids.into_iter().filter(|&&id| self.is_voter(id)).count();
        self.voter_count() > 0 && voters >= self.quorum()
    }

    /// The membership after `change`, or why the change is refused on structure alone
    /// (the leader adds the rules that need its view of the cluster).
    pub fn apply(&self, change: &MembershipChange) -> Result<Membership, MembershipError> {
        let mut next = self.clone();
        match change {
            MembershipChange::AddLearner { id, address } => {
                if *id == NodeId(0) {
                    return Err(MembershipError::ReservedId);
                }
                if self.contains(*id) {
                    return Err(MembershipError::AlreadyMember(*id));
                }
                if self.is_removed(*id) {
                    return Err(MembershipError::IdRemoved(*id));
                }
                check_address(address)?;
                if let Some((&other, _)) = self.members.iter().find(|(_, m)| m.address == *address)
                {
                    return Err(MembershipError::DuplicateAddress {
                        address: address.clone(),
                        id: other,
                    });
                }
                if self.members.len() >= MEMBERS_MAX {
                    return Err(MembershipError::TooManyMembers { max: MEMBERS_MAX });
                }
                next.members.insert(
                    *id,
                    Member {
                        role: MemberRole::Learner,
                        address: address.clone(),
                    },
                );
            }
            MembershipChange::Promote { id } => {
                let Some(member) = next.members.get_mut(id) else {
                    return Err(self.unknown(*id));
                };
                if member.role == MemberRole::Voter {
                    return Err(MembershipError::AlreadyVoter(*id));
                }
                member.role = MemberRole::Voter;
            }
            MembershipChange::Remove { id } => {
                if !self.contains(*id) {
                    return Err(self.unknown(*id));
                }
                if self.is_voter(*id) && self.voter_count() == 1 {
                    return Err(MembershipError::LastVoter(*id));
                }
                if self.removed.len() >= REMOVED_IDS_MAX {
                    return Err(MembershipError::TooManyRemoved {
                        max: REMOVED_IDS_MAX,
                    });
                }
                next.members.remove(id);
                next.removed.insert(*id);
            }
        }
        Ok(next)
    }

    fn unknown(&self, id: NodeId) -> MembershipError {
        if self.is_removed(id) {
            MembershipError::IdRemoved(id)
        } else {
            MembershipError::UnknownMember(id)
        }
    }

    /// What any membership, from whatever log, must satisfy to be used.
    pub fn check_well_formed(&self) -> Result<(), String> {
        if self.members.len() > MEMBERS_MAX {
            return Err(format!("{} members", self.members.len()));
        }
        if let Some(id) = self.members.keys().find(|id| self.removed.contains(id)) {
            return Err(format!("{id} is both a member and removed"));
        }
        if self.members.contains_key(&NodeId(0)) {
            return Err("member id 0".to_owned());
        }
        Ok(())
    }
}

fn check_address(address: &str) -> Result<(), MembershipError> {
    let invalid = |reason: &str| {
        Err(MembershipError::InvalidAddress {
            address: address.chars().take(64).collect(),
            reason: reason.to_owned(),
        })
    };
    if address.is_empty() {
        return invalid("empty");
    }
    if address.len() > MEMBER_ADDRESS_BYTES_MAX {
        return invalid("longer than 256 bytes");
    }
    if !address.bytes().all(|b| b.is_ascii_graphic()) {
        return invalid("only printable ASCII without spaces");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(id: u64, address: &str) -> MembershipChange {
        MembershipChange::AddLearner {
            id: NodeId(id),
            address: address.to_owned(),
        }
    }

    #[test]
    fn changes_follow_the_structural_rules() {
        let founding = Membership::founding(&[NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(founding.quorum(), 2);
        let with_learner = founding.apply(&add(4, "h:4")).expect("new id");
        assert!(!with_learner.is_voter(NodeId(4)) && with_learner.contains(NodeId(4)));
        assert_eq!(
            with_learner.quorum(),
            2,
            "a learner counts toward no quorum"
        );
        assert_eq!(
            with_learner.apply(&add(5, "h:4")),
            Err(MembershipError::DuplicateAddress {
                address: "h:4".into(),
                id: NodeId(4)
            })
        );
        assert_eq!(
            with_learner.apply(&add(4, "h:5")),
            Err(MembershipError::AlreadyMember(NodeId(4)))
        );
        let promoted = with_learner
            .apply(&MembershipChange::Promote { id: NodeId(4) })
            .expect("learner");
        assert_eq!(promoted.quorum(), 3);
        let removed = promoted
            .apply(&MembershipChange::Remove { id: NodeId(1) })
            .expect("member");
        assert!(removed.is_removed(NodeId(1)));
        assert_eq!(
            removed.apply(&add(1, "h:1")),
            Err(MembershipError::IdRemoved(NodeId(1)))
        );
        assert_eq!(
            removed.apply(&MembershipChange::Remove { id: NodeId(1) }),
            Err(MembershipError::IdRemoved(NodeId(1)))
        );
        let single = Membership::founding(&[NodeId(7)]);
        assert_eq!(
            single.apply(&MembershipChange::Remove { id: NodeId(7) }),
            Err(MembershipError::LastVoter(NodeId(7)))
        );
        assert!(matches!(
            single.apply(&add(8, "bad address")),
            Err(MembershipError::InvalidAddress { .. })
        ));
        assert_eq!(
            single.apply(&add(0, "h:0")),
            Err(MembershipError::ReservedId)
        );
    }

    #[test]
    fn quorums_count_voters_only() {
        let membership = Membership::founding(&[NodeId(1), NodeId(2), NodeId(3)])
            .apply(&add(4, "h:4"))
            .expect("new id");
        assert!(!membership.is_quorum(&[NodeId(1), NodeId(4)]));
        assert!(membership.is_quorum(&[NodeId(1), NodeId(3)]));
        assert!(!Membership::default().is_quorum(&[NodeId(1)]));
    }
}
