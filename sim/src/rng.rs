//! One seed, split into independent streams, so that changing what one part of the
//! simulation draws (say, shrinking the workload) does not reshuffle the others.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Faults = 1,
    Workload = 2,
    Network = 3,
    Disk = 4,
    Replicas = 5,
    Clients = 6,
    /// Faults decided while running (quick restarts).
    Chaos = 7,
    /// The coverage-guided search's choices (which entry to mutate, and how).
    Explore = 8,
    /// The `chatsim elections` experiment (not part of a scenario run).
    Elections = 9,
    /// Misbehaving clients (`client-abuse`): drawn only when the kind is allowed, so
    /// that scenarios without it are unchanged.
    Abuse = 10,
    /// The targeted nemeses (which are on, and their schedule), drawn after the rest.
    Nemeses = 11,
    /// How long a replica's own snapshot takes to become durable (derived, not drawn, so
    /// that no other stream moves).
    SnapshotSaves = 12,
    /// Cluster size and the operator's membership changes (`membership`): drawn only
    /// when the kind is allowed, after everything else.
    Membership = 13,
    /// The leader-churn nemesis (`leader-churn`): drawn only when the kind is allowed,
    /// after everything else.
    Churn = 14,
}

/// A portable generator (ChaCha8: the same numbers on every machine and build) for one
/// stream of one seed.
pub fn stream(seed: u64, stream: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream as u64);
    rng
}

/// A seed for something numbered within a stream (a replica's election jitter, say).
pub fn derive_seed(seed: u64, stream: Stream, index: u64) -> u64 {
    // SplitMix64 finalizer: spreads nearby inputs over the whole range.
    let mut z = seed ^ ((stream as u64) << 56) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
