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
    /// Bumped whenever the blocked links may have changed.
    generation: u64,
}

impl Network {
    pub fn new(params: NetworkParams, rng: ChaCha8Rng) -> Network {
        Network {
            params,
            rng,
            partitions: BTreeMap::new(),
            blocked: BTreeSet::new(),
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

    pub fn add_partition(&mut self, id: u64, links: Vec<(NodeId, NodeId)>) {
        self.partitions.insert(id, links);
        self.recompute();
    }

    pub fn remove_partition(&mut self, id: u64) {
        self.partitions.remove(&id);
        self.recompute();
    }

    pub fn heal_all(&mut self) {
        self.partitions.clear();
        self.blocked.clear();
        self.generation += 1;
    }

    /// Changes whenever the set of blocked links may have changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn recompute(&mut self) {
        self.blocked = self.partitions.values().flatten().copied().collect();
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
