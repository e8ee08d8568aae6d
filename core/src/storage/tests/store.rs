//! What only a counting, fault-injecting disk can show about [`LogStore`].

use crate::entry::Persist;
use crate::storage::testing::{entries, test_config, Model};
use crate::storage::{CorruptReason, DiskError, LogStore, MemDisk, StorageError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn append_persist(first: u64, count: u64) -> Persist {
    let mut rng = ChaCha8Rng::seed_from_u64(first);
    Persist {
        entries: entries(&mut rng, first, 1, count),
        ..Persist::default()
    }
}

#[test]
fn a_batch_of_256_entries_costs_one_write_and_one_sync() {
    let (mut store, _) = LogStore::open(MemDisk::new()).expect("open");
    // The first persist creates the first segment.
    store.persist(&append_persist(1, 1)).expect("persist");
    let before = store.disk().stats();
    store.persist(&append_persist(2, 256)).expect("persist");
    let after = store.disk().stats();
    assert_eq!(after.file_syncs - before.file_syncs, 1);
    assert_eq!(after.dir_syncs - before.dir_syncs, 0);
    assert_eq!(after.ops - before.ops, 2, "one write, one sync");
}

#[test]
fn an_unchanged_hard_state_costs_nothing() {
    let (mut store, _) = LogStore::open(MemDisk::new()).expect("open");
    let mut p = append_persist(1, 1);
    p.hard_state = Some(crate::entry::HardState {
        term: crate::types::Term(1),
        voted_for: None,
    });
    store.persist(&p).expect("persist");
    let before = store.disk().stats();
    let p = Persist {
        hard_state: p.hard_state,
        ..append_persist(2, 1)
    };
    store.persist(&p).expect("persist");
    assert_eq!(store.disk().stats().file_syncs - before.file_syncs, 1);
}

#[test]
fn a_failed_write_poisons_the_store_until_restart() {
    let (mut store, _) = LogStore::open_with(MemDisk::new(), test_config()).expect("open");
    let mut model = Model::default();
    let p = append_persist(1, 5);
    store.persist(&p).expect("persist");
    model.apply(&p);

    store.disk_mut().set_fail_after_ops(Some(1));
    let error = store
        .persist(&append_persist(6, 5))
        .expect_err("the sync fails");
    assert!(
        matches!(error, StorageError::Disk(DiskError::Io { .. })),
        "{error}"
    );
    store.disk_mut().set_fail_after_ops(None);
    assert_eq!(
        store.persist(&append_persist(6, 5)),
        Err(StorageError::Poisoned)
    );

    // A restart recovers; the unsynced batch may or may not be there, but nothing older
    // is missing.
    let (mut store, recovered) =
        LogStore::open_with(store.into_disk(), test_config()).expect("open");
    assert_eq!(recovered.entries[..5], model.recovered().entries[..]);
    let next = recovered.entries.len() as u64 + 1;
    store
        .persist(&append_persist(next, 1))
        .expect("healthy again");
}

#[test]
fn corrupt_error_is_one_line_that_says_what_to_do() {
    let error = StorageError::Corrupt {
        file: "log-00000000000000000001.seg".to_string(),
        offset: 4096,
        reason: CorruptReason::BadChecksum,
    };
    let message = error.to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(
        message.contains("log-00000000000000000001.seg"),
        "{message}"
    );
    assert!(message.contains("offset 4096"), "{message}");
    assert!(message.contains("wipe its data dir"), "{message}");
}

#[test]
fn damaged_segment_in_memory_disk_is_reported_with_file_and_offset() {
    let (mut store, _) = LogStore::open_with(MemDisk::new(), test_config()).expect("open");
    store.persist(&append_persist(1, 3)).expect("persist");
    store.persist(&append_persist(4, 3)).expect("persist");
    let file = crate::storage::segment_file_name(crate::types::LogIndex(1));
    // The header is 24 bytes and the first record's payload starts 8 bytes later.
    store
        .disk_mut()
        .corrupt(&file, 24 + 8 + 2, 0x20)
        .expect("corrupt");
    match LogStore::open_with(store.into_disk(), test_config()) {
        Err(StorageError::Corrupt {
            file: found,
            offset,
            reason,
        }) => {
            assert_eq!(found, file);
            assert_eq!(offset, 24);
            assert_eq!(reason, CorruptReason::BadChecksum);
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
    }
}
