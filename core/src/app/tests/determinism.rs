//! Determinism: replicas that apply the same log agree byte for byte, the hash tells
//! different states apart, and a state survives encoding as a snapshot.

use super::*;
use crate::app::state::StoredMessage;
use crate::digest::Digest;
use std::sync::Arc;

/// A log touching every command, including refused ones, run on a fresh replica.
fn scripted(extra_body: Option<&str>) -> Chat {
    let mut chat = Chat::new();
    let alice = chat.create("alice");
    let bob = chat.create("bob");
    let carol = chat.create("carol");
    chat.send(&alice, "bob", "hi bob");
    chat.send(&bob, "alice", "hi alice");
    chat.send(&carol, "bob", "from carol");
    chat.send(&bob, "bob", "note");
    chat.read(&bob, 2);
    let _ = chat.apply(send(&alice, "nobody", "lost"));
    let _ = chat.apply(delete_messages(&bob, &[1, 2]));
    chat.apply(logout(&alice)).unwrap();
    chat.apply(delete_account(&carol)).unwrap();
    if let Some(body) = extra_body {
        chat.send(&bob, "alice", body);
    }
    chat
}

#[test]
fn the_same_log_gives_the_same_state_and_hash() {
    let first = scripted(None);
    let second = scripted(None);
    assert!(first.same_state(&second));
    assert_eq!(first.hash(), second.hash());
    assert_eq!(first.encode(), second.encode());
}

#[test]
fn different_logs_give_different_hashes() {
    let base = scripted(None);
    let with_message = scripted(Some("one more"));
    let with_other_message = scripted(Some("one more!"));
    assert!(!base.same_state(&with_message));
    assert_ne!(base.hash(), with_message.hash());
    assert_ne!(with_message.hash(), with_other_message.hash());

    // Only a flag differs: a message marked read.
    let mut read = base.clone();
    let bob = Auth {
        user: "bob".to_owned(),
        generation: 2,
        token_epoch: 0,
    };
    assert_eq!(read.read(&bob, 1).len(), 1);
    assert_ne!(read.hash(), base.hash());

    // Only a counter differs: a logout.
    let mut logged_out = base.clone();
    logged_out.apply(logout(&bob)).unwrap();
    assert_ne!(logged_out.hash(), base.hash());
}

#[test]
fn the_incremental_hash_equals_a_recomputation_from_scratch() {
    // The harness checks this after every step; here once more on the scripted log, and
    // on the empty state, whose digest is the empty sum.
    let chat = scripted(None);
    assert_eq!(chat.state.check_digest(), Ok(()));
    assert_ne!(chat.state.digest, Digest::default());
    let empty = Chat::new();
    assert_eq!(empty.encode(), vec![0, 0], "no users, zero messages");
    assert_eq!(empty.state.digest, Digest::default());
    assert_eq!(empty.state.check_digest(), Ok(()));
}

#[test]
fn a_digest_that_drifted_is_caught_and_not_carried_by_a_snapshot() {
    let chat = scripted(None);
    let mut drifted = chat.state.clone();
    // As if one mutation had forgotten to update the digest.
    drifted.digest.add(1);
    assert!(drifted.check_digest().is_err());
    assert_ne!(drifted.state_hash(), chat.hash());
    // The digest is not part of the image: decoding rebuilds it from the items.
    let bytes = bincode::serde::encode_to_vec(&drifted, bincode::config::standard()).unwrap();
    assert_eq!(bytes, chat.encode());
    let restored = chat.restore(&bytes);
    assert_eq!(restored.hash(), chat.hash());
}

#[test]
fn a_message_moved_to_another_inbox_changes_the_hash() {
    // Message hashes leave the recipient out (an inbox is hashed as it is decoded, before
    // its owner's name is at hand); the recipient's account hash covers its inbox's
    // digest instead. Moving a message between inboxes must still change the hash.
    let chat = scripted(None);
    let mut moved = chat.state.clone();
    let (id, message) = {
        let bob = Arc::make_mut(moved.users.get_mut("bob").unwrap());
        let (&id, message) = bob.inbox.messages().iter().next().unwrap();
        let message = StoredMessage::clone(message);
        bob.inbox.remove(id);
        (id, message)
    };
    Arc::make_mut(moved.users.get_mut("alice").unwrap())
        .inbox
        .insert(id, message);
    moved.digest = moved.sum_account_hashes();
    assert_eq!(moved.check_digest(), Ok(()));
    assert_ne!(moved.state_hash(), chat.hash());
    // An inbox digest that drifted is caught, and decoding rebuilds it.
    let mut drifted = chat.state.clone();
    Arc::make_mut(drifted.users.get_mut("bob").unwrap())
        .inbox
        .digest
        .add(1);
    assert!(drifted.check_digest().is_err());
    let bytes = bincode::serde::encode_to_vec(&drifted, bincode::config::standard()).unwrap();
    assert_eq!(chat.restore(&bytes).hash(), chat.hash());
}

#[test]
fn independent_commands_in_either_order_give_the_same_state_and_hash() {
    let base = scripted(None);
    let alice = Auth {
        user: "alice".to_owned(),
        generation: 1,
        token_epoch: 1,
    };
    let bob = Auth {
        user: "bob".to_owned(),
        generation: 2,
        token_epoch: 0,
    };
    // Neither command takes an id or a timestamp from its log position, and they touch
    // different accounts: the two orders reach the same state.
    let mut first = base.clone();
    first.apply(delete_messages(&bob, &[7])).unwrap();
    first.apply(logout(&alice)).unwrap();
    let mut second = base.clone();
    second.apply(logout(&alice)).unwrap();
    second.apply(delete_messages(&bob, &[7])).unwrap();
    assert!(first.same_state(&second));
    assert_eq!(first.hash(), second.hash());
    // Two sends to different users in either order are not independent: each message id
    // is its log index, so the states, and the hashes, differ.
    let mut ab = base.clone();
    ab.send(&bob, "alice", "x");
    ab.send(&alice, "bob", "y");
    let mut ba = base.clone();
    ba.send(&alice, "bob", "y");
    ba.send(&bob, "alice", "x");
    assert!(!ab.same_state(&ba));
    assert_ne!(ab.hash(), ba.hash());
}

#[test]
fn the_hash_of_a_scripted_log_is_stable_across_builds_and_machines() {
    // Pinned: if this changes, every replica's and every snapshot's hash changes with it.
    // Update it only together with a deliberate change of the state's layout or of the
    // item encodings in `state.rs` and `crate::digest`.
    assert_eq!(scripted(None).hash(), PINNED_SCRIPTED_HASH);
}

/// The incremental hash (issue 12: XXH3-128 item hashes, summed; a message under its
/// recipient's account hash since restarts hash each inbox as it is decoded). It was
/// 10_542_809_193_363_773_350 with SipHash-1-3-128 item hashes, and
/// 10_634_701_959_582_290_612 when the hash was FNV-1a-64 over the whole encoding.
const PINNED_SCRIPTED_HASH: u64 = 10_297_499_908_246_143_633;

#[test]
fn a_restored_snapshot_is_the_same_state_and_behaves_the_same() {
    let original = scripted(None);
    let mut restored = original.restore(&original.encode());
    assert!(restored.same_state(&original));
    assert_eq!(restored.hash(), original.hash());

    let mut original = original;
    let bob = Auth {
        user: "bob".to_owned(),
        generation: 2,
        token_epoch: 0,
    };
    let views = original.read(&bob, 10);
    assert_eq!(restored.read(&bob, 10), views);
    assert_eq!(restored.hash(), original.hash());
}

#[test]
fn an_empty_state_round_trips() {
    let chat = Chat::new();
    let restored = chat.restore(&chat.encode());
    assert!(restored.same_state(&chat));
    assert_eq!(restored.user_count(), 0);
    assert_eq!(restored.message_count(), 0);
}
