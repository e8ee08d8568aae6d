//! Budgets: a seed that exceeds one fails with check `budget` at the same event on every
//! replay, and a sweep still finishes.

use chat_sim::budget::Budget;
use chat_sim::runner::run_seeds_within;
use chat_sim::{run_scenario, run_scenario_within, GenerateOptions, Scenario};

fn small_options() -> GenerateOptions {
    GenerateOptions {
        chaos_duration_us: 2_000_000,
        ..GenerateOptions::default()
    }
}

#[test]
fn a_seed_over_its_event_budget_fails_with_check_budget_at_the_same_event() {
    let scenario = Scenario::generate(3, &small_options());
    let full = run_scenario(&scenario);
    assert_eq!(full.failure, None, "seed 3 passes under the default budget");
    let budget = Budget {
        events_max: full.stats.events / 2,
        ..Budget::default()
    };
    let first = run_scenario_within(&scenario, budget);
    let failure = first
        .failure
        .clone()
        .expect("half the events it needs must fail");
    assert_eq!(failure.violation.check, "budget");
    assert_eq!(failure.event, budget.events_max);
    let second = run_scenario_within(&scenario, budget);
    assert_eq!(first, second, "a budget failure replays exactly");
}

#[test]
fn a_seed_over_its_virtual_time_budget_fails_with_check_budget() {
    let scenario = Scenario::generate(4, &small_options());
    let budget = Budget {
        virtual_us_max: Some(1_000_000),
        ..Budget::default()
    };
    let outcome = run_scenario_within(&scenario, budget);
    let failure = outcome.failure.expect("the run needs more than 1 s");
    assert_eq!(failure.violation.check, "budget");
    assert!(failure.at.0 <= 1_000_000, "stopped at {}", failure.at);
    assert!(outcome.stats.simulated_us <= 1_000_000);
}

#[test]
fn entry_and_density_budgets_stop_a_seed_and_the_sweep_goes_on() {
    let options = small_options();
    let tight = Budget {
        entries_delivered_max: 1,
        ..Budget::default()
    };
    let (outcomes, _) = run_seeds_within(&[5, 6, 7], &options, tight, 2, &|_| {});
    assert_eq!(outcomes.len(), 3, "every seed reports");
    for outcome in &outcomes {
        let failure = outcome.failure.as_ref().expect("one entry is not enough");
        assert_eq!(failure.violation.check, "budget");
        assert!(failure.violation.detail.contains("--max-entries-delivered"));
    }
    let dense = Budget {
        events_per_virtual_sec_max: 10,
        ..Budget::default()
    };
    let outcome = run_scenario_within(&Scenario::generate(5, &options), dense);
    let failure = outcome.failure.expect("ten events a second is not enough");
    assert!(failure
        .violation
        .detail
        .contains("--max-events-per-virtual-sec"));
}

#[test]
fn a_panicking_run_is_reported_as_a_failure_of_its_seed() {
    let scenario = Scenario::generate(9, &small_options());
    let outcome = chat_sim::catch_panics(&scenario, || panic!("commit index went back"));
    assert_eq!(outcome.seed, 9);
    let failure = outcome.failure.expect("a panic is a failure");
    assert_eq!(failure.violation.check, "panic");
    assert!(failure.violation.detail.contains("commit index went back"));
    let fine = chat_sim::catch_panics(&scenario, || run_scenario(&scenario));
    assert_eq!(fine, run_scenario(&scenario), "no panic, no change");
}
