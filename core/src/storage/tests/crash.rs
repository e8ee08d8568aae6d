//! Power loss after every single disk operation of scripted workloads, with unsynced
//! writes lost, kept or torn by seeded RNGs, then recovery checked against a model:
//! everything synced is there, nothing is half there, the log is a valid prefix of
//! what was written, and term and vote never go backwards.

use crate::entry::{Persist, Snapshot};
use crate::storage::testing::{models_of, random_script, send_entry, test_config, Model};
use crate::storage::{CrashReport, LogStore, MemDisk, Recovered, WriteFate};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const SCRIPT_COUNT: u64 = 3;
const SCRIPT_PERSISTS: usize = 30;
const CRASH_SEEDS: u64 = 4;

/// Runs `script` on a fresh disk that fails every operation after the first
/// `ops_allowed`; returns the disk and how many persists completed (and so are synced).
fn run_until_fault(script: &[Persist], ops_allowed: u64) -> (MemDisk, usize) {
    let mut disk = MemDisk::new();
    disk.set_fail_after_ops(Some(ops_allowed));
    let (mut store, _) =
        LogStore::open_with(disk, test_config()).expect("opening a fresh disk writes nothing");
    let completed = script
        .iter()
        .take_while(|p| store.persist(p).is_ok())
        .count();
    (store.into_disk(), completed)
}

/// The states a crash may leave: `synced` is the model after the completed persists,
/// `in_flight` the persist that was running (if any) and the model after it.
struct Allowed<'a> {
    synced: &'a Model,
    in_flight: Option<(&'a Persist, &'a Model)>,
}

impl Allowed<'_> {
    fn target(&self) -> &Model {
        self.in_flight.map_or(self.synced, |(_, model)| model)
    }

    fn check(&self, recovered: &Recovered, context: &str) {
        let (synced, target) = (self.synced, self.target());
        assert!(
            recovered.hard_state == synced.hard_state || recovered.hard_state == target.hard_state,
            "{context}: hard state {:?}, synced {:?}",
            recovered.hard_state,
            synced.hard_state
        );
        let recovered_snapshot = recovered.snapshot_bytes().expect("read the snapshot");
        let same_snapshot = |s: &Option<Snapshot>| *s == recovered_snapshot;
        assert!(
            same_snapshot(&synced.snapshot) || same_snapshot(&target.snapshot),
            "{context}: snapshot {:?}",
            recovered.snapshot.as_ref().map(|s| &s.meta)
        );
        let snapshot_last = recovered
            .snapshot
            .as_ref()
            .map_or(0, |s| s.meta.last_index.0);

        // Contiguous from the snapshot on; each entry as the old or the new log has it,
        // and once an entry only the new log has appears, the rest are the new log's.
        let mut from_target_only = false;
        for (k, entry) in recovered.entries.iter().enumerate() {
            let index = entry.index.0;
            assert_eq!(
                index,
                snapshot_last + 1 + k as u64,
                "{context}: not contiguous"
            );
            let in_synced = synced.entries.get(&index) == Some(entry);
            let in_target = target.entries.get(&index) == Some(entry);
            assert!(
                in_synced || in_target,
                "{context}: entry {index} was never written"
            );
            assert!(
                !from_target_only || in_target,
                "{context}: entry {index} mixes logs"
            );
            from_target_only |= !in_synced;
        }

        // Every synced entry is there, unless the in-flight persist disowned it or the
        // recovered snapshot covers it. Entries the new snapshot covers are committed, so
        // a truncation never disowns them: they stay until that snapshot is durable.
        let truncate_from = self.in_flight.and_then(|(p, _)| p.truncate_from);
        let target_snapshot_last = target.snapshot.as_ref().map_or(0, |s| s.meta.last_index.0);
        let present = |index: u64| {
            recovered
                .entries
                .get((index - snapshot_last - 1) as usize)
                .is_some()
        };
        for &index in synced.entries.keys() {
            let disowned =
                truncate_from.is_some_and(|from| index >= from.0) && index > target_snapshot_last;
            if index > snapshot_last && !disowned {
                assert!(present(index), "{context}: synced entry {index} lost");
            }
        }
    }
}

/// Recovers, checks the outcome, then proves the repaired store takes appends.
fn recover_and_check(disk: MemDisk, allowed: &Allowed, context: &str) {
    let (mut store, recovered) = LogStore::open_with(disk, test_config())
        .unwrap_or_else(|error| panic!("{context}: recovery failed: {error}"));
    allowed.check(&recovered, context);

    let next = store.last_index().next();
    let term = recovered.hard_state.term.0.max(1);
    let p = Persist {
        entries: vec![send_entry(next.0, term, 20)],
        ..Persist::default()
    };
    store
        .persist(&p)
        .unwrap_or_else(|error| panic!("{context}: append after recovery: {error}"));
    let (_, again) = LogStore::open_with(store.into_disk(), test_config())
        .unwrap_or_else(|error| panic!("{context}: second recovery: {error}"));
    assert_eq!(again.entries.last(), p.entries.last(), "{context}");
    assert_eq!(
        again.entries[..again.entries.len() - 1],
        recovered.entries[..],
        "{context}"
    );
}

fn add(total: &mut CrashReport, report: CrashReport) {
    total.writes_lost += report.writes_lost;
    total.writes_kept += report.writes_kept;
    total.writes_torn += report.writes_torn;
    total.dir_ops_lost += report.dir_ops_lost;
    total.dir_ops_kept += report.dir_ops_kept;
}

#[test]
fn crash_after_every_operation_loses_nothing_synced() {
    let mut total = CrashReport::default();
    let mut crash_points = 0;
    for script_seed in 0..SCRIPT_COUNT {
        let script = random_script(100 + script_seed, SCRIPT_PERSISTS);
        let models = models_of(&script);
        for ops_allowed in 0.. {
            let (disk, completed) = run_until_fault(&script, ops_allowed);
            let allowed = Allowed {
                synced: &models[completed],
                in_flight: script.get(completed).map(|p| (p, &models[completed + 1])),
            };
            for crash_seed in 0..CRASH_SEEDS {
                let mut crashed = disk.clone();
                let seed = (script_seed << 40) | (ops_allowed << 8) | crash_seed;
                add(
                    &mut total,
                    crashed.crash(&mut ChaCha8Rng::seed_from_u64(seed)),
                );
                let context = format!(
                    "script {script_seed}, crash after op {ops_allowed} (persist {completed}), seed {seed}"
                );
                recover_and_check(crashed, &allowed, &context);
            }
            crash_points += 1;
            if completed == script.len() {
                break;
            }
        }
    }
    // The model must have been exercised: every kind of outcome happened.
    assert!(crash_points > 300, "{crash_points} crash points");
    assert!(total.writes_torn > 100, "{total:?}");
    assert!(total.writes_lost > 100, "{total:?}");
    assert!(total.dir_ops_lost > 20, "{total:?}");
}

#[test]
fn crash_during_recovery_is_recovered_too() {
    let mut recoveries_interrupted = 0;
    let script = random_script(200, SCRIPT_PERSISTS);
    let models = models_of(&script);
    for ops_allowed in (0..).step_by(3) {
        let (disk, completed) = run_until_fault(&script, ops_allowed);
        let allowed = Allowed {
            synced: &models[completed],
            in_flight: script.get(completed).map(|p| (p, &models[completed + 1])),
        };
        let mut crashed = disk;
        crashed.crash(&mut ChaCha8Rng::seed_from_u64(ops_allowed));
        // Interrupt recovery after each of its own operations, crash again, recover.
        for recovery_ops in 0.. {
            let mut disk = crashed.clone();
            disk.set_fail_after_ops(Some(recovery_ops));
            // Borrowed, so that the disk outlives the failed recovery.
            if LogStore::open_with(&mut disk, test_config()).is_ok() {
                break;
            }
            recoveries_interrupted += 1;
            let mut interrupted = disk;
            interrupted.crash(&mut ChaCha8Rng::seed_from_u64(recovery_ops + 1000));
            let context = format!("crash after op {ops_allowed}, recovery op {recovery_ops}");
            recover_and_check(interrupted, &allowed, &context);
        }
        if completed == script.len() {
            break;
        }
    }
    assert!(recoveries_interrupted > 10, "{recoveries_interrupted}");
}

/// Every way a crash can treat the pending operations of `disk`: each write lost,
/// kept, or torn at each byte, each directory operation lost or kept.
fn every_crash_of(disk: &MemDisk) -> Vec<MemDisk> {
    let mut write_lens = Vec::new();
    let mut dir_op_count = 0;
    disk.clone().crash_with(
        |len_bytes| {
            write_lens.push(len_bytes);
            WriteFate::Kept
        },
        || {
            dir_op_count += 1;
            true
        },
    );
    let fates_of = |len_bytes: usize| {
        let torn = (0..len_bytes).map(|kept_bytes| WriteFate::Torn { kept_bytes });
        [WriteFate::Lost, WriteFate::Kept].into_iter().chain(torn)
    };
    let mut combinations: Vec<Vec<WriteFate>> = vec![vec![]];
    for &len_bytes in &write_lens {
        combinations = combinations
            .into_iter()
            .flat_map(|prefix| {
                fates_of(len_bytes).map(move |fate| {
                    let mut fates = prefix.clone();
                    fates.push(fate);
                    fates
                })
            })
            .collect();
    }
    let mut crashed = Vec::new();
    for fates in &combinations {
        for dir_ops_kept in 0..1u32 << dir_op_count {
            let mut disk = disk.clone();
            let mut fates = fates.iter().copied();
            let mut dir_op = 0;
            disk.crash_with(
                |_| fates.next().unwrap_or(WriteFate::Kept),
                || {
                    dir_op += 1;
                    dir_ops_kept & (1 << (dir_op - 1)) != 0
                },
            );
            crashed.push(disk);
        }
    }
    crashed
}

/// Hard-state updates are rare in the scripts above, and a random tear seldom lands in
/// the few bytes of a copy that matter, so the hard state gets an exhaustive test:
/// after each operation of each save, every tear of every pending write.
#[test]
fn hard_state_survives_every_tear_of_every_save() {
    let script: Vec<Persist> = (1..=4)
        .map(|term| Persist {
            hard_state: Some(crate::entry::HardState {
                term: crate::types::Term(term),
                voted_for: Some(crate::types::NodeId(term % 3 + 1)),
            }),
            ..Persist::default()
        })
        .collect();
    let models = models_of(&script);
    let mut crashes = 0;
    for ops_allowed in 0.. {
        let (disk, completed) = run_until_fault(&script, ops_allowed);
        let allowed = Allowed {
            synced: &models[completed],
            in_flight: script.get(completed).map(|p| (p, &models[completed + 1])),
        };
        for crashed in every_crash_of(&disk) {
            let context = format!("op {ops_allowed}, crash {crashes}");
            let (_, recovered) = LogStore::open_with(crashed, test_config())
                .unwrap_or_else(|error| panic!("{context}: {error}"));
            allowed.check(&recovered, &context);
            crashes += 1;
        }
        if completed == script.len() {
            break;
        }
    }
    assert!(crashes > 500, "{crashes} crashes");
}
