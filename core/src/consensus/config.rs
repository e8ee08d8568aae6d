use crate::types::NodeId;

/// Static configuration of one replica. All durations are in microseconds of the shell's
/// clock.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The founding voters, this replica included, or none for a node that joins a
    /// running cluster (it waits for a leader to replicate to it). Used only to found:
    /// once the log or a snapshot holds a membership, that one is in force (see
    /// [`crate::membership`]). Every founder must list the same members.
    pub members: Vec<NodeId>,
    /// A follower or candidate that hears from no leader times out after a duration drawn
    /// uniformly from `[election_timeout_us_min, election_timeout_us_max]` (both ends
    /// included), afresh every time its timer is reset. `max == min` means no jitter: fine
    /// for a single node, an invitation to endless split votes for a cluster.
    ///
    /// The minimum alone is also the leader lease (a replica that heard from a leader this
    /// recently refuses to pre-vote) and the leader's check-quorum period: both must be no
    /// longer than the shortest timeout any follower may draw, so that a follower that
    /// times out finds its peers' leases expired too.
    pub election_timeout_us_min: u64,
    pub election_timeout_us_max: u64,
    pub heartbeat_interval_us: u64,
    /// Bounds one AppendEntries by the estimated size of its entries.
    pub append_entries_bytes_max: usize,
    pub append_entries_count_max: usize,
    /// AppendEntries messages in flight to one follower in the Replicate state.
    pub in_flight_messages_max: usize,
    /// Take a snapshot once this many applied entries follow the last one...
    pub snapshot_threshold_entries: u64,
    /// ... or once the applied entries held in memory after it reach this many bytes
    /// (estimated), whichever comes first: the bound on the in-memory log, whatever the
    /// size of the entries. Both are stretched by the same per-replica jitter.
    pub snapshot_threshold_bytes: u64,
    pub snapshot_chunk_bytes: usize,
    /// How much of a recovered snapshot's file is read at a time while the state is
    /// decoded from it ([`crate::snapshot_source::SourceReader`]).
    pub snapshot_read_bytes: usize,
    /// Committed entries applied in one input at most. When more are committed (a node
    /// that restarts with a long log tail, a follower catching up), the rest are applied
    /// in later steps ([`crate::Replica::poll_timeout`] is then due at once), so that the
    /// shell takes its other inputs in between: heartbeats keep flowing, and a follower
    /// hears its leader, instead of one input applying 90,000 entries for a second and
    /// the cluster electing anew meanwhile.
    pub apply_entries_per_step_max: u64,
    /// A snapshot larger than this is refused while receiving it.
    pub snapshot_bytes_max: u64,
    /// Client sessions in all. When the table is full, opening a session is refused
    /// (`TooManySessions`) until idle ones expire: nobody's session is evicted for
    /// another user's.
    pub sessions_max: usize,
    /// Client sessions of one account name. Opening one more evicts that user's least
    /// recently active session, so a client that leaks sessions only hurts itself.
    pub sessions_per_user_max: usize,
    /// A session idle for this long in log time is forgotten.
    pub session_expiry_us: u64,
    /// Client writes and reads waiting on this replica before it answers `Busy`.
    pub pending_requests_max: usize,
    /// A learner is promoted to voter only if its log is at most this many entries behind
    /// the leader's, so that a promotion never makes a quorum wait for a slow catch-up.
    pub promotion_lag_entries_max: u64,
    /// Whether a node whose election timer fires first asks a quorum whether it could win
    /// (pre-vote, thesis §9.6) before it raises its term. On in production: without it a
    /// node that rejoins after a partition, with a term raised by its failed elections,
    /// deposes a healthy leader. Off only to test that the other defences (the election
    /// restriction, the leader lease) hold on their own: the simulator turns it off in a
    /// share of its seeds, since pre-vote masks a broken election restriction (a pre-vote
    /// is already refused to a candidate whose log is behind).
    pub pre_vote: bool,
    /// Seeds election jitter. Different replicas should get different seeds.
    pub rng_seed: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("founding members must include this replica's id {0}")]
    SelfNotMember(NodeId),
    #[error("member {0} is listed twice")]
    DuplicateMember(NodeId),
    #[error("{0}")]
    Invalid(&'static str),
}

pub const ELECTION_TIMEOUT_US_MIN_DEFAULT: u64 = 300_000;
pub const ELECTION_TIMEOUT_US_MAX_DEFAULT: u64 = 2 * ELECTION_TIMEOUT_US_MIN_DEFAULT;
pub const HEARTBEAT_INTERVAL_US_DEFAULT: u64 = 50_000;
const _: () = assert!(HEARTBEAT_INTERVAL_US_DEFAULT * 3 <= ELECTION_TIMEOUT_US_MIN_DEFAULT);
const _: () = assert!(ELECTION_TIMEOUT_US_MIN_DEFAULT <= ELECTION_TIMEOUT_US_MAX_DEFAULT);

impl Config {
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Config {
        Config {
            id,
            members,
            election_timeout_us_min: ELECTION_TIMEOUT_US_MIN_DEFAULT,
            election_timeout_us_max: ELECTION_TIMEOUT_US_MAX_DEFAULT,
            heartbeat_interval_us: HEARTBEAT_INTERVAL_US_DEFAULT,
            append_entries_bytes_max: 256 * 1024,
            append_entries_count_max: 1024,
            in_flight_messages_max: 8,
            snapshot_threshold_entries: 4096,
            snapshot_threshold_bytes: 64 << 20,
            snapshot_chunk_bytes: 64 * 1024,
            snapshot_read_bytes: 1 << 20,
            apply_entries_per_step_max: 1024,
            snapshot_bytes_max: 1 << 30,
            sessions_max: 65_536,
            sessions_per_user_max: 16,
            session_expiry_us: 3_600 * 1_000_000,
            pending_requests_max: 4096,
            promotion_lag_entries_max: 1024,
            pre_vote: true,
            rng_seed: id.0,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.members.is_empty() && !self.members.contains(&self.id) {
            return Err(ConfigError::SelfNotMember(self.id));
        }
        let mut sorted = self.members.clone();
        sorted.sort();
        for pair in sorted.windows(2) {
            if pair[0] == pair[1] {
                return Err(ConfigError::DuplicateMember(pair[0]));
            }
        }
        if self.heartbeat_interval_us == 0
            || self.heartbeat_interval_us >= self.election_timeout_us_min
        {
            return Err(ConfigError::Invalid(
                "heartbeat interval must be positive and below the election timeout",
            ));
        }
        if self.election_timeout_us_max < self.election_timeout_us_min {
            return Err(ConfigError::Invalid(
                "election timeout maximum must not be below its minimum",
            ));
        }
        if self.append_entries_bytes_max == 0 || self.append_entries_count_max == 0 {
            return Err(ConfigError::Invalid(
                "append entries bounds must be positive",
            ));
        }
        if self.in_flight_messages_max == 0
            || self.snapshot_chunk_bytes == 0
            || self.apply_entries_per_step_max == 0
        {
            return Err(ConfigError::Invalid(
                "in-flight, chunk and apply-step bounds must be positive",
            ));
        }
        if self.snapshot_threshold_entries == 0
            || self.snapshot_threshold_bytes == 0
            || self.sessions_max == 0
            || self.sessions_per_user_max == 0
            || self.pending_requests_max == 0
            || self.snapshot_read_bytes == 0
        {
            return Err(ConfigError::Invalid(
                "snapshot threshold and read size, sessions and pending bounds must be positive",
            ));
        }
        Ok(())
    }

    /// Sets the election timeout range `[min, max]` in microseconds.
    pub fn with_election_timeout_us(mut self, min: u64, max: u64) -> Config {
        self.election_timeout_us_min = min;
        self.election_timeout_us_max = max;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_timeout_range_is_validated() {
        let members = vec![NodeId(1), NodeId(2), NodeId(3)];
        let config = Config::new(NodeId(1), members);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(
            config.election_timeout_us_max,
            2 * config.election_timeout_us_min
        );
        let no_jitter = config.clone().with_election_timeout_us(150_000, 150_000);
        assert_eq!(no_jitter.validate(), Ok(()));
        let inverted = config.clone().with_election_timeout_us(150_000, 149_999);
        assert!(matches!(inverted.validate(), Err(ConfigError::Invalid(_))));
        let below_heartbeat = config.with_election_timeout_us(50_000, 300_000);
        assert!(matches!(
            below_heartbeat.validate(),
            Err(ConfigError::Invalid(_))
        ));
    }
}
