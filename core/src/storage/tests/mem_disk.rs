//! The in-memory disk's crash model is what every crash test trusts, so it is tested
//! directly.

use crate::storage::{Disk, DiskError, MemDisk};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn durable_file(name: &str, content: &[u8]) -> MemDisk {
    let mut disk = MemDisk::new();
    disk.create(name).expect("create");
    disk.write_at(name, 0, content).expect("write");
    disk.sync(name).expect("sync");
    disk.sync_dir().expect("sync_dir");
    disk
}

#[test]
fn synced_data_survives_every_crash() {
    for seed in 0..20 {
        let mut disk = durable_file("a", b"durable");
        let report = disk.crash(&mut rng(seed));
        assert_eq!(
            report.writes_lost + report.writes_kept + report.writes_torn,
            0
        );
        assert_eq!(disk.read_all("a").expect("read"), b"durable");
    }
}

#[test]
fn unsynced_write_is_lost_kept_or_torn_to_a_prefix() {
    let (mut lost, mut kept, mut torn) = (0, 0, 0);
    for seed in 0..60 {
        let mut disk = durable_file("a", b"0123456789");
        disk.write_at("a", 10, b"abcdefghij").expect("write");
        assert_eq!(disk.read_all("a").expect("read"), b"0123456789abcdefghij");
        disk.crash(&mut rng(seed));
        let content = disk.read_all("a").expect("read");
        let full = b"0123456789abcdefghij";
        assert!(full.starts_with(&content), "seed {seed}: {content:?}");
        assert!(content.len() >= 10, "synced bytes stay: {content:?}");
        match content.len() {
            10 => lost += 1,
            20 => kept += 1,
            _ => torn += 1,
        }
    }
    assert!(lost > 0 && kept > 0 && torn > 0, "{lost} {kept} {torn}");
}

#[test]
fn unsynced_directory_operations_may_vanish_but_rename_is_atomic() {
    let (mut old, mut new) = (0, 0);
    for seed in 0..40 {
        let mut disk = durable_file("target", b"old");
        disk.create("tmp").expect("create");
        disk.write_at("tmp", 0, b"new").expect("write");
        disk.sync("tmp").expect("sync");
        disk.rename("tmp", "target").expect("rename");
        disk.create("other").expect("create");
        disk.crash(&mut rng(seed));
        match disk
            .read_all("target")
            .expect("target always exists")
            .as_slice()
        {
            b"old" => old += 1,
            b"new" => new += 1,
            other => panic!("seed {seed}: target holds {other:?}"),
        }
        if let Ok(content) = disk.read_all("other") {
            assert!(content.is_empty());
        }
    }
    assert!(old > 0 && new > 0, "{old} {new}");
}

#[test]
fn directory_changes_are_durable_after_sync_dir() {
    let mut disk = durable_file("a", b"x");
    disk.remove("a").expect("remove");
    disk.create("b").expect("create");
    disk.sync("b").expect("sync");
    disk.sync_dir().expect("sync_dir");
    for seed in 0..10 {
        let mut crashed = disk.clone();
        crashed.crash(&mut rng(seed));
        assert_eq!(crashed.list().expect("list"), vec!["b".to_string()]);
    }
}

#[test]
fn crash_is_a_function_of_the_seed() {
    let mut disk = durable_file("a", b"0123");
    for k in 0..8u8 {
        disk.write_at("a", 4 + u64::from(k) * 3, &[k; 3])
            .expect("write");
    }
    disk.create("b").expect("create");
    let (mut one, mut two) = (disk.clone(), disk);
    one.crash(&mut rng(9));
    two.crash(&mut rng(9));
    assert_eq!(one.list().expect("list"), two.list().expect("list"));
    assert_eq!(one.read_all("a").expect("a"), two.read_all("a").expect("a"));
}

#[test]
fn injected_fault_fails_every_later_operation() {
    let mut disk = MemDisk::new();
    disk.set_fail_after_ops(Some(2));
    disk.create("a").expect("first op");
    disk.write_at("a", 0, b"x").expect("second op");
    assert!(matches!(disk.sync("a"), Err(DiskError::Io { .. })));
    assert!(matches!(disk.sync_dir(), Err(DiskError::Io { .. })));
    assert_eq!(disk.stats().ops, 2);
    assert_eq!(disk.read_all("a").expect("reads still work"), b"x");
    disk.set_fail_after_ops(None);
    disk.sync("a").expect("healed");
}

#[test]
fn injected_fault_at_the_nth_operation_of_a_kind() {
    use crate::storage::DiskOpKind;
    let mut disk = MemDisk::new();
    disk.set_fail_at_kind(Some((DiskOpKind::SegmentCreate, 1)));
    disk.create("a").expect("not a segment");
    disk.create("1.seg")
        .expect("the first segment creation is skipped");
    disk.write_at("1.seg", 0, b"x").expect("writes go on");
    assert!(matches!(disk.create("2.seg"), Err(DiskError::Io { .. })));
    assert!(
        matches!(disk.sync_dir(), Err(DiskError::Io { .. })),
        "and every later op"
    );
    disk.crash(&mut rng(0));
    disk.create("3.seg").expect("a crash heals the fault");
}

#[test]
fn corruption_persists_across_a_crash() {
    let mut disk = durable_file("a", b"abc");
    disk.corrupt("a", 1, 0xff).expect("corrupt");
    assert_eq!(disk.read_all("a").expect("read"), [b'a', !b'b', b'c']);
    disk.crash(&mut rng(0));
    assert_eq!(disk.read_all("a").expect("read"), [b'a', !b'b', b'c']);
    assert!(disk.corrupt("a", 3, 1).is_err());
    assert!(disk.corrupt("missing", 0, 1).is_err());
}

#[test]
fn names_with_separators_are_refused() {
    let mut disk = MemDisk::new();
    for name in ["", "a/b", "..", "."] {
        assert!(matches!(
            disk.create(name),
            Err(DiskError::InvalidName { .. })
        ));
    }
}
