//! Accounts: creation, names, authentication, logout, deletion, credentials.

use super::*;
use crate::app::limits::{PASSWORD_HASH_BYTES_MAX, USERNAME_BYTES_MAX};

#[test]
fn create_account_takes_generation_and_time_from_the_log() {
    let mut chat = Chat::new();
    chat.create("first");
    let index = chat.next_index();
    let output = chat.apply(create_account("alice")).unwrap();
    assert_eq!(
        output,
        CommandOutput::AccountCreated {
            user: "alice".to_owned(),
            generation: index,
        }
    );
    assert_eq!(chat.credentials("alice"), (index, 0, 0));
    assert_eq!(chat.user_count(), 2);
}

#[test]
fn credentials_return_the_stored_hash() {
    let mut chat = Chat::new();
    let alice = chat.create("alice");
    let output = chat.query(credentials("alice")).unwrap();
    assert_eq!(
        output,
        QueryOutput::Credentials {
            user: "alice".to_owned(),
            password_hash: "hash-of-alice".to_owned(),
            generation: alice.generation,
            token_epoch: 0,
            unread_count: 0,
        }
    );
}

#[test]
fn credentials_of_missing_or_malformed_names_are_refused() {
    let chat = Chat::new();
    assert_eq!(
        chat.query(credentials("nobody")),
        Err(AppError::UnknownUser("nobody".to_owned()))
    );
    assert!(matches!(
        chat.query(credentials("no body")),
        Err(AppError::InvalidUsername { .. })
    ));
}

#[test]
fn usernames_at_the_edges_of_the_rules_are_accepted() {
    let mut chat = Chat::new();
    let longest = "z".repeat(USERNAME_BYTES_MAX);
    for name in ["a", "7", "Z", "a_b.c-d", "0-", "x..", &longest] {
        chat.create(name);
    }
    assert_eq!(chat.user_count(), 7);
}

#[test]
fn malformed_usernames_are_refused_with_a_reason() {
    let too_long = "z".repeat(USERNAME_BYTES_MAX + 1);
    let cases = [
        ("", "too short"),
        (too_long.as_str(), "too long"),
        ("_alice", "must start with a letter or a digit"),
        (".alice", "must start with a letter or a digit"),
        ("-alice", "must start with a letter or a digit"),
        ("al ice", "' '"),
        ("alice!", "'!'"),
        ("al/ice", "'/'"),
        ("élodie", "'é'"),
        ("a*", "'*'"),
    ];
    let mut chat = Chat::new();
    for (name, reason_part) in cases {
        match chat.apply(create_account(name)) {
            Err(AppError::InvalidUsername {
                name: echoed,
                reason,
            }) => {
                assert_eq!(echoed, name);
                assert!(reason.contains(reason_part), "{name:?}: {reason}");
            }
            other => panic!("{name:?} gave {other:?}"),
        }
    }
    assert_eq!(chat.user_count(), 0);
}

#[test]
fn password_hash_must_be_present_and_bounded() {
    let mut chat = Chat::new();
    let with_hash = |user: &str, size_bytes: usize| Command::CreateAccount {
        user: user.to_owned(),
        password_hash: "h".repeat(size_bytes),
        registration: 1,
    };
    assert_eq!(
        chat.apply(with_hash("a", 0)),
        Err(AppError::InvalidPasswordHash)
    );
    assert_eq!(
        chat.apply(with_hash("a", PASSWORD_HASH_BYTES_MAX + 1)),
        Err(AppError::InvalidPasswordHash)
    );
    chat.apply(with_hash("a", PASSWORD_HASH_BYTES_MAX)).unwrap();
    chat.apply(with_hash("b", 1)).unwrap();
    assert_eq!(chat.user_count(), 2);
}

#[test]
fn names_are_unique_and_case_sensitive() {
    let mut chat = Chat::new();
    chat.create("alice");
    let someone_else = Command::CreateAccount {
        user: "alice".to_owned(),
        password_hash: "hash".to_owned(),
        registration: 2,
    };
    assert_eq!(
        chat.apply(someone_else),
        Err(AppError::UserExists("alice".to_owned()))
    );
    // A retry of the registration that created it is answered as created, once.
    assert!(matches!(
        chat.apply(create_account("alice")),
        Ok(CommandOutput::AccountCreated { .. })
    ));
    chat.create("Alice");
    chat.create("ALICE");
    assert_eq!(chat.user_count(), 3);
}

#[test]
fn the_account_bound_refuses_new_names_only() {
    let mut chat = Chat::new();
    chat.create_bounded("a", 2).unwrap();
    chat.create_bounded("b", 2).unwrap();
    assert_eq!(chat.create_bounded("c", 2), Err(AppError::TooManyUsers));
    // A duplicate is reported as such even at the bound: it is the more useful answer.
    assert_eq!(
        chat.create_bounded_as("a", 2, 7),
        Err(AppError::UserExists("a".to_owned()))
    );
    assert_eq!(chat.user_count(), 2);
}

/// Every authenticated command and query, for one token.
fn authenticated_requests(auth: &Auth) -> (Vec<Command>, Vec<Query>) {
    let commands = vec![
        logout(auth),
        send(auth, "bob", "hi"),
        read(auth, 1),
        delete_messages(auth, &[1]),
        delete_account(auth),
    ];
    let queries = vec![
        Query::UnreadCount { auth: auth.clone() },
        messages_after(auth, 0, 1),
    ];
    (commands, queries)
}

fn assert_refused(chat: &mut Chat, auth: &Auth) {
    let (commands, queries) = authenticated_requests(auth);
    for command in commands {
        assert_eq!(
            chat.apply(command.clone()),
            Err(AppError::Unauthenticated),
            "{command:?}"
        );
    }
    for query in queries {
        assert_eq!(
            chat.query(query.clone()),
            Err(AppError::Unauthenticated),
            "{query:?}"
        );
    }
}

#[test]
fn bad_tokens_are_all_unauthenticated_without_naming_the_cause() {
    let mut chat = Chat::new();
    let alice = chat.create("alice");
    chat.create("bob");
    let wrong_generation = Auth {
        generation: alice.generation + 1,
        ..alice.clone()
    };
    let future_epoch = Auth {
        token_epoch: 1,
        ..alice.clone()
    };
    let unknown_user = Auth {
        user: "mallory".to_owned(),
        ..alice.clone()
    };
    let malformed_user = Auth {
        user: "not a name".to_owned(),
        ..alice.clone()
    };
    for auth in [wrong_generation, future_epoch, unknown_user, malformed_user] {
        assert_refused(&mut chat, &auth);
    }
    // The real token still works after all that.
    assert_eq!(chat.unread(&alice), 0);
}

#[test]
fn logout_ends_every_token_of_the_epoch() {
    let mut chat = Chat::new();
    let alice = chat.create("alice");
    chat.create("bob");
    assert_eq!(chat.apply(logout(&alice)), Ok(CommandOutput::LoggedOut));
    assert_eq!(chat.credentials("alice"), (alice.generation, 1, 0));
    assert_refused(&mut chat, &alice);

    // A token minted for the new epoch works, and the next logout ends it too.
    let renewed = Auth {
        token_epoch: 1,
        ..alice.clone()
    };
    chat.send(&renewed, "bob", "back again");
    chat.apply(logout(&renewed)).unwrap();
    assert_eq!(chat.credentials("alice").1, 2);
    assert_refused(&mut chat, &renewed);
}

#[test]
fn delete_account_removes_the_user_and_their_inbox() {
    let mut chat = Chat::new();
    let alice = chat.create("alice");
    let bob = chat.create("bob");
    chat.send(&bob, "alice", "one");
    chat.send(&bob, "alice", "two");
    chat.send(&alice, "bob", "reply");
    assert_eq!(chat.message_count(), 3);

    assert_eq!(
        chat.apply(delete_account(&alice)),
        Ok(CommandOutput::AccountDeleted)
    );
    assert_eq!(chat.user_count(), 1);
    assert_eq!(chat.message_count(), 1);
    assert_eq!(
        chat.query(credentials("alice")),
        Err(AppError::UnknownUser("alice".to_owned()))
    );
    assert_eq!(
        chat.apply(send(&bob, "alice", "hello?")),
        Err(AppError::UnknownUser("alice".to_owned()))
    );
    assert_refused(&mut chat, &alice);
}

#[test]
fn a_recreated_name_is_a_new_account_and_old_tokens_stay_dead() {
    let mut chat = Chat::new();
    let old = chat.create("alice");
    chat.create("bob");
    chat.apply(delete_account(&old)).unwrap();
    let new = chat.create("alice");
    assert!(new.generation > old.generation);
    // Same name and epoch 0, but the generation tells the accounts apart.
    assert_refused(&mut chat, &old);
    assert_eq!(chat.unread(&new), 0);
    assert_eq!(chat.credentials("alice"), (new.generation, 0, 0));
}

#[test]
fn validation_is_stateless_and_leaves_state_checks_to_apply() {
    let token = Auth {
        user: "ghost".to_owned(),
        generation: 1,
        token_epoch: 0,
    };
    // Fine on their own, whatever a replica's state will say about them.
    assert_eq!(Chat::validate(&create_account("alice")), Ok(()));
    assert_eq!(Chat::validate(&send(&token, "nobody", "hi")), Ok(()));
    assert_eq!(Chat::validate(&delete_messages(&token, &[42])), Ok(()));
    assert_eq!(Chat::validate(&logout(&token)), Ok(()));
    assert_eq!(Chat::validate_query(&credentials("nobody")), Ok(()));
    assert_eq!(Chat::validate_query(&list("*", u32::MAX)), Ok(()));
    // Junk that must never enter the log.
    assert_eq!(
        Chat::validate(&send(&token, "bob", "")),
        Err(AppError::EmptyBody)
    );
    assert!(matches!(
        Chat::validate(&create_account("")),
        Err(AppError::InvalidUsername { .. })
    ));
    assert!(matches!(
        Chat::validate(&read(&token, 0)),
        Err(AppError::OutOfRange { .. })
    ));
    let no_name = Auth {
        user: String::new(),
        ..token.clone()
    };
    assert_eq!(
        Chat::validate(&logout(&no_name)),
        Err(AppError::Unauthenticated)
    );
    assert_eq!(
        Chat::validate_query(&messages_after(&token, 0, 0)),
        Err(out_of_range("limit", 1, 1_000, 0))
    );
}

#[test]
fn stateless_refusals_come_before_authentication() {
    let mut chat = Chat::new();
    let bogus = Auth {
        user: "ghost".to_owned(),
        generation: 7,
        token_epoch: 3,
    };
    // The same answer the leader's validation gave, whatever the token.
    assert_eq!(
        chat.apply(send(&bogus, "bob", "")),
        Err(AppError::EmptyBody)
    );
    assert_eq!(
        chat.apply(send(&bogus, "bob", "hi")),
        Err(AppError::Unauthenticated)
    );
}
