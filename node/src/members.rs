//! Where each member is reached, and which callers the peer API accepts, as the
//! membership changes at runtime.
//!
//! An address comes from one of three places, most trusted first:
//! - the node itself: every peer call carries its sender's `advertise` address
//!   (`x-chat-peer-addr`), recorded once the call's proof checks out;
//! - the membership in the log: `member add --addr` puts a new node's address there;
//! - this node's configuration (`peers`) or what `--join` discovered: founding members
//!   are in the log without an address (each founder has its own list), so these are
//!   what reaches them.
//!
//! The core thread publishes the configuration in force here after every batch that
//! changed it; the peer senders (`peers::PeerRouter`) and the peer interceptor read it.

use chat_core::membership::{MemberRole, Membership, MEMBERS_MAX, MEMBER_ADDRESS_BYTES_MAX};
use chat_core::NodeId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Addresses learned from callers and from `--join` discovery, at most: a caller must
/// hold the cluster secret to be recorded, and ids beyond this are not worth keeping.
pub const LEARNED_ADDRESSES_MAX: usize = 4 * MEMBERS_MAX;

/// Shared by the core thread (writer of the membership), the peer API (writer of learned
/// addresses) and everyone who needs an address (readers). Cheap to clone.
#[derive(Clone)]
pub struct AddressBook {
    id: NodeId,
    /// The voters of this node's founding entry (entry 1), as "1,2,3", while its log
    /// still holds it: sent on peer calls and compared with the caller's (see
    /// [`AddressBook::founders_conflict`]).
    founders: Option<Arc<str>>,
    inner: Arc<RwLock<Book>>,
    /// Bumped on every change, so that the router re-checks its links only then.
    version: Arc<AtomicU64>,
}

#[derive(Default)]
struct Book {
    configured: BTreeMap<NodeId, String>,
    learned: BTreeMap<NodeId, String>,
    membership: Membership,
}

impl Book {
    fn resolve(&self, id: NodeId) -> Option<String> {
        let from_log = self
            .membership
            .members()
            .get(&id)
            .map(|m| m.address.clone())
            .filter(|a| !a.is_empty());
        self.learned
            .get(&id)
            .cloned()
            .or(from_log)
            .or_else(|| self.configured.get(&id).cloned())
    }
}

impl AddressBook {
    /// This node `id`, reached at `own_address`, with the configured `peers`.
    pub fn new(id: NodeId, own_address: &str, peers: &BTreeMap<u64, String>) -> AddressBook {
        let mut configured: BTreeMap<NodeId, String> = peers
            .iter()
            .map(|(&id, address)| (NodeId(id), address.clone()))
            .collect();
        configured.insert(id, own_address.to_owned());
        AddressBook {
            id,
            founders: None,
            inner: Arc::new(RwLock::new(Book {
                configured,
                ..Book::default()
            })),
            version: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Records the voters of this node's founding entry (call before cloning the book).
    pub fn with_founders(mut self, voters: Option<Vec<NodeId>>) -> AddressBook {
        self.founders = voters.map(|voters| {
            let ids: Vec<String> = voters.iter().map(|id| id.0.to_string()).collect();
            Arc::from(ids.join(","))
        });
        self
    }

    pub fn founders(&self) -> Option<&str> {
        self.founders.as_deref()
    }

    /// Founders given different member lists write different entries 1 at the same
    /// term, which Raft's log matching cannot see: a caller whose founding voters differ
    /// from ours is refused, with why. Nodes whose logs no longer hold entry 1 (it was
    /// compacted) or never founded (joiners) send nothing and are not compared.
    pub fn founders_conflict(&self, theirs: Option<&str>) -> Option<String> {
        match (self.founders.as_deref(), theirs) {
            (Some(ours), Some(theirs)) if ours != theirs => Some(format!(
                "founding member lists differ: this node was founded with {ours}, \
                 the caller with {theirs}; every founder must be given the same --peers"
            )),
            _ => None,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Book> {
        // A writer that panicked left a whole map behind: still usable.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Book> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// The configuration in force changed (called by the core thread).
    pub fn set_membership(&self, membership: &Membership) {
        self.write().membership = membership.clone();
        self.bump();
    }

    pub fn membership(&self) -> Membership {
        self.read().membership.clone()
    }

    /// Where `id` is reached, if anyone said.
    pub fn resolve(&self, id: NodeId) -> Option<String> {
        self.read().resolve(id)
    }

    /// A proven peer (or `--join` discovery) says `id` is at `address`. Ignored when the
    /// address is not a plausible HOST:PORT or the bound is reached for a new id.
    pub fn learn(&self, id: NodeId, address: &str) {
        if address.is_empty()
            || address.len() > MEMBER_ADDRESS_BYTES_MAX
            || !address.bytes().all(|b| b.is_ascii_graphic())
        {
            return;
        }
        let mut book = self.write();
        if book.learned.get(&id).is_some_and(|known| known == address) {
            return;
        }
        if !book.learned.contains_key(&id) && book.learned.len() >= LEARNED_ADDRESSES_MAX {
            return;
        }
        book.learned.insert(id, address.to_owned());
        drop(book);
        self.bump();
    }

    /// Whether a caller proven to hold the secret under `id` may deliver Raft messages:
    /// a member of the configuration in force; a removed node (so that it can be told
    /// it was removed); anyone while this node is not a member yet (it is joining and
    /// does not know the leader's id); and a configured peer while the log is empty.
    pub fn accepts(&self, id: NodeId) -> bool {
        let book = self.read();
        let membership = &book.membership;
        membership.contains(id)
            || membership.is_removed(id)
            || !membership.contains(self.id)
            || (membership.is_empty() && book.configured.contains_key(&id))
    }

    /// Every member of the configuration in force other than this node, with its
    /// address if known.
    pub fn peers(&self) -> Vec<(NodeId, Option<String>)> {
        let book = self.read();
        book.membership
            .members()
            .keys()
            .filter(|&&id| id != self.id)
            .map(|&id| (id, book.resolve(id)))
            .collect()
    }

    /// Members of the configuration in force with their roles and resolved addresses
    /// (empty address: unknown here). Before this node has any membership (it is
    /// joining), what it was configured with.
    pub fn members(&self) -> Vec<(NodeId, MemberRole, String)> {
        let book = self.read();
        book.membership
            .members()
            .iter()
            .map(|(&id, m)| (id, m.role, book.resolve(id).unwrap_or_default()))
            .collect()
    }

    /// Id to address for every member whose address is known (leader hints, `Status`).
    pub fn map(&self) -> BTreeMap<u64, String> {
        let book = self.read();
        let ids: Vec<NodeId> = if book.membership.is_empty() {
            book.configured.keys().copied().collect()
        } else {
            book.membership.members().keys().copied().collect()
        };
        ids.into_iter()
            .filter_map(|id| book.resolve(id).map(|a| (id.0, a)))
            .collect()
    }

    /// Whether some member other than this node has no known address (a node that
    /// joined asks its `--join` addresses until none is missing).
    pub fn missing_addresses(&self) -> bool {
        let book = self.read();
        book.membership.is_empty()
            || book
                .membership
                .members()
                .keys()
                .any(|&id| id != self.id && book.resolve(id).is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::membership::MembershipChange;

    #[test]
    fn addresses_resolve_learned_then_log_then_configured() {
        let peers = BTreeMap::from([(2, "conf:2".to_owned()), (3, "conf:3".to_owned())]);
        let book = AddressBook::new(NodeId(1), "me:1", &peers);
        let founding = Membership::founding(&[NodeId(1), NodeId(2), NodeId(3)]);
        let membership = founding
            .apply(&MembershipChange::AddLearner {
                id: NodeId(4),
                address: "log:4".into(),
            })
            .expect("new id");
        book.set_membership(&membership);
        assert_eq!(book.resolve(NodeId(2)).as_deref(), Some("conf:2"));
        assert_eq!(book.resolve(NodeId(4)).as_deref(), Some("log:4"));
        book.learn(NodeId(2), "moved:2");
        assert_eq!(book.resolve(NodeId(2)).as_deref(), Some("moved:2"));
        book.learn(NodeId(3), "bad address");
        assert_eq!(book.resolve(NodeId(3)).as_deref(), Some("conf:3"));
        assert_eq!(book.peers().len(), 3);
        assert!(book.accepts(NodeId(4)));
        assert!(!book.accepts(NodeId(9)), "a stranger to a member");
        assert!(!book.missing_addresses());
    }

    #[test]
    fn founders_given_different_lists_are_told_apart() {
        let book = AddressBook::new(NodeId(1), "me:1", &BTreeMap::new()).with_founders(Some(vec![
            NodeId(1),
            NodeId(2),
            NodeId(3),
        ]));
        assert_eq!(book.founders(), Some("1,2,3"));
        assert_eq!(book.founders_conflict(Some("1,2,3")), None);
        assert_eq!(
            book.founders_conflict(None),
            None,
            "a joiner or a compacted log"
        );
        let conflict = book.founders_conflict(Some("1,2,3,4")).expect("differ");
        assert!(conflict.contains("founded with 1,2,3, the caller with 1,2,3,4"));
    }

    #[test]
    fn a_joining_node_accepts_any_proven_caller() {
        let book = AddressBook::new(NodeId(6), "me:6", &BTreeMap::new());
        assert!(book.accepts(NodeId(1)));
        assert!(book.missing_addresses());
        for id in 0..(LEARNED_ADDRESSES_MAX as u64 + 10) {
            book.learn(NodeId(100 + id), &format!("h:{id}"));
        }
        assert_eq!(book.read().learned.len(), LEARNED_ADDRESSES_MAX);
    }
}
