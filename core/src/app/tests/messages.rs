//! Messages: send, deliveries, read, resume, delete, and the deleted-sender label.

use super::*;
use crate::app::limits::{BODY_BYTES_MAX, DELETE_IDS_MAX, INBOX_MESSAGES_MAX, READ_LIMIT_MAX};

/// alice and bob, with tokens.
fn two_users() -> (Chat, Auth, Auth) {
    let mut chat = Chat::new();
    let alice = chat.create("alice");
    let bob = chat.create("bob");
    (chat, alice, bob)
}

#[test]
fn send_stamps_id_and_time_from_the_log_and_delivers() {
    let (mut chat, alice, bob) = two_users();
    let index = chat.next_index();
    let now = chat.now();
    let output = chat.apply(send(&alice, "bob", "hello bob")).unwrap();
    assert_eq!(
        output,
        CommandOutput::Sent {
            id: MessageId(index),
            timestamp: now,
        }
    );
    let expected = MessageView {
        id: MessageId(index),
        sender: "alice".to_owned(),
        sender_deleted: false,
        recipient: "bob".to_owned(),
        body: "hello bob".to_owned(),
        timestamp: now,
        read: false,
    };
    assert_eq!(
        chat.deliveries,
        vec![Delivery {
            message: expected.clone()
        }]
    );
    // What was pushed is what a resuming listener reads back.
    assert_eq!(chat.after(&bob, 0, 10), vec![expected]);
    assert_eq!(chat.unread(&bob), 1);
    assert_eq!(chat.unread(&alice), 0);
    assert_eq!(chat.message_count(), 1);
}

#[test]
fn sending_to_yourself_is_allowed() {
    let (mut chat, alice, _) = two_users();
    let id = chat.send(&alice, "alice", "note to self");
    assert_eq!(chat.deliveries.len(), 1);
    assert_eq!(chat.deliveries[0].message.recipient, "alice");
    assert_eq!(ids(&chat.read(&alice, 10)), vec![id.0]);
}

#[test]
fn send_refuses_bad_recipients_and_bodies() {
    let (mut chat, alice, _) = two_users();
    assert_eq!(
        chat.apply(send(&alice, "carol", "hi")),
        Err(AppError::UnknownUser("carol".to_owned()))
    );
    assert!(matches!(
        chat.apply(send(&alice, "bad name", "hi")),
        Err(AppError::InvalidUsername { .. })
    ));
    assert_eq!(
        chat.apply(send(&alice, "bob", "")),
        Err(AppError::EmptyBody)
    );
    let too_large = "x".repeat(BODY_BYTES_MAX + 1);
    assert_eq!(
        chat.apply(send(&alice, "bob", &too_large)),
        Err(AppError::BodyTooLarge {
            size_bytes: BODY_BYTES_MAX + 1,
            max_bytes: BODY_BYTES_MAX,
        })
    );
    // The bound counts bytes, not characters: 2 bytes each.
    let multibyte = "é".repeat(BODY_BYTES_MAX / 2 + 1);
    assert!(matches!(
        chat.apply(send(&alice, "bob", &multibyte)),
        Err(AppError::BodyTooLarge { .. })
    ));
    assert_eq!(chat.message_count(), 0);
    chat.send(&alice, "bob", &"x".repeat(BODY_BYTES_MAX));
    assert_eq!(chat.message_count(), 1);
}

#[test]
fn a_full_inbox_refuses_more_until_it_is_emptied() {
    let (mut chat, alice, bob) = two_users();
    chat.send_many(&alice, "bob", INBOX_MESSAGES_MAX);
    assert_eq!(
        chat.apply(send(&alice, "bob", "one too many")),
        Err(AppError::InboxFull("bob".to_owned()))
    );
    // Reading does not make room; deleting does. Other inboxes are unaffected.
    chat.read(&bob, READ_LIMIT_MAX);
    assert!(chat.apply(send(&alice, "bob", "still full")).is_err());
    chat.send(&bob, "alice", "alice has room");
    let oldest = chat.after(&bob, 0, 1)[0].id.0;
    chat.apply(delete_messages(&bob, &[oldest])).unwrap();
    chat.send(&alice, "bob", "fits now");
    assert_eq!(chat.message_count(), INBOX_MESSAGES_MAX + 1);
}

#[test]
fn read_returns_oldest_unread_first_and_marks_them_read() {
    let (mut chat, alice, bob) = two_users();
    let sent: Vec<u64> = (0..5)
        .map(|n| chat.send(&alice, "bob", &format!("m{n}")).0)
        .collect();

    let first = chat.read(&bob, 2);
    assert_eq!(ids(&first), sent[..2]);
    // Views describe the state after the command: read.
    assert!(first.iter().all(|view| view.read));
    assert_eq!(first[0].body, "m0");
    assert_eq!(chat.unread(&bob), 3);
    assert_eq!(chat.credentials("bob").2, 3);

    // A message arriving meanwhile queues behind the older unread ones.
    let late = chat.send(&alice, "bob", "late").0;
    assert_eq!(ids(&chat.read(&bob, 10)), [&sent[2..], &[late]].concat());
    assert_eq!(chat.unread(&bob), 0);
    assert!(chat.read(&bob, 10).is_empty());
    // Reading is a replicated write but never a delivery.
    assert!(chat.deliveries.is_empty());
}

#[test]
fn read_skips_messages_already_read() {
    let (mut chat, alice, bob) = two_users();
    let a = chat.send(&alice, "bob", "a").0;
    chat.read(&bob, 1);
    let b = chat.send(&alice, "bob", "b").0;
    let c = chat.send(&alice, "bob", "c").0;
    assert_eq!(ids(&chat.read(&bob, READ_LIMIT_MAX)), vec![b, c]);
    assert!(chat.after(&bob, 0, 10).iter().all(|view| view.read));
    assert_eq!(ids(&chat.after(&bob, 0, 10)), vec![a, b, c]);
}

#[test]
fn read_and_resume_limits_are_bounded() {
    let (mut chat, _, bob) = two_users();
    let max = u64::from(READ_LIMIT_MAX);
    assert_eq!(
        chat.apply(read(&bob, 0)),
        Err(out_of_range("limit", 1, max, 0))
    );
    assert_eq!(
        chat.apply(read(&bob, READ_LIMIT_MAX + 1)),
        Err(out_of_range("limit", 1, max, max + 1))
    );
    assert_eq!(
        chat.query(messages_after(&bob, 0, 0)),
        Err(out_of_range("limit", 1, max, 0))
    );
    assert_eq!(
        chat.query(messages_after(&bob, 0, u32::MAX)),
        Err(out_of_range("limit", 1, max, u64::from(u32::MAX)))
    );
    assert!(chat.read(&bob, READ_LIMIT_MAX).is_empty());
    assert!(chat.after(&bob, 0, READ_LIMIT_MAX).is_empty());
}

#[test]
fn messages_after_resumes_without_gaps_or_repeats_and_marks_nothing() {
    let (mut chat, alice, bob) = two_users();
    let sent: Vec<u64> = (0..6)
        .map(|n| chat.send(&alice, "bob", &format!("m{n}")).0)
        .collect();
    chat.read(&bob, 1);

    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let page = chat.after(&bob, cursor, 4);
        let Some(last) = page.last() else { break };
        cursor = last.id.0;
        seen.extend(ids(&page));
    }
    assert_eq!(seen, sent);
    assert!(chat.after(&bob, sent[0], 10).iter().all(|view| !view.read));
    assert!(chat.after(&bob, 0, 1)[0].read);
    // Ids between or beyond messages work as cursors too.
    assert_eq!(ids(&chat.after(&bob, sent[5] - 1, 10)), vec![sent[5]]);
    assert!(chat.after(&bob, u64::MAX, 10).is_empty());
    assert_eq!(chat.unread(&bob), 5);
}

#[test]
fn delete_messages_removes_own_messages_counting_repeats_once() {
    let (mut chat, alice, bob) = two_users();
    let m: Vec<u64> = (0..4).map(|_| chat.send(&alice, "bob", "x").0).collect();
    chat.read(&bob, 1);

    let output = chat.apply(delete_messages(&bob, &[m[2], m[0], m[2]]));
    assert_eq!(output, Ok(CommandOutput::Deleted { count: 2 }));
    assert_eq!(ids(&chat.after(&bob, 0, 10)), vec![m[1], m[3]]);
    // m[0] was read, m[2] was not.
    assert_eq!(chat.unread(&bob), 2);
    assert_eq!(chat.message_count(), 2);
    assert!(chat.deliveries.is_empty());
}

#[test]
fn delete_messages_is_all_or_nothing() {
    let (mut chat, alice, bob) = two_users();
    let to_bob = chat.send(&alice, "bob", "for bob").0;
    let to_alice = chat.send(&bob, "alice", "for alice").0;
    let never = 999_999;

    // The first missing id in the order given is reported, and nothing is deleted.
    assert_eq!(
        chat.apply(delete_messages(&bob, &[to_bob, never, to_alice])),
        Err(AppError::MessageNotFound(never))
    );
    assert_eq!(
        chat.apply(delete_messages(&bob, &[to_alice, never])),
        Err(AppError::MessageNotFound(to_alice))
    );
    assert_eq!(ids(&chat.after(&bob, 0, 10)), vec![to_bob]);
    // Nobody deletes from someone else's inbox.
    assert_eq!(ids(&chat.after(&alice, 0, 10)), vec![to_alice]);

    chat.apply(delete_messages(&bob, &[to_bob])).unwrap();
    assert_eq!(
        chat.apply(delete_messages(&bob, &[to_bob])),
        Err(AppError::MessageNotFound(to_bob))
    );
}

#[test]
fn delete_messages_takes_one_to_a_bounded_number_of_ids() {
    let (mut chat, alice, bob) = two_users();
    let max = DELETE_IDS_MAX as u64;
    assert_eq!(
        chat.apply(delete_messages(&bob, &[])),
        Err(out_of_range("message id count", 1, max, 0))
    );
    let id = chat.send(&alice, "bob", "x").0;
    let too_many = vec![id; DELETE_IDS_MAX + 1];
    assert_eq!(
        chat.apply(delete_messages(&bob, &too_many)),
        Err(out_of_range("message id count", 1, max, max + 1))
    );
    let most = vec![id; DELETE_IDS_MAX];
    assert_eq!(
        chat.apply(delete_messages(&bob, &most)),
        Ok(CommandOutput::Deleted { count: 1 })
    );
}

#[test]
fn messages_from_a_deleted_sender_stay_and_say_so() {
    let (mut chat, alice, bob) = two_users();
    let before = chat.send(&alice, "bob", "before").0;
    chat.apply(delete_account(&alice)).unwrap();
    assert_eq!(chat.message_count(), 1);

    let views = chat.after(&bob, 0, 10);
    assert_eq!(ids(&views), vec![before]);
    assert_eq!(views[0].sender, "alice");
    assert!(views[0].sender_deleted);

    // The name taken again is a different sender: the old message stays labelled, and
    // the new account's messages are not.
    let new_alice = chat.create("alice");
    let after = chat.send(&new_alice, "bob", "after").0;
    assert!(!chat.deliveries[0].message.sender_deleted);
    let views = chat.read(&bob, 10);
    assert_eq!(ids(&views), vec![before, after]);
    assert!(views[0].sender_deleted);
    assert!(!views[1].sender_deleted);
}

#[test]
fn refused_sends_with_bad_tokens_deliver_nothing() {
    let (mut chat, alice, _) = two_users();
    chat.apply(logout(&alice)).unwrap();
    assert_eq!(
        chat.apply(send(&alice, "bob", "hi")),
        Err(AppError::Unauthenticated)
    );
    assert!(chat.deliveries.is_empty());
    assert_eq!(chat.message_count(), 0);
}
