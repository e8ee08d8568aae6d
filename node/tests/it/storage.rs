//! The shared storage suite over real files, plus a restart of a real process's view.

use chat_core::storage::testing::{models_of, random_script, test_config, Harness};
use chat_core::storage::{LogStore, HARD_STATE_FILE};
use chat_node::disk::FsDisk;
use tempfile::TempDir;

fn fs_harness() -> Harness<FsDisk> {
    // The directories live as long as the harness, which owns this closure.
    let mut dirs: Vec<TempDir> = Vec::new();
    Harness::new(
        move || {
            let dir = tempfile::tempdir().expect("temp dir");
            let disk = FsDisk::open(dir.path()).expect("open temp dir");
            dirs.push(dir);
            disk
        },
        |disk: FsDisk| {
            let dir = disk.dir().to_path_buf();
            drop(disk);
            FsDisk::open(dir).expect("reopen")
        },
    )
}

mod suite {
    use super::fs_harness;
    chat_core::storage_suite_tests!(fs_harness());
}

#[test]
fn synced_state_survives_dropping_everything_and_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = random_script(11, 50);
    let model = models_of(&script)
        .pop()
        .expect("models start with the empty one");
    {
        let disk = FsDisk::open(dir.path()).expect("open");
        let (mut store, _) = LogStore::open_with(disk, test_config()).expect("open store");
        for p in &script {
            store.persist(p).expect("persist");
        }
        // Dropped here without any close or flush: only what persist synced counts.
    }
    let disk = FsDisk::open(dir.path()).expect("reopen");
    let (_, recovered) = LogStore::open_with(disk, test_config()).expect("recover");
    let expected = model.recovered();
    assert_eq!(recovered.hard_state, expected.hard_state);
    assert_eq!(recovered.snapshot_bytes(), expected.snapshot_bytes());
    assert_eq!(recovered.entries, expected.entries);
    assert!(dir.path().join(HARD_STATE_FILE).is_file());
}

#[test]
fn open_creates_a_missing_data_dir() {
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = parent.path().join("data").join("n1");
    let disk = FsDisk::open(&dir).expect("open creates it");
    let (_, recovered) = LogStore::open(disk).expect("open store");
    assert_eq!(recovered.hard_state, Default::default());
    assert!(recovered.snapshot.is_none() && recovered.entries.is_empty());
    assert!(dir.is_dir());
}
