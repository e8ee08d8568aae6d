//! The suite's cases. Each takes a [`Harness`] and panics on a failed expectation;
//! [`crate::storage_suite_tests`] turns them into one `#[test]` each.

use super::{
    copy_files, entries, flip_byte, models_of, random_script, send_entry, snapshot_at, Harness,
    Model,
};
use crate::entry::{HardState, Persist};
use crate::storage::record::{read_record, RecordRead, HEADER_BYTES};
use crate::storage::{
    parse_segment_file_name, CorruptReason, Disk, DiskError, LogStore, Recovered, StorageError,
    ENTRY_BYTES_MAX, HARD_STATE_FILE, HARD_STATE_TMP_FILE, SNAPSHOT_FILE, SNAPSHOT_TMP_FILE,
};
use crate::types::{LogIndex, NodeId, Term};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Generates one `#[test]` per suite case; `$harness` builds a fresh [`Harness`].
#[macro_export]
macro_rules! storage_suite_tests {
    ($harness:expr) => {
        $crate::storage_suite_tests!(@cases $harness;
            disk_obeys_the_trait_contract,
            fresh_disk_recovers_empty,
            random_scripts_survive_restarts,
            rollover_and_suffix_truncation_across_segments,
            snapshot_compacts_the_prefix,
            snapshot_past_the_log_replaces_it,
            hard_state_survives_one_damaged_copy,
            torn_tail_is_cut_durably,
            damage_before_the_tail_is_reported,
            random_corruption_is_detected,
            invalid_requests_change_nothing,
            unsupported_version_is_refused,
            leftover_temp_files_are_removed,
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::storage::testing::$case(&mut $harness);
            }
        )*
    };
}

fn expect_state(recovered: &Recovered, model: &Model, context: &str) {
    let expected = model.recovered();
    assert_eq!(
        recovered.hard_state, expected.hard_state,
        "{context}: hard state"
    );
    assert_eq!(
        recovered.snapshot_bytes(),
        expected.snapshot_bytes(),
        "{context}: snapshot"
    );
    let indexes = |r: &Recovered| r.entries.iter().map(|e| e.index.0).collect::<Vec<_>>();
    assert_eq!(
        indexes(recovered),
        indexes(&expected),
        "{context}: entry indexes"
    );
    assert_eq!(recovered.entries, expected.entries, "{context}: entries");
}

/// Persists `p` and mirrors it in `model`.
fn persist<D: Disk>(store: &mut LogStore<D>, model: &mut Model, p: Persist) {
    store.persist(&p).expect("persist on a healthy disk");
    model.apply(&p);
}

fn append<D: Disk>(store: &mut LogStore<D>, model: &mut Model, count: u64, term: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(model.last_index());
    let p = Persist {
        entries: entries(&mut rng, model.last_index() + 1, term, count),
        ..Persist::default()
    };
    persist(store, model, p);
}

fn segment_files<D: Disk>(disk: &D) -> Vec<(u64, String)> {
    let mut files: Vec<(u64, String)> = disk
        .list()
        .expect("list")
        .into_iter()
        .filter_map(|f| parse_segment_file_name(&f).map(|i| (i.0, f)))
        .collect();
    files.sort();
    files
}

/// The offset of every record in a segment file, read independently of the store.
fn record_offsets<D: Disk>(disk: &D, file: &str) -> Vec<u64> {
    let bytes = disk.read_all(file).expect("read segment");
    let mut offsets = Vec::new();
    let mut offset = HEADER_BYTES;
    while let RecordRead::Valid { end, .. } = read_record(&bytes, offset, ENTRY_BYTES_MAX) {
        offsets.push(offset as u64);
        offset = end;
    }
    offsets
}

fn expect_corrupt(
    result: Result<(impl Sized, Recovered), StorageError>,
) -> (String, u64, CorruptReason) {
    match result {
        Err(StorageError::Corrupt {
            file,
            offset,
            reason,
        }) => (file, offset, reason),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok((_, recovered)) => panic!(
            "expected Corrupt, recovered {} entries",
            recovered.entries.len()
        ),
    }
}

/// The semantics storage relies on, checked on the disk itself.
pub fn disk_obeys_the_trait_contract<D: Disk>(h: &mut Harness<D>) {
    let mut disk = h.fresh_disk();
    assert_eq!(disk.list().expect("list"), Vec::<String>::new());
    assert!(matches!(disk.len("a"), Err(DiskError::NotFound { .. })));
    assert!(matches!(
        disk.write_at("a", 0, b"x"),
        Err(DiskError::NotFound { .. })
    ));
    assert!(matches!(
        disk.create("a/b"),
        Err(DiskError::InvalidName { .. })
    ));

    disk.create("b").expect("create");
    disk.create("a").expect("create");
    assert_eq!(disk.list().expect("list"), vec!["a", "b"]);
    disk.write_at("a", 0, b"hello").expect("write");
    disk.write_at("a", 8, b"!").expect("write past the end");
    assert_eq!(disk.read_all("a").expect("read"), b"hello\0\0\0!");
    let mut buf = [0; 3];
    disk.read_at("a", 1, &mut buf).expect("read_at");
    assert_eq!(&buf, b"ell");
    assert!(matches!(
        disk.read_at("a", 7, &mut buf),
        Err(DiskError::OutOfBounds { .. })
    ));
    disk.truncate("a", 4).expect("truncate");
    assert_eq!(disk.len("a").expect("len"), 4);
    disk.sync("a").expect("sync");

    disk.write_at("b", 0, b"bee").expect("write");
    disk.rename("a", "b").expect("rename replaces");
    assert_eq!(disk.list().expect("list"), vec!["b"]);
    assert_eq!(disk.read_all("b").expect("read"), b"hell");
    disk.write_at("b", 4, b"o").expect("write after rename");
    disk.sync("b").expect("sync after rename");
    disk.create("b").expect("create empties");
    assert_eq!(disk.len("b").expect("len"), 0);
    disk.remove("b").expect("remove");
    assert!(matches!(disk.remove("b"), Err(DiskError::NotFound { .. })));
    disk.sync_dir().expect("sync_dir");
    assert_eq!(disk.list().expect("list"), Vec::<String>::new());
}

pub fn fresh_disk_recovers_empty<D: Disk>(h: &mut Harness<D>) {
    let disk = h.fresh_disk();
    let (store, recovered) = h.open(disk).expect("open a fresh disk");
    let empty = |r: &Recovered| {
        r.hard_state == HardState::default() && r.snapshot.is_none() && r.entries.is_empty()
    };
    assert!(empty(&recovered), "{recovered:?}");
    assert_eq!(store.first_index(), LogIndex(1));
    assert_eq!(store.last_index(), LogIndex(0));
    let (_, recovered) = h.restart(store).expect("reopen");
    assert!(empty(&recovered), "{recovered:?}");
}

pub fn random_scripts_survive_restarts<D: Disk>(h: &mut Harness<D>) {
    for seed in 0..3 {
        let script = random_script(seed, 60);
        let disk = h.fresh_disk();
        let (mut store, _) = h.open(disk).expect("open");
        let mut model = Model::default();
        for (step, p) in script.into_iter().enumerate() {
            persist(&mut store, &mut model, p);
            assert_eq!(
                store.last_index().0,
                model.last_index(),
                "seed {seed} step {step}"
            );
            if step % 7 == 6 {
                let (reopened, recovered) = h.restart(store).expect("restart");
                expect_state(&recovered, &model, &format!("seed {seed} step {step}"));
                store = reopened;
            }
        }
        let (_, recovered) = h.restart(store).expect("restart");
        expect_state(&recovered, &model, &format!("seed {seed} end"));
    }
}

pub fn rollover_and_suffix_truncation_across_segments<D: Disk>(h: &mut Harness<D>) {
    let disk = h.fresh_disk();
    let (mut store, _) = h.open(disk).expect("open");
    let mut model = Model::default();
    for _ in 0..20 {
        append(&mut store, &mut model, 10, 1);
    }
    let segments = segment_files(store.disk());
    assert!(segments.len() > 5, "200 entries roll over: {segments:?}");
    assert_eq!(segments.len(), store.segment_count());

    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let from = segments[2].0 + 3;
    let p = Persist {
        truncate_from: Some(LogIndex(from)),
        entries: entries(&mut rng, from, 2, 4),
        hard_state: Some(HardState {
            term: Term(2),
            voted_for: None,
        }),
        ..Persist::default()
    };
    persist(&mut store, &mut model, p);
    let after = segment_files(store.disk());
    assert_eq!(
        after.len(),
        3,
        "segments past the cut are removed: {after:?}"
    );
    let (store, recovered) = h.restart(store).expect("restart");
    expect_state(&recovered, &model, "after truncation");

    // Truncating exactly at a segment boundary removes that whole segment.
    let mut store = store;
    let boundary = segment_files(store.disk())[1].0;
    let p = Persist {
        truncate_from: Some(LogIndex(boundary)),
        ..Persist::default()
    };
    persist(&mut store, &mut model, p);
    assert_eq!(segment_files(store.disk()).len(), 1);
    append(&mut store, &mut model, 3, 2);
    let (_, recovered) = h.restart(store).expect("restart");
    expect_state(&recovered, &model, "after boundary truncation");
}

pub fn snapshot_compacts_the_prefix<D: Disk>(h: &mut Harness<D>) {
    let disk = h.fresh_disk();
    let (mut store, _) = h.open(disk).expect("open");
    let mut model = Model::default();
    for _ in 0..20 {
        append(&mut store, &mut model, 10, 1);
    }
    let before = segment_files(store.disk()).len();
    let p = Persist {
        snapshot: Some(snapshot_at(150, 1, b"state through 150".to_vec())),
        ..Persist::default()
    };
    persist(&mut store, &mut model, p);
    let after = segment_files(store.disk());
    assert!(after.len() < before, "{before} segments, then {after:?}");
    assert!(
        after[0].0 <= 151,
        "the segment holding 151 stays: {after:?}"
    );
    assert!(after.get(1).is_none_or(|s| s.0 > 151), "{after:?}");
    assert_eq!(store.first_index(), LogIndex(151));
    let (mut store, recovered) = h.restart(store).expect("restart");
    expect_state(&recovered, &model, "after compaction");
    assert_eq!(
        recovered.entries.first().map(|e| e.index),
        Some(LogIndex(151))
    );

    // A snapshot through the last entry leaves no segment at all.
    let p = Persist {
        snapshot: Some(snapshot_at(200, 1, b"state through 200".to_vec())),
        ..Persist::default()
    };
    persist(&mut store, &mut model, p);
    assert_eq!(segment_files(store.disk()), vec![]);
    let (mut store, recovered) = h.restart(store).expect("restart");
    expect_state(&recovered, &model, "after full compaction");
    append(&mut store, &mut model, 5, 1);
    let (_, recovered) = h.restart(store).expect("restart");
    expect_state(&recovered, &model, "appended after full compaction");
}

pub fn snapshot_past_the_log_replaces_it<D: Disk>(h: &mut Harness<D>) {
    let disk = h.fresh_disk();
    let (mut store, _) = h.open(disk).expect("open");
    let mut model = Model::default();
    append(&mut store, &mut model, 20, 1);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let p = Persist {
        snapshot: Some(snapshot_at(100, 3, vec![7; 500])),
        truncate_from: Some(LogIndex(1)),
        entries: entries(&mut rng, 101, 3, 5),
        hard_state: Some(HardState {
            term: Term(3),
            voted_for: Some(NodeId(2)),
        }),
    };
    persist(&mut store, &mut model, p);
    assert_eq!(store.last_index(), LogIndex(105));
    let (_, recovered) = h.restart(store).expect("restart");
    expect_state(&recovered, &model, "snapshot past the log");
}

pub fn hard_state_survives_one_damaged_copy<D: Disk>(h: &mut Harness<D>) {
    let disk = h.fresh_disk();
    let (mut store, _) = h.open(disk).expect("open");
    let mut model = Model::default();
    for term in 1..=3 {
        let p = Persist {
            hard_state: Some(HardState {
                term: Term(term),
                voted_for: Some(NodeId(term)),
            }),
            ..Persist::default()
        };
        persist(&mut store, &mut model, p);
    }
    let (mut store, recovered) = h.restart(store).expect("restart");
    expect_state(&recovered, &model, "hard state");

    let copy_bytes = 64;
    for copy in 0..2 {
        let offset = (HEADER_BYTES + copy * copy_bytes + 10) as u64;
        flip_byte(store.disk_mut(), HARD_STATE_FILE, offset, 0x10).expect("flip");
        let (reopened, recovered) = h.restart(store).expect("the other copy is intact");
        expect_state(&recovered, &model, &format!("copy {copy} damaged"));
        store = reopened;
        flip_byte(store.disk_mut(), HARD_STATE_FILE, offset, 0x10).expect("flip back");
    }
    for copy in 0..2 {
        let offset = (HEADER_BYTES + copy * copy_bytes + 12) as u64;
        flip_byte(store.disk_mut(), HARD_STATE_FILE, offset, 0x01).expect("flip");
    }
    let (file, _, reason) = expect_corrupt(h.restart(store));
    assert_eq!(file, HARD_STATE_FILE);
    assert_eq!(reason, CorruptReason::NoValidHardState);
}

pub fn torn_tail_is_cut_durably<D: Disk>(h: &mut Harness<D>) {
    let disk = h.fresh_disk();
    let (mut store, _) = h.open(disk).expect("open");
    let mut model = Model::default();
    // Small enough that the next entry lands in the same segment.
    append(&mut store, &mut model, 4, 1);
    let (_, file) = segment_files(store.disk()).pop().expect("a segment");
    let kept_len = store.disk().len(&file).expect("len");
    let kept = model.clone();
    append(&mut store, &mut model, 1, 1);
    assert_eq!(segment_files(store.disk()).len(), 1);
    let full_len = store.disk().len(&file).expect("len");
    let template = store.into_disk();

    for cut in [kept_len + 1, kept_len + 7, kept_len + 8, full_len - 1] {
        let mut disk = h.fresh_disk();
        copy_files(&template, &mut disk).expect("copy");
        disk.truncate(&file, cut).expect("tear");
        let (store, recovered) = h.open(disk).expect("a torn tail is not corruption");
        expect_state(&recovered, &kept, &format!("cut at {cut}"));
        assert_eq!(
            store.disk().len(&file).expect("len"),
            kept_len,
            "cut at {cut}"
        );
        let (mut store, recovered) = h.restart(store).expect("restart");
        expect_state(&recovered, &kept, &format!("cut at {cut}, again"));
        let mut model = kept.clone();
        append(&mut store, &mut model, 2, 1);
        let (_, recovered) = h.restart(store).expect("restart");
        expect_state(&recovered, &model, &format!("cut at {cut}, appended"));
    }
}

pub fn damage_before_the_tail_is_reported<D: Disk>(h: &mut Harness<D>) {
    let disk = h.fresh_disk();
    let (mut store, _) = h.open(disk).expect("open");
    let mut model = Model::default();
    for _ in 0..6 {
        append(&mut store, &mut model, 5, 1);
    }
    let segments = segment_files(store.disk());
    assert!(segments.len() >= 3, "{segments:?}");
    let template = store.into_disk();
    let (_, first) = &segments[0];
    let (_, middle) = &segments[1];
    let (_, last) = &segments[segments.len() - 1];
    let first_records = record_offsets(&template, first);
    let last_records = record_offsets(&template, last);
    assert!(last_records.len() >= 2, "{last_records:?}");

    let cases = [
        (first, first_records[1] + 12, first_records[1]),
        (first, first_records[1], first_records[1]),
        (last, last_records[0] + 9, last_records[0]),
        (last, last_records[0] + 1, last_records[0]),
        (middle, 3, 0),
    ];
    for (file, offset, reported) in cases {
        let mut disk = h.fresh_disk();
        copy_files(&template, &mut disk).expect("copy");
        flip_byte(&mut disk, file, offset, 0x04).expect("flip");
        let (found_file, found_offset, reason) = expect_corrupt(h.open(disk));
        assert_eq!(
            (&found_file, found_offset),
            (file, reported),
            "flip at {file}:{offset}: {reason}"
        );
    }

    let mut disk = h.fresh_disk();
    copy_files(&template, &mut disk).expect("copy");
    disk.remove(middle).expect("remove");
    let (found_file, _, reason) = expect_corrupt(h.open(disk));
    assert_eq!(&found_file, &segments[2].1);
    assert!(
        matches!(reason, CorruptReason::NonContiguous { .. }),
        "{reason}"
    );
}

pub fn random_corruption_is_detected<D: Disk>(h: &mut Harness<D>) {
    let script = random_script(7, 40);
    let model = models_of(&script)
        .pop()
        .expect("models start with the empty one");
    let disk = h.fresh_disk();
    let (mut store, _) = h.open(disk).expect("open");
    for p in &script {
        store.persist(p).expect("persist");
    }
    let template = store.into_disk();
    let files = template.list().expect("list");
    let last_segment = segment_files(&template).pop().map(|(_, f)| f);
    let (mut detected, mut cut) = (0, 0);
    for case in 0..h.corruption_cases {
        let mut rng = ChaCha8Rng::seed_from_u64(case);
        let mut disk = h.fresh_disk();
        copy_files(&template, &mut disk).expect("copy");
        let file = &files[rng.random_range(0..files.len())];
        let len = disk.len(file).expect("len");
        let flips: Vec<u64> = (0..rng.random_range(1..=3))
            .map(|_| rng.random_range(0..len))
            .collect();
        for &offset in &flips {
            flip_byte(&mut disk, file, offset, rng.random_range(1..=255)).expect("flip");
        }
        let context = format!("case {case}: flips {flips:?} in {file}");
        match h.open(disk) {
            Ok((store, recovered)) => {
                let expected = model.recovered();
                assert_eq!(recovered.hard_state, expected.hard_state, "{context}");
                let snapshot = recovered.snapshot_bytes();
                assert_eq!(snapshot, expected.snapshot_bytes(), "{context}");
                let kept = recovered.entries.len();
                assert_eq!(recovered.entries[..], expected.entries[..kept], "{context}");
                if kept < expected.entries.len() {
                    // Only the last record can pass for a torn write.
                    assert_eq!(kept + 1, expected.entries.len(), "{context}");
                    assert_eq!(Some(file), last_segment.as_ref(), "{context}");
                    cut += 1;
                }
                let (_, again) = h.restart(store).expect("repairs are durable");
                assert_eq!(again.hard_state, recovered.hard_state, "{context}");
                assert_eq!(again.snapshot_bytes(), snapshot, "{context}");
                assert_eq!(again.entries, recovered.entries, "{context}");
            }
            Err(StorageError::Corrupt {
                file: found,
                offset,
                ..
            }) => {
                assert_eq!(&found, file, "{context}");
                let last_flip = flips.iter().max().copied().unwrap_or(0);
                assert!(offset <= last_flip, "{context}: reported offset {offset}");
                detected += 1;
            }
            Err(other) => panic!("{context}: {other}"),
        }
    }
    // The cases must exercise both outcomes, or the test proves little.
    if h.corruption_cases >= 400 {
        assert!(detected > h.corruption_cases / 2, "{detected} detected");
        assert!(cut > 0, "no case cut a damaged last record");
    }
}

pub fn invalid_requests_change_nothing<D: Disk>(h: &mut Harness<D>) {
    let disk = h.fresh_disk();
    let (mut store, _) = h.open(disk).expect("open");
    let mut model = Model::default();
    let hard_state = HardState {
        term: Term(2),
        voted_for: Some(NodeId(1)),
    };
    let p = Persist {
        hard_state: Some(hard_state),
        snapshot: Some(snapshot_at(10, 2, vec![1, 2, 3])),
        entries: vec![send_entry(11, 2, 10)],
        ..Persist::default()
    };
    persist(&mut store, &mut model, p);

    let invalid = [
        Persist {
            entries: vec![send_entry(13, 2, 10)],
            ..Persist::default()
        },
        Persist {
            entries: vec![send_entry(12, 2, 10), send_entry(14, 2, 10)],
            ..Persist::default()
        },
        Persist {
            entries: vec![send_entry(12, 2, ENTRY_BYTES_MAX)],
            ..Persist::default()
        },
        Persist {
            snapshot: Some(snapshot_at(5, 1, vec![])),
            ..Persist::default()
        },
        Persist {
            hard_state: Some(HardState {
                term: Term(1),
                voted_for: None,
            }),
            ..Persist::default()
        },
        Persist {
            hard_state: Some(HardState {
                term: Term(2),
                voted_for: Some(NodeId(3)),
            }),
            entries: vec![send_entry(12, 2, 10)],
            ..Persist::default()
        },
    ];
    for p in invalid {
        match store.persist(&p) {
            Err(StorageError::InvalidRequest(_)) => {}
            other => panic!("expected InvalidRequest for {p:?}, got {other:?}"),
        }
    }
    append(&mut store, &mut model, 2, 2);
    let (_, recovered) = h.restart(store).expect("restart");
    expect_state(&recovered, &model, "after refused requests");
}

pub fn unsupported_version_is_refused<D: Disk>(h: &mut Harness<D>) {
    let disk = h.fresh_disk();
    let (mut store, _) = h.open(disk).expect("open");
    let mut model = Model::default();
    append(&mut store, &mut model, 3, 1);
    let (_, file) = segment_files(store.disk()).pop().expect("a segment");
    let mut header = [0; HEADER_BYTES];
    store.disk().read_at(&file, 0, &mut header).expect("read");
    header[8] += 1; // the version's low byte
    let crc = crc32c::crc32c(&header[..20]);
    header[20..].copy_from_slice(&crc.to_le_bytes());
    store.disk_mut().write_at(&file, 0, &header).expect("write");
    match h.restart(store) {
        Err(StorageError::UnsupportedVersion { file: found, .. }) => assert_eq!(found, file),
        other => panic!(
            "expected UnsupportedVersion, got {:?}",
            other.map(|(_, r)| r)
        ),
    }
}

pub fn leftover_temp_files_are_removed<D: Disk>(h: &mut Harness<D>) {
    let disk = h.fresh_disk();
    let (mut store, _) = h.open(disk).expect("open");
    let mut model = Model::default();
    append(&mut store, &mut model, 3, 1);
    for tmp in [SNAPSHOT_TMP_FILE, HARD_STATE_TMP_FILE] {
        store.disk_mut().create(tmp).expect("create");
        store
            .disk_mut()
            .write_at(tmp, 0, b"half-written")
            .expect("write");
    }
    let (store, recovered) = h.restart(store).expect("restart");
    expect_state(&recovered, &model, "with leftovers");
    let files = store.disk().list().expect("list");
    assert!(!files.iter().any(|f| f.ends_with(".tmp")), "{files:?}");
    assert!(!files.iter().any(|f| f == SNAPSHOT_FILE), "{files:?}");
}
