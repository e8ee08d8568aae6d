//! State-space coverage: an abstraction of the cluster state that matters to Raft and to
//! the chat service, observed after every event, and the sets of distinct abstract states
//! and transitions a run (or a sweep, or a search) reached.
//!
//! The abstraction is per node a small tuple (status, role, term and log relative to the
//! others, commit and apply lag, pending reads, session table pressure, disk) plus the
//! shape of the network partition. The node tuples are sorted before hashing, so renaming
//! nodes does not make a new state. A state is a u64 hash; sets are `BTreeSet`s, so every
//! count and every listing is deterministic.

use crate::network::Network;
use crate::node::SimNode;
use chat_core::entry::EntryPayload;
use chat_core::{LogIndex, Replica, Role, Time};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The components of a node's abstract state, each with its value names, in field order.
/// The last value of a component named "none" means "not applicable" (a down node has no
/// role).
pub const COMPONENTS: [(&str, &[&str]); 12] = [
    ("status", &["up", "paused", "down", "refused"]),
    (
        "role",
        &["follower", "pre-candidate", "candidate", "leader", "none"],
    ),
    ("term", &["max", "max-1", "older", "none"]),
    (
        "log",
        &["no-leader", "equal", "behind", "ahead", "divergent", "none"],
    ),
    ("commit-lag", &["0", "1-10", "11-100", ">100", "none"]),
    ("apply-lag", &["0", "1-10", ">10", "none"]),
    ("reads", &["0", "1-3", "4+", "none"]),
    (
        "sessions",
        &["0%", "<25%", "<50%", "<75%", "<100%", "full", "none"],
    ),
    (
        "disk",
        &[
            "clean",
            "torn-write-armed",
            "recovery-crash-armed",
            "corrupt",
        ],
    ),
    (
        "partition",
        &[
            "none",
            "one-way",
            "leader-isolated",
            "minority-isolated",
            "majority-isolated",
            "split",
        ],
    ),
    // Membership (issue 11). Founding-only runs are all "voter" and "settled".
    (
        "member",
        &[
            "voter",
            "learner",
            "learner-lagging",
            "removed",
            "joining",
            "none",
        ],
    ),
    ("change", &["settled", "pending", "none"]),
];
const STATUS: usize = 0;
const DISK: usize = 8;
const PARTITION: usize = 9;
/// Bits per component in a packed node code.
const FIELD_BITS: u32 = 4;
const NODES_MAX: usize = 16;

/// One node's abstract state, packed: component `i` in bits `4i..4i+4`. The partition
/// component is not part of a node's own code (it is the cluster's); it is added for the
/// per-node value sets only.
pub type NodeCode = u64;

pub fn field(code: NodeCode, component: usize) -> usize {
    ((code >> (FIELD_BITS * component as u32)) & 0xf) as usize
}

fn pack(fields: &[u8]) -> NodeCode {
    fields.iter().enumerate().fold(0, |code, (i, &v)| {
        code | (u64::from(v) << (FIELD_BITS * i as u32))
    })
}

fn is_none(component: usize, value: usize) -> bool {
    COMPONENTS[component].1.get(value) == Some(&"none")
}

/// A readable abstract state (kept only where a report needs it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbstractState {
    /// Sorted node codes.
    pub nodes: Vec<NodeCode>,
    pub partition: u8,
}

impl fmt::Display for AbstractState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partition={}",
            COMPONENTS[PARTITION].1[self.partition as usize]
        )?;
        let mut i = 0;
        while i < self.nodes.len() {
            let code = self.nodes[i];
            let count = self.nodes[i..].iter().take_while(|&&c| c == code).count();
            write!(f, "; {count}x {}", describe_node(code))?;
            i += count;
        }
        Ok(())
    }
}

/// A node code in words, leaving out components that do not apply.
pub fn describe_node(code: NodeCode) -> String {
    let mut words = Vec::new();
    for (component, (name, values)) in COMPONENTS.iter().enumerate() {
        if component == PARTITION {
            continue;
        }
        let value = field(code, component);
        if is_none(component, value) {
            continue;
        }
        let text = values.get(value).copied().unwrap_or("?");
        words.push(if component <= 1 {
            text.to_string()
        } else {
            format!("{name}={text}")
        });
    }
    words.join(" ")
}

/// Distinct abstract states and transitions reached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    pub states: BTreeSet<u64>,
    /// Pairs (state before, state after) of consecutive distinct states, hashed.
    pub transitions: BTreeSet<u64>,
    /// Every node code seen, with the partition component filled in: what the
    /// never-seen report enumerates against.
    pub node_values: BTreeSet<NodeCode>,
    /// Readable forms of the states, kept only when asked for (`chatsim coverage`):
    /// see [`Observer::keep_examples`].
    pub examples: BTreeMap<u64, AbstractState>,
}

impl Coverage {
    pub fn merge(&mut self, other: &Coverage) {
        self.states.extend(other.states.iter().copied());
        self.transitions.extend(other.transitions.iter().copied());
        self.node_values.extend(other.node_values.iter().copied());
        for (hash, example) in &other.examples {
            self.examples
                .entry(*hash)
                .or_insert_with(|| example.clone());
        }
    }

    /// How many of `self`'s states and transitions `seen` does not hold.
    pub fn novelty_against(&self, seen: &Coverage) -> (usize, usize) {
        let states = self.states.difference(&seen.states).count();
        let transitions = self.transitions.difference(&seen.transitions).count();
        (states, transitions)
    }

    /// Pairs of component values (of up or paused nodes, plus disk and partition for
    /// every node) that no observed node ever combined, in words.
    pub fn never_seen_pairs(&self) -> Vec<String> {
        let mut seen: BTreeSet<(usize, usize, usize, usize)> = BTreeSet::new();
        for &code in &self.node_values {
            for a in 0..COMPONENTS.len() {
                for b in a + 1..COMPONENTS.len() {
                    seen.insert((a, field(code, a), b, field(code, b)));
                }
            }
        }
        let mut missing = Vec::new();
        for (a, (name_a, values_a)) in COMPONENTS.iter().enumerate() {
            for (b, (name_b, values_b)) in COMPONENTS.iter().enumerate().skip(a + 1) {
                for (va, value_a) in values_a.iter().enumerate() {
                    for (vb, value_b) in values_b.iter().enumerate() {
                        if is_none(a, va) || is_none(b, vb) || seen.contains(&(a, va, b, vb)) {
                            continue;
                        }
                        // A down or refused node has only a disk and a partition.
                        if a == STATUS && va >= 2 && !(DISK..=PARTITION).contains(&b) {
                            continue;
                        }
                        missing.push(format!("{name_a}={value_a} with {name_b}={value_b}"));
                    }
                }
            }
        }
        missing
    }
}

/// A sweep's coverage: the union, and the states few seeds reached.
#[derive(Clone, Debug, Default)]
pub struct CoverageReport {
    pub total: Coverage,
    /// States reached by at most `rare_seeds_max` seeds, rarest first: (a seed that
    /// reached it, its readable form if the runs kept examples).
    pub rare: Vec<(u64, AbstractState)>,
}

impl CoverageReport {
    pub fn new(outcomes: &[crate::world::RunOutcome], rare_seeds_max: usize) -> CoverageReport {
        let mut total = Coverage::default();
        let mut seeds_per_state: BTreeMap<u64, (usize, u64)> = BTreeMap::new();
        for outcome in outcomes {
            total.merge(&outcome.coverage);
            for &state in &outcome.coverage.states {
                seeds_per_state.entry(state).or_insert((0, outcome.seed)).0 += 1;
            }
        }
        let mut rare: Vec<(usize, u64, u64)> = seeds_per_state
            .iter()
            .filter(|(_, (count, _))| *count <= rare_seeds_max)
            .map(|(&state, &(count, seed))| (count, seed, state))
            .collect();
        rare.sort_unstable();
        let rare = rare
            .into_iter()
            .filter_map(|(_, seed, state)| Some((seed, total.examples.get(&state)?.clone())))
            .collect();
        CoverageReport { total, rare }
    }
}

/// Watches a run: computes the abstract state after every event and records what is new.
#[derive(Debug, Default)]
pub struct Observer {
    coverage: Coverage,
    last: Option<u64>,
    keep_examples: bool,
}

impl Observer {
    pub fn new() -> Observer {
        Observer::default()
    }

    /// Also keep a readable form of every state (for `chatsim coverage`).
    pub fn keep_examples(&mut self) {
        self.keep_examples = true;
    }

    pub fn observe(&mut self, nodes: &[SimNode], network: &Network, now: Time) {
        let (codes, count, partition) = abstract_state(nodes, network, now);
        let codes = &mut { codes }[..count];
        codes.sort_unstable();
        let hash = hash_state(codes, partition);
        if self.last == Some(hash) {
            return;
        }
        if let Some(last) = self.last {
            self.coverage.transitions.insert(mix(last ^ mix(hash)));
        }
        self.last = Some(hash);
        if self.coverage.states.insert(hash) {
            let with_partition = u64::from(partition) << (FIELD_BITS * PARTITION as u32);
            for &code in codes.iter() {
                self.coverage.node_values.insert(code | with_partition);
            }
            if self.keep_examples {
                self.coverage.examples.insert(
                    hash,
                    AbstractState {
                        nodes: codes.to_vec(),
                        partition,
                    },
                );
            }
        }
    }

    pub fn finish(self) -> Coverage {
        self.coverage
    }
}

/// The hash of the abstract state of `nodes` and `network` at `now`: what a run's
/// [`Coverage::states`] holds.
pub fn state_hash(nodes: &[SimNode], network: &Network, now: Time) -> u64 {
    let (mut codes, count, partition) = abstract_state(nodes, network, now);
    let codes = &mut codes[..count];
    codes.sort_unstable();
    hash_state(codes, partition)
}

/// The abstract state: node codes (unsorted, `count` of them) and the partition shape.
pub fn abstract_state(
    nodes: &[SimNode],
    network: &Network,
    now: Time,
) -> ([NodeCode; NODES_MAX], usize, u8) {
    let mut term_max = 0;
    let mut commit_max = 0;
    let mut leader: Option<&Replica> = None;
    for replica in nodes.iter().filter_map(|n| n.replica.as_ref()) {
        term_max = term_max.max(replica.term().0);
        commit_max = commit_max.max(replica.commit_index().0);
        if replica.role() == Role::Leader && leader.is_none_or(|l| l.term() < replica.term()) {
            leader = Some(replica);
        }
    }
    let partition = partition_shape(nodes.len(), network, leader);
    let mut codes = [0; NODES_MAX];
    // Nodes in the cluster: not those stopped for good, nor ids not yet started.
    let in_cluster = nodes
        .iter()
        .filter(|n| !n.retired && (n.founding || n.starts > 0));
    let mut count = 0;
    for (code, node) in codes.iter_mut().zip(in_cluster) {
        *code = node_code(node, now, term_max, commit_max, leader);
        count += 1;
    }
    (codes, count, partition)
}

fn node_code(
    node: &SimNode,
    now: Time,
    term_max: u64,
    commit_max: u64,
    leader: Option<&Replica>,
) -> NodeCode {
    let disk = if node.corrupted {
        3
    } else if node.recovery_crash_after_ops.is_some() {
        2
    } else if node.torn_write_down_us.is_some() {
        1
    } else {
        0
    };
    let Some(replica) = node.replica.as_ref() else {
        let status = if node.failed.is_some() { 3 } else { 2 };
        return pack(&[status, 4, 3, 5, 4, 3, 3, 6, disk, 0, 5, 2]);
    };
    let status = u8::from(now < node.paused_until);
    let role = match replica.role() {
        Role::Follower => 0,
        Role::PreCandidate => 1,
        Role::Candidate => 2,
        Role::Leader => 3,
    };
    let term = match term_max - replica.term().0 {
        0 => 0,
        1 => 1,
        _ => 2,
    };
    let log = leader.map_or(0, |leader| log_relation(replica, leader));
    let commit = replica.commit_index().0;
    let commit_lag = match commit_max - commit {
        0 => 0,
        1..=10 => 1,
        11..=100 => 2,
        _ => 3,
    };
    let apply_lag = match commit.saturating_sub(replica.last_applied().0) {
        0 => 0,
        1..=10 => 1,
        _ => 2,
    };
    let reads = match replica.pending_read_count() {
        0 => 0,
        1..=3 => 1,
        _ => 2,
    };
    let sessions_max = replica.config().sessions_max.max(1);
    let sessions = match replica.session_count() {
        0 => 0,
        n if n >= sessions_max => 5,
        n => 1 + (4 * n / sessions_max) as u8,
    };
    let membership = replica.membership();
    let member = if replica.is_removed() {
        3
    } else if membership.is_empty() {
        4
    } else if membership.is_voter(replica.id()) {
        0
    } else if !membership.contains(replica.id()) {
        3
    } else if log == 2 {
        2
    } else {
        1
    };
    // A membership entry in the uncommitted tail (looked at up to a bound: a change is
    // proposed only with the leader's log committed, so it sits near the commit index).
    let pending = (commit + 1..=replica.last_log_index().0.min(commit + PENDING_SCAN_MAX))
        .filter_map(|i| replica.log_entry(LogIndex(i)))
        .any(|e| matches!(e.payload, EntryPayload::Membership { .. }));
    // The partition's slot stays empty here (it is the cluster's component).
    pack(&[
        status,
        role,
        term,
        log,
        commit_lag,
        apply_lag,
        reads,
        sessions,
        disk,
        0,
        member,
        u8::from(pending),
    ])
}

/// How far past its commit index a node's log is searched for a pending change.
const PENDING_SCAN_MAX: u64 = 32;

/// 1 equal, 2 behind (a prefix of the leader's), 3 ahead (extends it), 4 divergent.
fn log_relation(replica: &Replica, leader: &Replica) -> u8 {
    let last = replica.last_log_index();
    let leader_last = leader.last_log_index();
    let common = last.min(leader_last);
    // Log matching: agreeing on the term at the common index means agreeing on the whole
    // prefix. An index compacted away on either side is committed, hence agreed.
    let agree = match (replica.term_at(common), leader.term_at(common)) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    match (agree, last.cmp(&leader_last)) {
        (false, _) => 4,
        (true, std::cmp::Ordering::Equal) => 1,
        (true, std::cmp::Ordering::Less) => 2,
        (true, std::cmp::Ordering::Greater) => 3,
    }
}

fn partition_shape(nodes: usize, network: &Network, leader: Option<&Replica>) -> u8 {
    if !network.is_partitioned() {
        return 0;
    }
    let summary = network.link_summary();
    let peers = nodes.saturating_sub(1) as u8;
    let isolated = |id: usize| peers > 0 && summary.cut_both_ways.get(id) == Some(&peers);
    if leader.is_some_and(|l| isolated(l.id().0 as usize)) {
        return 2;
    }
    let isolated_count = (1..=nodes).filter(|&id| isolated(id)).count();
    if isolated_count > 0 {
        return if 2 * isolated_count < nodes { 3 } else { 4 };
    }
    if summary.one_way {
        1
    } else {
        5
    }
}

fn hash_state(codes: &[NodeCode], partition: u8) -> u64 {
    codes
        .iter()
        .fold(mix(u64::from(partition) + 1), |h, &c| mix(h ^ c))
}

/// SplitMix64's finalizer: a fixed, portable mixing function.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_code_reads_back_and_describes_itself() {
        let code = pack(&[0, 3, 0, 1, 0, 0, 1, 0, 0]);
        assert_eq!(field(code, 1), 3);
        assert_eq!(field(code, 6), 1);
        assert_eq!(
            describe_node(code),
            "up leader term=max log=equal commit-lag=0 apply-lag=0 reads=1-3 sessions=0% disk=clean member=voter change=settled"
        );
        let learner = pack(&[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 2, 1]);
        assert!(describe_node(learner).ends_with("member=learner-lagging change=pending"));
        let down = pack(&[2, 4, 3, 5, 4, 3, 3, 6, 3, 0, 5, 2]);
        assert_eq!(describe_node(down), "down disk=corrupt");
    }

    #[test]
    fn never_seen_pairs_lists_what_did_not_occur() {
        let mut coverage = Coverage::default();
        coverage
            .node_values
            .insert(pack(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]));
        let missing = coverage.never_seen_pairs();
        assert!(missing.contains(&"role=candidate with disk=torn-write-armed".to_string()));
        assert!(!missing.contains(&"role=follower with disk=clean".to_string()));
        assert!(!missing
            .iter()
            .any(|m| m.starts_with("status=down with role=")));
    }
}
