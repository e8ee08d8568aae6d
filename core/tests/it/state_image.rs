//! The copy-on-write state behind a snapshot image: it encodes exactly as the plain maps
//! it replaced (the format `FORMAT_VERSION` 3 names), and an image taken from it does not
//! change when the state goes on changing.

use chat_core::app::{ApplyContext, Auth, ChatState, Command, CommandOutput};
use chat_core::entry::SessionRef;
use chat_core::entry::SnapshotMeta;
use chat_core::machine::{fnv1a64, MachineState, SnapshotImage};
use chat_core::session::SessionOwner;
use chat_core::snapshot_source::snapshot_checksum;
use chat_core::storage::{
    open_snapshot_source, Disk, LogStore, MemDisk, StorageError, SNAPSHOT_FILE, STREAM_BUFFER_BYTES,
};
use chat_core::{Config, LogIndex, NodeId, SessionId, Term, Time};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn apply(state: &mut MachineState, index: u64, command: &Command) -> CommandOutput {
    let ctx = ApplyContext {
        index: LogIndex(index),
        timestamp: Time(1_000 * index),
    };
    state.log_time = ctx.timestamp;
    match ChatState::apply(&mut state.chat, ctx, command, &mut Vec::new()) {
        Ok(output) => output,
        Err(error) => panic!("entry {index}: {error}"),
    }
}

/// A small state that uses every part: accounts, read and unread messages, a deleted
/// sender, sessions with a stored response.
fn sample_state() -> MachineState {
    let mut state = MachineState::new(&Config::new(NodeId(1), vec![NodeId(1)]));
    let auth = |user: &str, generation: u64| Auth {
        user: user.to_owned(),
        generation,
        token_epoch: 0,
    };
    for (index, user) in [(1, "ann"), (2, "bob"), (3, "cy")] {
        let command = Command::CreateAccount {
            user: user.to_owned(),
            password_hash: format!("hash-of-{user}"),
            registration: u128::from(index) << 64,
        };
        apply(&mut state, index, &command);
    }
    let mut index = 3;
    for (from, generation, to) in [("ann", 1, "bob"), ("bob", 2, "ann"), ("cy", 3, "bob")] {
        index += 1;
        let command = Command::Send {
            auth: auth(from, generation),
            to: to.to_owned(),
            body: format!("message {index} from {from}"),
        };
        apply(&mut state, index, &command);
    }
    index += 1;
    let read = Command::ReadMessages {
        auth: auth("bob", 2),
        limit: 1,
    };
    let response = apply(&mut state, index, &read);
    let owner = SessionOwner {
        user: "bob".to_owned(),
        generation: 2,
    };
    let session = SessionId(index);
    state
        .sessions
        .open(session, owner, Time(1_000 * index))
        .expect("an empty table has room");
    state.sessions.record(
        SessionRef {
            id: session,
            seq: 1,
        },
        0x1234,
        Ok(response),
        Time(1_000 * index),
    );
    index += 1;
    apply(
        &mut state,
        index,
        &Command::DeleteAccount {
            auth: auth("cy", 3),
        },
    );
    state
}

/// The length and digest were taken from the encoding of the same state before the
/// state became copy-on-write (commit c2271e2, plain maps of plain values).
#[test]
fn the_state_encodes_as_format_version_3() {
    let bytes = sample_state().encode();
    assert_eq!(
        (bytes.len(), fnv1a64(&bytes)),
        (249, 0x56e0_06cd_151f_c62c),
        "the snapshot encoding changed: bump storage FORMAT_VERSION"
    );
}

/// Every kind of mutation after the image is taken (a send, a read that marks messages
/// read, a deleted account, a session's new response) leaves the image as it was, bytes
/// and hash, while the live state's incremental digest stays right.
#[test]
fn an_image_does_not_change_when_the_state_does() {
    let mut state = sample_state();
    let image = SnapshotImage {
        meta: SnapshotMeta {
            last_index: LogIndex(9),
            last_term: Term(1),
        },
        state: state.clone(),
    };
    let bytes_before = state.encode();
    let hash_before = state.state_hash();
    let auth = |user: &str, generation: u64| Auth {
        user: user.to_owned(),
        generation,
        token_epoch: 0,
    };
    let send = Command::Send {
        auth: auth("bob", 2),
        to: "ann".to_owned(),
        body: "after the image".to_owned(),
    };
    apply(&mut state, 10, &send);
    let read = Command::ReadMessages {
        auth: auth("ann", 1),
        limit: 10,
    };
    let response = apply(&mut state, 11, &read);
    state.sessions.record(
        SessionRef {
            id: SessionId(7),
            seq: 2,
        },
        0x5678,
        Ok(response),
        Time(11_000),
    );
    apply(
        &mut state,
        12,
        &Command::DeleteAccount {
            auth: auth("bob", 2),
        },
    );

    assert_ne!(state.state_hash(), hash_before);
    assert_eq!(state.check_hash(), Ok(()));
    assert_eq!(image.state.state_hash(), hash_before);
    assert_eq!(image.state.check_hash(), Ok(()));
    let snapshot = image.encode();
    assert!(*snapshot.data == bytes_before, "the image's bytes changed");
    let decoded = MachineState::decode(&snapshot.data).expect("its own encoding decodes");
    assert_eq!(decoded.state_hash(), hash_before);
}

/// `sample_state` with enough messages that its encoding spans several of the streaming
/// writer's buffers.
fn large_state() -> MachineState {
    let mut state = sample_state();
    let body = "x".repeat(1_000);
    let first = 100;
    for index in first..first + 2_500 {
        let command = Command::Send {
            auth: Auth {
                user: "ann".to_owned(),
                generation: 1,
                token_epoch: 0,
            },
            to: "bob".to_owned(),
            body: format!("{index} {body}"),
        };
        apply(&mut state, index, &command);
    }
    state
}

/// A snapshot is encoded straight into its file (never whole in memory), and what the
/// replica later streams from the file, and what recovery reads, is exactly the image's
/// encoding, with the checksum a follower verifies.
#[test]
fn an_image_staged_straight_into_the_file_reads_back_as_its_encoding() {
    let state = large_state();
    let expected = state.encode();
    assert!(expected.len() > 2 * STREAM_BUFFER_BYTES, "spans buffers");
    let meta = SnapshotMeta {
        last_index: LogIndex(2_600),
        last_term: Term(3),
    };
    let image = SnapshotImage {
        meta: meta.clone(),
        state,
    };
    let (mut store, _) = LogStore::open(MemDisk::new()).expect("open");
    assert!(store.save_image(&image).expect("save"));
    let source = store
        .snapshot_source()
        .expect("open source")
        .expect("a snapshot");
    assert_eq!(source.meta, meta);
    assert!(source.file_backed);
    assert_eq!(source.len_bytes, expected.len() as u64);
    assert_eq!(source.checksum, snapshot_checksum(&meta, &expected));
    assert_eq!(source.read_all().expect("read"), expected);
    let mut chunk = vec![0; 100];
    source
        .read_at(source.len_bytes - 100, &mut chunk)
        .expect("the last bytes");
    assert_eq!(chunk, expected[expected.len() - 100..]);
    assert!(source.read_at(source.len_bytes - 99, &mut chunk).is_err());
    // A newer snapshot renamed over the file leaves the open source reading the old bytes.
    let newer = SnapshotImage {
        meta: SnapshotMeta {
            last_index: LogIndex(2_700),
            last_term: Term(3),
        },
        state: sample_state(),
    };
    assert!(store.save_image(&newer).expect("save newer"));
    assert_eq!(source.read_all().expect("read old"), expected);
    let (_, recovered) = LogStore::open(store.into_disk()).expect("recover");
    let snapshot = recovered.snapshot.expect("recovered snapshot");
    assert_eq!(snapshot.meta, newer.meta);
    assert_eq!(snapshot.read_all(), Ok(newer.state.encode()));
    // Decoded where the file holds it, a buffer at a time, it is the state saved.
    let decoded = MachineState::decode_from(&snapshot, 97).expect("decode from the file");
    assert_eq!(decoded, newer.state);
}

/// A disk that fails in the middle of a streamed snapshot fails the save with the disk's
/// error; nothing half-written is ever taken for a snapshot.
#[test]
fn a_disk_failure_while_streaming_a_snapshot_fails_the_save_and_recovery_ignores_it() {
    for ops_allowed in [0, 1, 2, 3, 5] {
        let image = SnapshotImage {
            meta: SnapshotMeta {
                last_index: LogIndex(2_600),
                last_term: Term(3),
            },
            state: large_state(),
        };
        let (mut store, _) = LogStore::open(MemDisk::new()).expect("open");
        store.disk_mut().set_fail_after_ops(Some(ops_allowed));
        let error = store.save_image(&image).expect_err("the disk fails");
        assert!(matches!(error, StorageError::Disk(_)), "{error}");
        let mut disk = store.into_disk();
        disk.crash(&mut ChaCha8Rng::seed_from_u64(ops_allowed));
        let (store, recovered) = LogStore::open(disk).expect("recover");
        assert!(recovered.snapshot.is_none());
        assert!(store.snapshot_source().expect("no source").is_none());
    }
}

/// Opening a reader on a damaged snapshot file is an error naming the damage, never a
/// panic, whatever the length at which the file was cut.
#[test]
fn a_cut_snapshot_file_is_refused_when_opened_for_streaming() {
    let image = SnapshotImage {
        meta: SnapshotMeta {
            last_index: LogIndex(9),
            last_term: Term(2),
        },
        state: sample_state(),
    };
    let (mut store, _) = LogStore::open(MemDisk::new()).expect("open");
    assert!(store.save_image(&image).expect("save"));
    let whole = store.disk().read_all(SNAPSHOT_FILE).expect("read");
    for cut in 0..whole.len() {
        let mut disk = MemDisk::new();
        disk.create(SNAPSHOT_FILE).expect("create");
        disk.write_at(SNAPSHOT_FILE, 0, &whole[..cut])
            .expect("write");
        match open_snapshot_source(&disk) {
            Err(StorageError::Corrupt { .. }) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    let mut disk = MemDisk::new();
    disk.create(SNAPSHOT_FILE).expect("create");
    disk.write_at(SNAPSHOT_FILE, 0, &whole).expect("write");
    let source = open_snapshot_source(&disk)
        .expect("open")
        .expect("a snapshot");
    assert_eq!(source.read_all().expect("read"), image.state.encode());
}

/// A replica's store decodes the snapshot's state in the same pass that checks the
/// file's checksum: the state comes back whole, and a flipped byte anywhere in the
/// state's bytes (in the first read, across a read's edge, in the last) is refused as
/// damage, never handed over as a state, whatever the flip makes of the decoding.
#[test]
fn recovery_decodes_the_state_in_the_checksum_pass_and_refuses_any_flip() {
    use chat_core::storage::{CorruptReason, StoreConfig};
    let flip_byte = |disk: &mut MemDisk, offset: u64, mask: u8| {
        let mut byte = [0];
        disk.read_at(SNAPSHOT_FILE, offset, &mut byte)
            .expect("read");
        disk.write_at(SNAPSHOT_FILE, offset, &[byte[0] ^ mask])
            .expect("write");
    };
    let state = large_state();
    let image = SnapshotImage {
        meta: SnapshotMeta {
            last_index: LogIndex(2_600),
            last_term: Term(3),
        },
        state,
    };
    let read_bytes = 4_099;
    let config = StoreConfig {
        snapshot_read_bytes: read_bytes,
        ..StoreConfig::replica()
    };
    let (mut store, _) = LogStore::open_with(MemDisk::new(), config).expect("open");
    assert!(store.save_image(&image).expect("save"));
    let disk = store.into_disk();
    let (_, recovered) = LogStore::open_with(disk.clone(), config).expect("recover");
    assert_eq!(recovered.snapshot_state.as_ref(), Some(&image.state));
    let source = recovered.snapshot.expect("a snapshot");
    let file_len = disk.len(SNAPSHOT_FILE).expect("len");
    let data_start = file_len - source.len_bytes;
    let edge = data_start + read_bytes as u64;
    for offset in [
        data_start,
        data_start + 17,
        edge - 1,
        edge,
        file_len / 2,
        file_len - 1,
    ] {
        for mask in [0x01, 0x80] {
            let mut damaged = disk.clone();
            flip_byte(&mut damaged, offset, mask);
            match LogStore::open_with(damaged, config) {
                Err(StorageError::Corrupt { reason, .. }) => assert_eq!(
                    reason,
                    CorruptReason::BadChecksum,
                    "flip {mask:#x} at {offset}"
                ),
                other => panic!("flip {mask:#x} at {offset}: {:?}", other.map(|_| ())),
            }
        }
    }
    // The default store leaves the bytes opaque and the decoding to the replica.
    let (_, opaque) = LogStore::open(disk).expect("recover");
    assert!(opaque.snapshot_state.is_none());
    assert_eq!(
        MachineState::decode_from(&opaque.snapshot.expect("a snapshot"), read_bytes),
        Ok(image.state)
    );
}

/// Bytes that match their checksum but are not a state (a state with a byte more, or
/// no state at all) are not damage: a replica's store opens them, leaves the state
/// undecoded, and the replica's own decoding reports what is wrong.
#[test]
fn intact_bytes_that_are_not_a_state_are_left_to_the_replica() {
    use chat_core::entry::Snapshot;
    use chat_core::storage::StoreConfig;
    let mut one_byte_more = sample_state().encode();
    one_byte_more.push(0);
    let cases = [(one_byte_more, "1 trailing bytes"), (vec![0xff; 300], "")];
    for (data, says) in cases {
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                last_index: LogIndex(40),
                last_term: Term(2),
            },
            data: std::sync::Arc::new(data),
        };
        let config = StoreConfig::replica();
        let (mut store, _) = LogStore::open_with(MemDisk::new(), config).expect("open");
        store.save_snapshot(&snapshot).expect("save");
        let (_, recovered) = LogStore::open_with(store.into_disk(), config)
            .expect("intact bytes are not refused as damage");
        assert!(recovered.snapshot_state.is_none());
        let source = recovered.snapshot.expect("a snapshot");
        let error = MachineState::decode_from(&source, 64).expect_err("not a state");
        assert!(error.contains(says), "{error}");
    }
}
