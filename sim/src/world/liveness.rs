//! Measured liveness: how long the cluster went without a leader although it could have
//! had one, and how long after the faults stopped it first committed something new.
//!
//! **Healthy quorum.** A set of nodes is healthy while every member is up (its replica
//! runs), not paused, and every directed link between two members is open (no partition
//! blocks it; the network's random loss, duplication and delay do not count, they are
//! noise a correct cluster must ride out). A healthy quorum is a healthy set of voters
//! holding a majority of the configuration in force: of the newest committed one (as the
//! safety checker saw it) and of the newest one appended (the leader's, or else that of
//! the replica with the most up-to-date log), which differ during a change.
//!
//! **Leader present.** Some node is leader and belongs to a healthy quorum. A leader cut
//! off from a quorum (partitioned, paused) does not count: the others must replace it.
//!
//! **Leaderless interval.** For each healthy quorum `Q`, the time since the later of
//! (`Q` became healthy, a leader was last present or won an election). A leader that wins
//! and is crashed by the very same input (a milestone crash) still ends the interval: the
//! election worked. The run's measure is the longest such interval; a seed fails check
//! `leaderless` when it exceeds [`leaderless_bound_us`], or, for an interval during which
//! every healthy quorum was at some point a bare majority of six or more voters,
//! [`leaderless_bound_bare_us`].
//!
//! Health is re-evaluated only when its inputs change (who is up, paused or leading, or
//! the partitions), which costs a few comparisons per event.

use super::*;
use chat_core::LogIndex;

/// Node masks are 32 bits: a bare majority of at most 32 voters needs at most 16 answers.
const BARE_ANSWERS_MAX: u32 = 16;

/// Election timeouts allowed a healthy quorum before `leaderless` fails, counted in
/// maximum election timeouts, on top of [`LEADERLESS_ROUND_TRIPS`]. A perfect election
/// already costs up to 1.5 of them (the followers' lease of one minimum timeout since
/// they last heard the leader, then a draw of at most the maximum); each failed attempt
/// (a split vote, a lost vote, a voter crashed or cut off by the fault injector) costs
/// at most one more. Measured over seeds 0..12000 of `chatsim run` (2026-11), a correct
/// cluster's worst seed used 3.2 of them, 6 seeds more than 2.5 and 37 more than 2 (the
/// tail thins about sixfold per half timeout), while a cluster whose timeouts are not
/// randomized reached 5.3 to 7.1 in 3 of seeds 0..3000: split votes repeat round after
/// round when every follower restarts the same timeout on the same heartbeat. Five sits
/// well above the correct tail and below the broken one.
pub const LEADERLESS_ELECTION_TIMEOUTS: u64 = 5;
/// Round trips allowed on top, each at the slowest a message may travel (latency plus the
/// long detour of a delayed message): a pre-vote round, a vote round and the stale
/// leader's last heartbeats (which extend the followers' lease) may each take that long.
pub const LEADERLESS_ROUND_TRIPS: u64 = 4;

/// The message loss, in per mille, that [`LEADERLESS_ELECTION_TIMEOUTS`] was measured
/// under: the most `Scenario::generate` draws. Explore's mutations go further (a fifth of
/// all messages lost makes a vote round, which needs every message of a bare quorum, fail
/// far more often), so past this the allowance grows: ten more timeouts per further 100
/// per mille.
pub const LEADERLESS_CALIBRATED_DROP_PER_MILLE: u64 = 100;

/// The most peer answers a bare majority's candidate needs (every other voter of the
/// majority, in the pre-vote and in the vote) that [`LEADERLESS_ELECTION_TIMEOUTS`] covers:
/// two, a bare majority of four or five voters. Measured over seeds 0..20000 of
/// `chatsim run` at each of `--nodes 3`, `5` and `7` (2026-12), the worst leaderless
/// intervals of a correct cluster were nearly all bare majorities under heavy loss: 4.00
/// timeouts at three voters (one answer needed) and 3.69 at five (two; 4.46 at four, over
/// seeds 0..20000 of mixed sizes), but 4.69 at seven and 5.70 (seed 5773 at `--nodes 5`:
/// six voters after a promotion, 95 per mille lost, every failed attempt traced to a lost
/// election message) when three answers are needed.
pub const LEADERLESS_CALIBRATED_BARE_ANSWERS: u32 = 2;

/// How much more time a cluster without pre-vote gets (see `bound_us`).
pub const PRE_VOTE_OFF_FACTOR: u64 = 2;

/// The longest a healthy quorum may go without a leader in this scenario, in µs: a quorum
/// with a voter to spare, or a bare majority of at most five voters.
pub fn leaderless_bound_us(scenario: &Scenario) -> u64 {
    bound_us(scenario, 0)
}

/// The longest a healthy quorum may go without a leader in this scenario, in µs, when
/// it was at some point a bare majority whose candidate needs `answers_needed` answers
/// (its voters but one). Each attempt then fails if any one of its `4 * answers_needed`
/// election messages (pre-vote and vote, request and answer) is lost, so at loss `p` it
/// succeeds with chance `q = (1 - p)^(4 * answers_needed)` and fails `1/q - 1` times on
/// average before one succeeds. Past [`LEADERLESS_CALIBRATED_BARE_ANSWERS`], the
/// allowance grows by exactly the extra failed attempts so expected, at most one timeout
/// each: at 95 per mille (seed 5773), 1.09 more timeouts for three answers, 2.72 for
/// four; without loss, none, so a cluster that splits its votes (timeouts not
/// randomized) is held to the same bound whatever its size. That cluster, measured over
/// seeds 0..3000 with `Sabotage::NoElectionJitter`, fails `leaderless` 2 times at five
/// members and 14 at seven before this allowance (two of those in a bare majority of
/// seven, at 0 and 18 per mille lost, where it grows by 0 and 0.09 timeouts).
pub fn leaderless_bound_bare_us(scenario: &Scenario, answers_needed: u32) -> u64 {
    bound_us(
        scenario,
        bare_majority_extra_timeouts_x100(scenario.network.drop_per_mille, answers_needed),
    )
}

/// `1/q - 1` for `answers_needed` less that for [`LEADERLESS_CALIBRATED_BARE_ANSWERS`]
/// (see [`leaderless_bound_bare_us`]), in hundredths, in integers so that every
/// platform draws the same line. Loss beyond [`LEADERLESS_CALIBRATED_DROP_PER_MILLE`] is
/// left to the linear allowance of [`bound_us`].
fn bare_majority_extra_timeouts_x100(drop_per_mille: u32, answers_needed: u32) -> u64 {
    const ONE: u128 = 1_000_000;
    let drop = u128::from(drop_per_mille).min(u128::from(LEADERLESS_CALIBRATED_DROP_PER_MILLE));
    // `1/q` for `answers` answers, in millionths.
    let inverse_success =
        |answers: u32| (0..4 * answers).fold(ONE, |x, _| x * 1000 / (1000 - drop));
    let calibrated = inverse_success(LEADERLESS_CALIBRATED_BARE_ANSWERS);
    let needed = inverse_success(answers_needed.min(16));
    (needed.saturating_sub(calibrated) * 100 / ONE) as u64
}

fn bound_us(scenario: &Scenario, extra_timeouts_x100: u64) -> u64 {
    let one_way_us_max = scenario.network.latency_us_max + scenario.network.delay_us_max;
    let excess_drop_per_mille = u64::from(scenario.network.drop_per_mille)
        .saturating_sub(LEADERLESS_CALIBRATED_DROP_PER_MILLE);
    let mut timeouts_x100 =
        LEADERLESS_ELECTION_TIMEOUTS * 100 + 10 * excess_drop_per_mille + extra_timeouts_x100;
    if scenario.tuning.pre_vote == Some(false) {
        // Without pre-vote (a quarter of the seeds, to test the election restriction on
        // its own), two candidates that cannot see each other's terms (one missing from
        // the other's configuration) collide in the same term round after round until
        // their timers happen to part, and a stale candidate's raised term can depose a
        // working election: only randomness ends it. Over seeds 0..20000 at 3 members,
        // three pre-vote-off seeds (3134, 10875, 12922) ran past five timeouts, by a
        // few milliseconds; twice the allowance covers them.
        timeouts_x100 *= PRE_VOTE_OFF_FACTOR;
    }
    // A node whose clock runs slow waits longer in true time for each timeout: stretch
    // the allowance by the slowest clock any node may have (its drift, or a slow-clock
    // fault), so that the check measures the protocol, not the clocks.
    let slowest_rate_ppm = scenario
        .clock_drift_ppm
        .iter()
        .copied()
        .chain(scenario.fault_events.iter().filter_map(|e| match e.action {
            crate::scenario::FaultAction::ClockRate { rate_ppm, .. } => Some(rate_ppm),
            _ => None,
        }))
        .min()
        .unwrap_or(0)
        .min(0);
    let clock_rate_ppm = (1_000_000 + slowest_rate_ppm).max(100_000) as u64;
    let timeouts_us = timeouts_x100 * scenario.tuning.election_timeout_us_max() / 100;
    timeouts_us * 1_000_000 / clock_rate_ppm + LEADERLESS_ROUND_TRIPS * 2 * one_way_us_max
}

/// What health depends on: up, paused and leader nodes as bit masks, and the network's
/// partition generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct HealthKey {
    up: u32,
    paused: u32,
    pub(super) leaders: u32,
    network: u64,
    /// Voters of the committed and of the newest configuration.
    committed_voters: u32,
    latest_voters: u32,
    /// Every running replica's own newest configuration, folded: which one a set of
    /// nodes can elect under depends on it (see `evaluate_health`).
    own_configs: u64,
}

pub(super) struct Liveness {
    /// [`leaderless_bound_us`], then [`leaderless_bound_bare_us`] per answers needed.
    bound_us_by_bare_answers: Vec<u64>,
    key: Option<HealthKey>,
    /// Per healthy quorum (a bit mask of nodes): healthy since when.
    healthy_since: BTreeMap<u32, Time>,
    leader_present: bool,
    last_leader_at: Time,
    /// The healthy quorum that has been healthy longest, and since when.
    longest_healthy: Option<(u32, Time)>,
    /// Start of the current leaderless interval with a healthy quorum, if in one.
    leaderless_since: Option<Time>,
    /// If every healthy quorum is a bare majority now, the answers its candidate needs;
    /// else 0.
    bare_answers: u32,
    /// The most of those during the current interval: which bound it is held to.
    interval_bare_answers: u32,
    pub(super) leaderless_us_max: u64,
    /// The bound the longest interval was held to.
    pub(super) leaderless_bound_us: u64,
    /// The highest log index any replica held so far.
    index_high_water: LogIndex,
    /// When the faults stopped and the highest index then: a commit above it is new.
    chaos_end: Option<(Time, LogIndex)>,
    pub(super) first_commit_after_chaos_us: Option<u64>,
    /// The leaders present at the last evaluation (a bit mask of nodes).
    present_leaders: u32,
    /// Clean leader losses, timed to the next election (`world/reelection.rs`).
    pub(super) reelection: super::reelection::Reelection,
}

impl Liveness {
    pub(super) fn new(scenario: &Scenario) -> Liveness {
        Liveness {
            bound_us_by_bare_answers: (0..=BARE_ANSWERS_MAX)
                .map(|answers| match answers {
                    0 => leaderless_bound_us(scenario),
                    _ => leaderless_bound_bare_us(scenario, answers),
                })
                .collect(),
            key: None,
            healthy_since: BTreeMap::new(),
            leader_present: false,
            last_leader_at: Time(0),
            longest_healthy: None,
            leaderless_since: None,
            bare_answers: 0,
            interval_bare_answers: 0,
            leaderless_us_max: 0,
            leaderless_bound_us: leaderless_bound_us(scenario),
            index_high_water: LogIndex(0),
            chaos_end: None,
            first_commit_after_chaos_us: None,
            present_leaders: 0,
            reelection: super::reelection::Reelection::new(scenario),
        }
    }

    /// Ends the current interval at `now` (recording its length) and starts the next.
    fn restart_interval(&mut self, now: Time) {
        if let Some(since) = self.leaderless_since {
            let leaderless_us = now.saturating_since_us(since);
            if leaderless_us > self.leaderless_us_max {
                self.leaderless_us_max = leaderless_us;
                self.leaderless_bound_us = self.bound_us();
            }
        }
        let next = match (self.leader_present, self.longest_healthy) {
            (false, Some((_, since))) => Some(since.max(self.last_leader_at)),
            _ => None,
        };
        // The same start means the same interval, re-evaluated.
        self.interval_bare_answers = match next {
            Some(_) if next == self.leaderless_since => {
                self.interval_bare_answers.max(self.bare_answers)
            }
            _ => self.bare_answers,
        };
        self.leaderless_since = next;
    }

    /// The bound the current interval is held to.
    fn bound_us(&self) -> u64 {
        let answers = self.interval_bare_answers.min(BARE_ANSWERS_MAX) as usize;
        self.bound_us_by_bare_answers[answers]
    }

    /// A replica has just become leader: the election worked, whatever happens next.
    pub(super) fn leader_elected(&mut self, now: Time) {
        self.reelection.elected(now);
        self.last_leader_at = now;
        self.restart_interval(now);
    }

    pub(super) fn observe_replica(&mut self, replica: &Replica, now: Time) {
        self.index_high_water = self.index_high_water.max(replica.last_log_index());
        if let (Some((end, index)), None) = (self.chaos_end, self.first_commit_after_chaos_us) {
            if replica.commit_index() > index {
                self.first_commit_after_chaos_us = Some(now.saturating_since_us(end));
            }
        }
    }

    pub(super) fn chaos_ended(&mut self, now: Time) {
        self.chaos_end = Some((now, self.index_high_water));
    }

    /// Closes the measurement at the end of the run.
    pub(super) fn finish(&mut self, now: Time) {
        self.restart_interval(now);
    }
}

impl World<'_> {
    /// After every event: re-evaluates health if its inputs changed, then checks the
    /// current leaderless interval against the bound.
    pub(super) fn observe_liveness(&mut self) {
        let (committed_voters, latest_voters) = self.voter_masks();
        let mut key = HealthKey {
            up: 0,
            paused: 0,
            leaders: 0,
            network: self.network.generation(),
            committed_voters,
            latest_voters,
            own_configs: 0,
        };
        for (index, node) in self.nodes.iter().enumerate().take(32) {
            let Some(replica) = node.replica.as_ref() else {
                continue;
            };
            key.up |= 1 << index;
            if self.now < node.paused_until {
                key.paused |= 1 << index;
            }
            if replica.role() == Role::Leader {
                key.leaders |= 1 << index;
            }
            let voters = replica
                .membership()
                .voters()
                .fold(0u64, |mask, v| mask | 1 << (v.0 % 64));
            key.own_configs = key
                .own_configs
                .rotate_left(7)
                .wrapping_add(voters ^ index as u64);
        }
        if self.liveness.key != Some(key) {
            self.liveness.key = Some(key);
            self.evaluate_health(key);
        }
        self.check_reelection();
        let Some(since) = self.liveness.leaderless_since else {
            return;
        };
        let leaderless_us = self.now.saturating_since_us(since);
        let bound_us = self.liveness.bound_us();
        if leaderless_us > bound_us {
            let nodes = self
                .liveness
                .longest_healthy
                .map(|(mask, _)| describe_mask(mask))
                .unwrap_or_default();
            let bare = match self.liveness.interval_bare_answers {
                answers if answers > LEADERLESS_CALIBRATED_BARE_ANSWERS => {
                    format!(", more for a bare majority that needs {answers} answers at this loss")
                }
                _ => String::new(),
            };
            self.fail(Violation {
                check: "leaderless",
                detail: format!(
                    "no leader for {:.3}s while {nodes} were up, unpaused and connected \
                     (bound {:.3}s: {LEADERLESS_ELECTION_TIMEOUTS} election timeouts of at most \
                     {}us, more past {LEADERLESS_CALIBRATED_DROP_PER_MILLE} per mille of message \
                     loss or with slow clocks{bare}, plus {LEADERLESS_ROUND_TRIPS} slowest round \
                     trips)",
                    leaderless_us as f64 / 1e6,
                    bound_us as f64 / 1e6,
                    self.scenario.tuning.election_timeout_us_max(),
                ),
            });
        }
    }

    /// The voters (bit masks of nodes) of the newest committed configuration and of the
    /// newest configuration appended.
    pub(super) fn voter_masks(&self) -> (u32, u32) {
        let mask_of = |voters: &mut dyn Iterator<Item = NodeId>| {
            voters
                .filter(|v| (1..=32).contains(&v.0))
                .fold(0u32, |mask, v| mask | 1 << (v.0 - 1))
        };
        let committed = match self.safety.committed_voters() {
            Some(voters) => mask_of(&mut voters.iter().copied()),
            None => mask_of(&mut (1..=self.scenario.nodes).map(NodeId)),
        };
        let newest = self.current_leader().or_else(|| {
            self.nodes
                .iter()
                .filter_map(|n| n.replica.as_ref())
                .max_by_key(|r| (r.term_at(r.last_log_index()), r.last_log_index()))
        });
        let latest = match newest {
            Some(replica) if !replica.membership().is_empty() => {
                mask_of(&mut replica.membership().voters())
            }
            _ => committed,
        };
        (committed, latest)
    }

    fn evaluate_health(&mut self, key: HealthKey) {
        let n = self.nodes.len().min(32);
        let healthy = key.up & !key.paused;
        let mut connected = vec![0u32; n];
        for (a, links) in connected.iter_mut().enumerate() {
            for b in 0..n {
                let (na, nb) = (NodeId(a as u64 + 1), NodeId(b as u64 + 1));
                if a == b || !(self.network.is_blocked(na, nb) || self.network.is_blocked(nb, na)) {
                    *links |= 1 << b;
                }
            }
        }
        let quorum = |voters: u32| voters.count_ones() / 2 + 1;
        let (committed, latest) = (key.committed_voters, key.latest_voters);
        // Per running node: how up to date its log is, and the voters of its own newest
        // configuration. Within a set, only a node whose log is the most up to date can
        // collect the others' votes, and it counts them in its own configuration: a set
        // that is a majority of the committed configuration can still elect nobody (an
        // old leader that logged its own removal, cut off with one voter of the old
        // configuration, say).
        let logs: Vec<Option<((u64, u64), u32)>> = self
            .nodes
            .iter()
            .take(32)
            .map(|node| {
                let replica = node.replica.as_ref()?;
                let last = replica.last_log_index();
                let term = replica.term_at(last).map_or(0, |t| t.0);
                let voters = replica
                    .membership()
                    .voters()
                    .filter(|v| (1..=32).contains(&v.0))
                    .fold(0u32, |mask, v| mask | 1 << (v.0 - 1));
                Some(((term, last.0), voters))
            })
            .collect();
        let electable = |mask: u32| {
            let newest = (0..logs.len())
                .filter(|i| mask & (1 << i) != 0)
                .filter_map(|i| logs[i])
                .max_by_key(|&(up_to_date, _)| up_to_date);
            match newest {
                // Joiners know no configuration yet: nothing to say.
                Some((_, 0)) | None => true,
                Some((_, voters)) => (mask & voters).count_ones() >= quorum(voters),
            }
        };
        let candidates = (committed | latest) & healthy;
        let now = self.now;
        let mut covered = 0u32;
        let mut longest: Option<(u32, Time)> = None;
        let mut spare_voters = 0;
        let mut healthy_since = BTreeMap::new();
        // Every subset of the healthy voters (at most a few hundred: clusters hold at
        // most 16 members, and a change moves one voter).
        let mut mask = candidates;
        while mask != 0 {
            let is_quorum = (mask & committed).count_ones() >= quorum(committed)
                && (mask & latest).count_ones() >= quorum(latest)
                && electable(mask);
            let is_connected = (0..n)
                .filter(|i| mask & (1 << i) != 0)
                .all(|i| mask & !connected[i] == 0);
            if is_quorum && is_connected {
                let since = self
                    .liveness
                    .healthy_since
                    .get(&mask)
                    .copied()
                    .unwrap_or(now);
                healthy_since.insert(mask, since);
                covered |= mask;
                spare_voters = spare_voters.max(
                    ((mask & committed).count_ones() - quorum(committed))
                        .min((mask & latest).count_ones() - quorum(latest)),
                );
                if longest.is_none_or(|(_, t)| since < t) {
                    longest = Some((mask, since));
                }
            }
            mask = (mask - 1) & candidates;
        }
        let present_leaders = key.leaders & healthy & covered;
        let leader_present = present_leaders != 0;
        let liveness = &mut self.liveness;
        let lost_leaders = match (liveness.present_leaders, present_leaders) {
            (before, 0) => before,
            _ => 0,
        };
        liveness.present_leaders = present_leaders;
        liveness.healthy_since = healthy_since;
        if liveness.leader_present && !leader_present {
            liveness.last_leader_at = now;
        }
        liveness.leader_present = leader_present;
        liveness.bare_answers = match (longest, spare_voters) {
            (Some(_), 0) => quorum(committed).max(quorum(latest)) - 1,
            _ => 0,
        };
        liveness.longest_healthy = longest;
        liveness.restart_interval(now);
        self.reelection_after_health(key, lost_leaders, leader_present, longest.is_some());
    }
}

fn describe_mask(mask: u32) -> String {
    let names: Vec<String> = (0..32)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| NodeId(i + 1).to_string())
        .collect();
    names.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_majority_gets_more_time_only_for_its_extra_losses() {
        // Up to the calibrated two answers, and without loss, nothing more.
        assert_eq!(bare_majority_extra_timeouts_x100(95, 1), 0);
        assert_eq!(bare_majority_extra_timeouts_x100(95, 2), 0);
        assert_eq!(bare_majority_extra_timeouts_x100(0, 3), 0);
        // (1000/905)^12 - (1000/905)^8 = 1.09; ^16 - ^8 = 2.72.
        assert_eq!(bare_majority_extra_timeouts_x100(95, 3), 109);
        assert_eq!(bare_majority_extra_timeouts_x100(95, 4), 271);
        // Loss past the calibrated 100 per mille counts as 100 here (the linear
        // allowance of `bound_us` covers the rest).
        assert_eq!(
            bare_majority_extra_timeouts_x100(300, 3),
            bare_majority_extra_timeouts_x100(100, 3)
        );
        assert!(bare_majority_extra_timeouts_x100(100, 16) > 0);
    }
}
