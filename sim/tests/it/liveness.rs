//! Measured liveness: the `leaderless` check fails a cluster that cannot elect while a
//! quorum is healthy, and the Figure 16 experiment shows why timeouts are randomized.

use chat_sim::elections::{run_elections, ElectionsOptions};
use chat_sim::trace::Tracer;
use chat_sim::{Sabotage, Scenario, World};

/// A calm scenario whose messages all take exactly 1 ms: nothing but the election
/// timeout's own jitter keeps the replicas' timers apart.
fn lockstep_scenario() -> Scenario {
    let options = chat_sim::GenerateOptions {
        faults: "none".parse().expect("a valid fault list"),
        ..Default::default()
    };
    let mut scenario = Scenario::generate(3, &options);
    scenario.network.latency_us_min = 1_000;
    scenario.network.latency_us_max = 1_000;
    scenario.tuning.election_timeout_us_min = 150_000;
    scenario.tuning.election_timeout_us_max = Some(300_000);
    scenario.tuning.heartbeat_interval_us = 30_000;
    scenario
}

fn run(scenario: &Scenario, sabotage: Option<Sabotage>) -> chat_sim::RunOutcome {
    let world = World::new(scenario, Tracer::silent());
    match sabotage {
        Some(sabotage) => world.sabotage(sabotage).run(),
        None => world.run(),
    }
}

#[test]
fn timeouts_without_jitter_fail_leaderless() {
    let scenario = lockstep_scenario();
    let correct = run(&scenario, None);
    assert_eq!(correct.failure, None);
    let bound_us = chat_sim::world::leaderless_bound_us(&scenario);
    assert!(correct.stats.leaderless_us_max <= bound_us);
    assert!(
        correct.stats.leaderless_us_max > 0,
        "the first election takes time"
    );

    let failure = run(&scenario, Some(Sabotage::NoElectionJitter))
        .failure
        .expect("identical timeouts split every vote");
    assert_eq!(failure.violation.check, "leaderless");
    // It fails as soon as the bound is crossed, long before the end-of-run liveness check.
    assert!(failure.at.0 <= bound_us + scenario.tuning.election_timeout_us_max());
}

#[test]
fn pre_vote_answers_are_judged_both_ways_and_a_misjudged_lease_fails_them() {
    // Seed 4 with every fault: leaders are lost and replaced, so pre-votes arrive both
    // inside leases and outside them (24 grants and 37 refusals judged when written).
    let scenario = Scenario::generate(4, &chat_sim::GenerateOptions::default());
    let correct = run(&scenario, None);
    assert_eq!(correct.failure, None);
    // Coverage marks: the check judged answers of both kinds, so it cannot pass vacuously.
    assert!(correct.stats.pre_vote_grants_judged > 0);
    assert!(correct.stats.pre_vote_refusals_judged > 0);

    let failure = run(&scenario, Some(Sabotage::AgeLeaseRecord))
        .failure
        .expect("a refusal within a lease looks like one outside any lease");
    assert_eq!(failure.violation.check, "pre-vote");
    assert!(failure.violation.detail.contains("refused"));
}

#[test]
fn a_silent_network_fails_leaderless_not_only_liveness() {
    let outcome = run(&lockstep_scenario(), Some(Sabotage::SilenceAfterChaos));
    let failure = outcome.failure.expect("must fail");
    assert_eq!(failure.violation.check, "leaderless");
    assert!(failure.at.0 > lockstep_scenario().chaos_duration_us);
}

#[test]
fn a_led_cluster_that_ignores_clients_fails_liveness_not_leaderless() {
    let outcome = run(&lockstep_scenario(), Some(Sabotage::IgnoreClients));
    assert_eq!(
        outcome.failure.expect("must fail").violation.check,
        "liveness"
    );
}

#[test]
fn time_to_first_commit_after_chaos_is_measured() {
    let outcome = run(&lockstep_scenario(), None);
    // The leader outlives the end of chaos and clients still busy then commit something
    // new within a few round trips.
    let us = outcome
        .stats
        .first_commit_after_chaos_us
        .expect("a new entry is committed after chaos");
    assert!(us < 1_000_000, "first commit after chaos took {us}us");
}

#[test]
fn figure_16_no_jitter_is_pathological_and_wide_jitter_is_fast() {
    let mut options = ElectionsOptions::paper(7, 30);
    options.ranges_us = vec![(150_000, 150_000), (150_000, 300_000)];
    let results = run_elections(&options).expect("the experiment runs");
    let (none, wide) = (&results[0], &results[1]);
    assert_eq!(none.trials(), 30);
    assert_eq!(wide.trials(), 30);
    assert_eq!(wide.unelected, 0);
    let wide_p50 = wide.percentile_us(50.0).expect("all elected");
    let wide_max = wide.percentile_us(100.0).expect("all elected");
    // About half the minimum timeout (the crash falls within a heartbeat interval) plus
    // a draw and two round trips (pre-vote, vote): well under 300 ms typically.
    assert!(wide_p50 < 300_000, "150-300 median {wide_p50}us");
    assert!(wide_max < 1_000_000, "150-300 worst {wide_max}us");
    // Without jitter, votes split round after round: seconds, not milliseconds.
    let none_p50 = none.percentile_us(50.0).unwrap_or(u64::MAX);
    assert!(none_p50 > 10 * wide_p50, "150-150 median {none_p50}us");
    assert!(none.fraction_within(1_000_000) < 0.2);
    assert!(wide.fraction_within(1_000_000) == 1.0);
}
