use chat_sim::runner::run_seeds;
use chat_sim::trace::Tracer;
use chat_sim::{run_scenario, GenerateOptions, Scenario, World};
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

#[derive(Clone, Default)]
struct SharedBuffer(Rc<RefCell<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let options = GenerateOptions::default();
    for seed in [0, 1, 7, 42] {
        let scenario = Scenario::generate(seed, &options);
        assert_eq!(
            scenario,
            Scenario::generate(seed, &options),
            "generation is a function of the seed"
        );
        let first = run_scenario(&scenario);
        let second = run_scenario(&scenario);
        assert_eq!(first, second, "seed {seed} replays exactly");
        assert!(first.stats.events > 100, "seed {seed} did something");
    }
    let a = run_scenario(&Scenario::generate(1, &options));
    let b = run_scenario(&Scenario::generate(2, &options));
    assert_ne!(
        a.fingerprint, b.fingerprint,
        "different seeds, different runs"
    );
}

#[test]
fn results_do_not_depend_on_the_number_of_jobs() {
    let options = GenerateOptions::default();
    let seeds: Vec<u64> = (100..116).collect();
    let (one, _) = run_seeds(&seeds, &options, 1, &|_| {});
    let (two, _) = run_seeds(&seeds, &options, 2, &|_| {});
    assert_eq!(one, two);
    assert_eq!(
        one.iter().map(|o| o.seed).collect::<Vec<_>>(),
        seeds,
        "in seed order"
    );
}

#[test]
fn traces_do_not_change_the_run_and_are_well_formed() {
    let scenario = Scenario::generate(3, &GenerateOptions::default());
    let silent = run_scenario(&scenario);
    let (text, chrome) = (SharedBuffer::default(), SharedBuffer::default());
    let tracer = Tracer::new(Some(Box::new(text.clone())), Some(Box::new(chrome.clone())));
    let traced = World::new(&scenario, tracer).run();
    assert_eq!(traced, silent, "tracing is observation only");
    let text = String::from_utf8(text.0.borrow().clone()).unwrap();
    let first = text
        .lines()
        .find(|l| l.contains(" <- "))
        .expect("messages are logged");
    assert!(
        first.starts_with("t=0."),
        "lines start with the virtual time: {first}"
    );
    assert!(
        text.contains("AppendEntries{term:"),
        "messages are spelled out"
    );
    let chrome: serde_json::Value = serde_json::from_slice(&chrome.0.borrow()).expect("valid JSON");
    let events = chrome["traceEvents"]
        .as_array()
        .expect("a traceEvents array");
    let phases: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|e| e["ph"].as_str()).collect();
    for phase in ["M", "X", "s", "f", "i"] {
        assert!(phases.contains(phase), "the trace has {phase} events");
    }
    assert!(
        events
            .iter()
            .any(|e| e["cat"] == "role"
                && e["name"].as_str().is_some_and(|n| n.starts_with("Leader")))
    );
}

#[test]
fn a_calm_run_passes_and_acknowledges_most_operations() {
    let options = GenerateOptions {
        faults: "none".parse().unwrap(),
        ..GenerateOptions::default()
    };
    let scenario = Scenario::generate(5, &options);
    let outcome = run_scenario(&scenario);
    assert_eq!(outcome.failure, None);
    assert!(outcome.stats.ops_acknowledged > 100, "{:?}", outcome.stats);
    assert_eq!(
        outcome.stats.crashes, scenario.nodes,
        "only the final power loss crashes nodes"
    );
}
