//! Every scenario under `seeds/` is a bug the simulator caught; each must now pass.

use chat_sim::run_scenario;
use chat_sim::shrink::ScenarioFile;
use std::path::Path;

#[test]
fn every_regression_scenario_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("the seeds/ directory exists")
        .map(|entry| entry.expect("readable").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "seeds/ holds the regression scenarios");
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let file: ScenarioFile =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            !file.description.contains("Say here"),
            "{}: describe the bug it caught",
            path.display()
        );
        let outcome = run_scenario(&file.scenario);
        assert_eq!(outcome.failure, None, "{} fails again", path.display());
    }
}
