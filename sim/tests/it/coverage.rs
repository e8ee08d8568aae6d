//! Coverage and the coverage-guided search: the abstraction ignores node names, a run's
//! coverage is a function of its scenario, the search keeps what reached something new,
//! and a failing mutant survives the trip through a scenario file.

use chat_core::{Config, NodeId, Recovered, Replica, Time};
use chat_sim::coverage::state_hash;
use chat_sim::explore::{explore, mutate, Budget, ExploreOptions};
use chat_sim::network::Network;
use chat_sim::node::SimNode;
use chat_sim::rng::{stream, Stream};
use chat_sim::scenario::NetworkParams;
use chat_sim::shrink::ScenarioFile;
use chat_sim::{run_scenario, GenerateOptions, Scenario};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A cluster of three where `campaigner` has started an election, `corrupted` is down
/// with a damaged disk, the third is a follower, and `campaigner` is cut off.
fn cluster(campaigner: u64, corrupted: u64) -> (Vec<SimNode>, Network) {
    let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let nodes = (1..=3)
        .map(|id| {
            let mut node = SimNode::new(NodeId(id), 0);
            if id == corrupted {
                node.corrupted = true;
                return node;
            }
            let config = Config::new(NodeId(id), members.clone());
            // A default configuration and an empty disk make a valid replica.
            let mut replica = Replica::new(config, Recovered::default(), Time(0))
                .expect("a fresh replica starts");
            if id == campaigner {
                replica.campaign(Time(1_000));
            }
            node.replica = Some(replica);
            node
        })
        .collect();
    let mut network = Network::new(NetworkParams::calm(), stream(0, Stream::Network));
    let links = (1..=3)
        .filter(|&other| other != campaigner)
        .flat_map(|other| {
            [
                (NodeId(campaigner), NodeId(other)),
                (NodeId(other), NodeId(campaigner)),
            ]
        })
        .collect();
    network.add_partition(1, links);
    (nodes, network)
}

#[test]
fn the_abstract_state_ignores_node_names() {
    let (nodes, network) = cluster(1, 3);
    let reference = state_hash(&nodes, &network, Time(2_000));
    for (campaigner, corrupted) in [(3, 1), (2, 1), (1, 2), (3, 2)] {
        let (nodes, network) = cluster(campaigner, corrupted);
        assert_eq!(
            state_hash(&nodes, &network, Time(2_000)),
            reference,
            "renaming: campaigner n{campaigner}, corrupted n{corrupted}"
        );
    }
    // A different state is a different hash: no one campaigning.
    let (nodes, network) = cluster(0, 3);
    assert_ne!(state_hash(&nodes, &network, Time(2_000)), reference);
}

#[test]
fn a_runs_coverage_is_a_function_of_its_scenario() {
    let scenario = Scenario::generate(5, &GenerateOptions::default());
    let first = run_scenario(&scenario);
    let second = run_scenario(&scenario);
    assert!(first.coverage.states.len() > 10, "a run reaches states");
    assert!(!first.coverage.transitions.is_empty());
    assert_eq!(first.coverage, second.coverage);
    let other = run_scenario(&Scenario::generate(6, &GenerateOptions::default()));
    assert_ne!(first.coverage.states, other.coverage.states);
}

fn small_search(jobs: usize) -> chat_sim::explore::ExploreReport {
    let generate = GenerateOptions {
        chaos_duration_us: 2_000_000,
        ..GenerateOptions::default()
    };
    let mut options = ExploreOptions::new(generate, Budget::Runs(24));
    options.round_size = 8;
    options.seed = 11;
    options.jobs = jobs;
    explore(&options, &|_| {})
}

#[test]
fn explore_keeps_scenarios_that_reached_new_states() {
    let report = small_search(1);
    assert_eq!(report.runs, 24);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(!report.corpus.is_empty());
    for entry in &report.corpus {
        assert!(
            entry.new_states + entry.new_transitions > 0,
            "kept without novelty: {}",
            entry.candidate.origin
        );
    }
    assert!(
        report
            .corpus
            .iter()
            .any(|e| e.candidate.origin.starts_with("mutant") && e.new_states > 0),
        "some mutant reached a new state"
    );
    // Reproducible from the seed, whatever the number of jobs.
    let again = small_search(2);
    assert_eq!(again.coverage, report.coverage);
    let origins = |r: &chat_sim::explore::ExploreReport| -> Vec<String> {
        r.corpus
            .iter()
            .map(|e| e.candidate.origin.clone())
            .collect()
    };
    assert_eq!(origins(&again), origins(&report));
}

#[test]
fn a_failing_mutant_round_trips_through_a_scenario_file() {
    let options = GenerateOptions {
        chaos_duration_us: 2_000_000,
        ..GenerateOptions::default()
    };
    let mut scenario = Scenario::generate(3, &options);
    let donor = Scenario::generate(4, &options);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for _ in 0..6 {
        mutate(&mut rng, &mut scenario, &donor, &options);
    }
    // Break it: a heartbeat no shorter than the election timeout is refused at start.
    scenario.tuning.heartbeat_interval_us = scenario.tuning.election_timeout_us_min;
    let outcome = run_scenario(&scenario);
    let failure = outcome.failure.clone().expect("the broken mutant fails");
    let file = ScenarioFile {
        description: "a mutant from the test".to_string(),
        check: failure.violation.check.to_string(),
        detail: failure.violation.detail.clone(),
        scenario: scenario.clone(),
    };
    let dir = std::env::temp_dir().join(format!("chatsim-it-explore-{}", std::process::id()));
    let path = dir.join("mutant.json");
    file.write(&path).expect("write the scenario file");
    let read = ScenarioFile::read(&path).expect("read it back");
    std::fs::remove_dir_all(&dir).expect("clean up");
    assert_eq!(read, scenario);
    let replayed = run_scenario(&read);
    assert_eq!(replayed, outcome, "the file replays the run exactly");
}
