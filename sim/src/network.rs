//! The simulated network: per-message latency, loss, duplication and long delays (which
//! reorder), and partitions as sets of blocked directed links.

use crate::scenario::NetworkParams;
use chat_core::NodeId;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};

pub struct Network {
    pub params: NetworkParams,
    rng: ChaCha8Rng,
    /// Active partitions by id; a link is down while any partition blocks it.
    partitions: BTreeMap<u64, Vec<(NodeId, NodeId)>>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Client links cut, by partition id: the clients (one endpoint, all of them) can
    /// neither reach these nodes nor hear their replies.
    client_cuts: BTreeMap<u64, Vec<NodeId>>,
    clients_cut: BTreeSet<NodeId>,
    /// Nodes that refuse the clients' connections, by partition id: a request sent there
    /// fails after a round trip (the client learns it at once, unlike a silent cut) and
    /// replies to the clients are lost (the stale-read window, `world/stale_reads.rs`).
    client_refusals: BTreeMap<u64, NodeId>,
    /// A summary of `blocked` for the coverage abstraction, kept up to date with it so
    /// that observing the network after every event costs nothing.
    shape: LinkSummary,
    /// Bumped whenever the blocked links may have changed.
    generation: u64,
}

/// What the blocked links look like, independent of node names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkSummary {
    /// Some link is blocked one way only.
    pub one_way: bool,
    /// Per node (index = node id), the peers it cannot reach nor hear from.
    pub cut_both_ways: [u8; 16],
}

impl Network {
    pub fn new(params: NetworkParams, rng: ChaCha8Rng) -> Network {
        Network {
            params,
            rng,
            partitions: BTreeMap::new(),
            blocked: BTreeSet::new(),
            client_cuts: BTreeMap::new(),
            clients_cut: BTreeSet::new(),
            client_refusals: BTreeMap::new(),
            shape: LinkSummary::default(),
            generation: 0,
        }
    }

    /// The delays after which copies of one message arrive: none if it is lost, two if
    /// it is duplicated.
    pub fn transit_delays_us(&mut self) -> Vec<u64> {
        let params = &self.params;
        if params.drop_per_mille > 0 && self.rng.random_range(0..1000) < params.drop_per_mille {
            return Vec::new();
        }
        let copies = if params.duplicate_per_mille > 0
            && self.rng.random_range(0..1000) < params.duplicate_per_mille
        {
            2
        } else {
            1
        };
        (0..copies).map(|_| self.latency_us()).collect()
    }

    /// Latency of a message that is not lost (client links use this too).
    pub fn latency_us(&mut self) -> u64 {
        let params = &self.params;
        let mut latency = self
            .rng
            .random_range(params.latency_us_min..=params.latency_us_max);
        if params.delay_per_mille > 0 && self.rng.random_range(0..1000) < params.delay_per_mille {
            latency += self.rng.random_range(0..=params.delay_us_max);
        }
        latency
    }

    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to))
    }

    /// Whether the link between the clients and `node` is down.
    pub fn is_client_blocked(&self, node: NodeId) -> bool {
        !self.clients_cut.is_empty() && self.clients_cut.contains(&node)
    }

    /// Cuts the clients off from `nodes` until `remove_partition(id)`.
    pub fn add_client_cut(&mut self, id: u64, nodes: Vec<NodeId>) {
        self.client_cuts.insert(id, nodes);
        self.clients_cut = self.client_cuts.values().flatten().copied().collect();
    }

    /// Whether `node` refuses the clients' connections.
    pub fn is_client_refused(&self, node: NodeId) -> bool {
        !self.client_refusals.is_empty() && self.client_refusals.values().any(|&n| n == node)
    }

    /// Makes `node` refuse the clients' connections until `remove_partition(id)`.
    pub fn refuse_clients(&mut self, id: u64, node: NodeId) {
        self.client_refusals.insert(id, node);
    }

    pub fn add_partition(&mut self, id: u64, links: Vec<(NodeId, NodeId)>) {
        self.partitions.insert(id, links);
        self.recompute();
    }

    pub fn remove_partition(&mut self, id: u64) {
        if self.client_cuts.remove(&id).is_some() {
            self.clients_cut = self.client_cuts.values().flatten().copied().collect();
        }
        self.client_refusals.remove(&id);
        self.partitions.remove(&id);
        self.recompute();
    }

    pub fn heal_all(&mut self) {
        self.partitions.clear();
        self.blocked.clear();
        self.client_cuts.clear();
        self.clients_cut.clear();
        self.client_refusals.clear();
        self.shape = LinkSummary::default();
        self.generation += 1;
    }

    /// Whether any link is down.
    pub fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }

    pub fn link_summary(&self) -> &LinkSummary {
        &self.shape
    }

    /// Changes whenever the set of blocked links may have changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn recompute(&mut self) {
        self.blocked = self.partitions.values().flatten().copied().collect();
        let mut shape = LinkSummary::default();
        for &(a, b) in &self.blocked {
            if self.blocked.contains(&(b, a)) {
                if let Some(count) = shape.cut_both_ways.get_mut(a.0 as usize) {
                    *count += 1;
                }
            } else {
                shape.one_way = true;
            }
        }
        self.shape = shape;
        self.generation += 1;
    }

    /// Stops injecting network faults: no more loss, duplication or long delays.
    pub fn calm(&mut self) {
        self.params.drop_per_mille = 0;
        self.params.duplicate_per_mille = 0;
        self.params.delay_per_mille = 0;
        self.heal_all();
    }
}
