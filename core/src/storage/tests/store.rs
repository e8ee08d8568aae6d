//! What only a counting, fault-injecting disk can show about [`LogStore`].

use crate::entry::Persist;
use crate::storage::testing::{entries, test_config, Model};
use crate::storage::{CorruptReason, Disk, DiskError, LogStore, MemDisk, StorageError};
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

fn snapshot_through(last: u64) -> crate::entry::Snapshot {
    crate::entry::Snapshot {
        meta: crate::entry::SnapshotMeta {
            last_index: crate::types::LogIndex(last),
            last_term: crate::types::Term(1),
        },
        data: std::sync::Arc::new(vec![7; 100]),
    }
}

#[test]
fn a_staged_snapshot_replaces_nothing_until_committed_and_a_crash_before_loses_nothing() {
    for crash_seed in 0..20 {
        let (mut store, _) = LogStore::open_with(MemDisk::new(), test_config()).expect("open");
        store.persist(&append_persist(1, 10)).expect("persist");
        let snapshot = snapshot_through(6);
        crate::storage::stage_snapshot(store.disk_mut(), &snapshot, &mut Vec::new())
            .expect("stage");
        // A crash between staging and committing: the staged file is dropped at recovery,
        // every entry is still there, and there is no snapshot.
        let mut disk = store.into_disk();
        disk.crash(&mut ChaCha8Rng::seed_from_u64(crash_seed));
        let (mut store, recovered) = LogStore::open_with(disk, test_config()).expect("recover");
        assert!(recovered.snapshot.is_none());
        assert_eq!(recovered.entries.len(), 10);
        assert!(!store
            .disk()
            .list()
            .expect("list")
            .iter()
            .any(|f| f == crate::storage::SNAPSHOT_STAGED_FILE));
        // Staged again and committed: durable, and the covered entries are gone.
        crate::storage::stage_snapshot(store.disk_mut(), &snapshot, &mut Vec::new())
            .expect("stage");
        assert!(store
            .commit_staged_snapshot(&snapshot.meta)
            .expect("commit"));
        let mut disk = store.into_disk();
        disk.crash(&mut ChaCha8Rng::seed_from_u64(crash_seed));
        let (mut store, recovered) = LogStore::open_with(disk, test_config()).expect("recover");
        assert_eq!(recovered.snapshot_bytes(), Ok(Some(snapshot.clone())));
        assert!(recovered.entries.iter().all(|e| e.index.0 > 6));
        assert_eq!(recovered.entries.last().map(|e| e.index.0), Some(10));
        // An older stage (overtaken by the snapshot held) is discarded, not committed.
        let older = snapshot_through(4);
        crate::storage::stage_snapshot(store.disk_mut(), &older, &mut Vec::new()).expect("stage");
        assert!(!store.commit_staged_snapshot(&older.meta).expect("discard"));
    }
}

#[test]
fn a_stage_for_another_snapshot_is_refused() {
    let (mut store, _) = LogStore::open_with(MemDisk::new(), test_config()).expect("open");
    store.persist(&append_persist(1, 10)).expect("persist");
    crate::storage::stage_snapshot(store.disk_mut(), &snapshot_through(5), &mut Vec::new())
        .expect("stage");
    let error = store
        .commit_staged_snapshot(&snapshot_through(6).meta)
        .expect_err("the staged file is through 5");
    assert!(matches!(error, StorageError::InvalidRequest(_)), "{error}");
}

/// The snapshot file is written in two pieces (a prefix, then the data from where it
/// lies) and read back without decoding the data through serde. Its bytes must still be
/// exactly a header and one record of the encoded `Snapshot`: the format
/// `FORMAT_VERSION` names, which older builds wrote and read.
#[test]
fn a_snapshot_file_is_a_header_and_one_record_of_the_encoded_snapshot() {
    use crate::storage::record::{encode_header, encode_record, MAGIC_SNAPSHOT};
    use crate::storage::SNAPSHOT_STAGED_FILE;
    // Lengths around the one-byte and multi-byte varint boundaries of the length prefix.
    for data_bytes in [0usize, 1, 250, 251, 252, 65_535, 65_536, 70_000] {
        let mut snapshot = snapshot_through(300);
        snapshot.data = std::sync::Arc::new((0..data_bytes).map(|i| i as u8).collect());
        let mut disk = MemDisk::new();
        crate::storage::stage_snapshot(&mut disk, &snapshot, &mut Vec::new()).expect("stage");
        let mut expected = Vec::new();
        encode_header(&mut expected, MAGIC_SNAPSHOT, 300);
        encode_record(&mut expected, &snapshot, u32::MAX as usize).expect("encode");
        let written = disk.read_all(SNAPSHOT_STAGED_FILE).expect("read");
        assert!(written == expected, "{data_bytes} bytes of data");

        let (mut store, _) = LogStore::open_with(MemDisk::new(), test_config()).expect("open");
        store.save_snapshot(&snapshot).expect("save");
        let (_, recovered) =
            LogStore::open_with(store.into_disk(), test_config()).expect("recover");
        assert_eq!(
            recovered.snapshot_bytes(),
            Ok(Some(snapshot)),
            "{data_bytes} bytes of data"
        );
    }
}

/// Recovery checks the snapshot's checksum reading the file a buffer at a time (the
/// node's 1 MiB here): a flip anywhere, in the first buffer, at a buffer's edge or in
/// the last partial one, is refused, and the undamaged file reads back whole.
#[test]
fn a_flip_anywhere_in_a_snapshot_larger_than_the_read_buffer_is_refused() {
    use crate::storage::testing::flip_byte;
    use crate::storage::{StoreConfig, SNAPSHOT_FILE, STREAM_BUFFER_BYTES};
    let test_config = StoreConfig::default;
    let data_bytes = 2 * STREAM_BUFFER_BYTES + 12_345;
    let mut snapshot = snapshot_through(300);
    snapshot.data = std::sync::Arc::new((0..data_bytes).map(|i| (i % 251) as u8).collect());
    let (mut store, _) = LogStore::open_with(MemDisk::new(), test_config()).expect("open");
    store.save_snapshot(&snapshot).expect("save");
    let disk = store.into_disk();
    let file_len = disk.len(SNAPSHOT_FILE).expect("len");
    let (_, recovered) = LogStore::open_with(disk.clone(), test_config()).expect("recover");
    assert_eq!(recovered.snapshot_bytes(), Ok(Some(snapshot)));
    let buffer = STREAM_BUFFER_BYTES as u64;
    for offset in [100, buffer, 2 * buffer + 40, file_len - 1] {
        let mut damaged = disk.clone();
        flip_byte(&mut damaged, SNAPSHOT_FILE, offset, 0x10).expect("flip");
        match LogStore::open_with(damaged, test_config()) {
            Err(StorageError::Corrupt { reason, .. }) => {
                assert_eq!(reason, CorruptReason::BadChecksum, "flip at {offset}")
            }
            other => panic!("flip at {offset}: {:?}", other.map(|_| ())),
        }
    }
}
