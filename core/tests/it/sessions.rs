use crate::harness::*;
use chat_core::app::{AppError, CommandOutput};
use chat_core::entry::SessionRef;
use chat_core::{ClientError, ClientRequest, Response, SessionId};

fn created(output: CommandOutput, user: &str) -> chat_core::app::Auth {
    match output {
        CommandOutput::AccountCreated { generation, .. } => auth(user, generation),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_retried_write_is_applied_once_and_answered_with_the_first_response() {
    let mut cluster = Cluster::new(5);
    let alice = created(cluster.write_ok(0, 0, create("alice")), "alice");
    cluster.write_ok(0, 0, create("bob"));
    let session = cluster.open(&alice);
    let leader = cluster.wait_for_leader();
    let first = cluster.write(leader, session, 1, send(&alice, "bob", "exactly once"));
    // The retry arrives while the first is still in flight, and again after it applied.
    let retry_in_flight = cluster.write(leader, session, 1, send(&alice, "bob", "exactly once"));
    let first_outcome = cluster.outcome(first);
    let retry_outcome = cluster.outcome(retry_in_flight);
    let retry_after = cluster.write(leader, session, 1, send(&alice, "bob", "exactly once"));
    let after_outcome = cluster.outcome(retry_after);
    assert!(matches!(
        first_outcome,
        Ok(Response::Command(CommandOutput::Sent { .. }))
    ));
    assert_eq!(retry_outcome, first_outcome);
    assert_eq!(after_outcome, first_outcome);
    // Another command under the answered number is refused, not answered.
    let mismatch = cluster.write(leader, session, 1, send(&alice, "bob", "other"));
    assert_eq!(
        cluster.outcome(mismatch),
        Err(ClientError::RetryMismatch { seq: 1 })
    );
    let second = cluster.write(leader, session, 2, send(&alice, "bob", "second"));
    assert!(cluster.outcome(second).is_ok());
    cluster.run_for(ms(200));
    for replica in cluster.replicas.values() {
        assert_eq!(
            replica.chat().message_count(),
            2,
            "{} applied each send once",
            replica.id()
        );
    }
    // An older sequence number is refused.
    let stale = cluster.write(leader, session, 1, send(&alice, "bob", "exactly once"));
    assert_eq!(
        cluster.outcome(stale),
        Err(ClientError::StaleRequest {
            seq: 1,
            last_seq: 2
        })
    );
}

#[test]
fn a_request_of_an_unknown_session_is_never_applied_at_any_sequence_number() {
    let mut cluster = Cluster::new(3);
    let alice = created(cluster.write_ok(0, 0, create("alice")), "alice");
    let leader = cluster.wait_for_leader();
    for (session, seq) in [(77, 1), (77, 5), (u64::MAX, 1), (1, 1)] {
        // Index 1 is the leader's no-op or the account: an entry, never a session.
        let request = cluster.write(leader, session, seq, send(&alice, "alice", "ghost"));
        assert_eq!(cluster.outcome(request), Err(ClientError::SessionExpired));
    }
    cluster.run_for(ms(200));
    for replica in cluster.replicas.values() {
        assert_eq!(replica.chat().message_count(), 0);
    }
}

#[test]
fn a_session_answers_only_its_owner() {
    let mut cluster = Cluster::new(3);
    let alice = created(cluster.write_ok(0, 0, create("alice")), "alice");
    let mallory = created(cluster.write_ok(0, 0, create("mallory")), "mallory");
    let session = cluster.open(&alice);
    cluster.write_ok(session, 1, send(&alice, "alice", "private"));
    let leader = cluster.wait_for_leader();
    let read = chat_core::app::Command::ReadMessages {
        auth: mallory.clone(),
        limit: 10,
    };
    for seq in [1, 2] {
        let borrowed = cluster.write(leader, session, seq, read.clone());
        assert_eq!(cluster.outcome(borrowed), Err(ClientError::SessionNotOwned));
    }
    // The owner's session is untouched: its next number still applies.
    cluster.write_ok(session, 2, send(&alice, "alice", "still mine"));
}

#[test]
fn sessions_are_bounded_per_user_and_in_all() {
    let configs = (1..=3)
        .map(|id| {
            let mut c = config(id, 3);
            c.sessions_max = 4;
            c.sessions_per_user_max = 2;
            c
        })
        .collect();
    let mut cluster = Cluster::with_configs(configs);
    let users: Vec<_> = ["ann", "ben", "cat"]
        .iter()
        .map(|user| created(cluster.write_ok(0, 0, create(user)), user))
        .collect();
    let ann = cluster.open(&users[0]);
    // Ben churns sessions: only his own are evicted.
    for _ in 0..5 {
        cluster.open(&users[1]);
    }
    cluster.write_ok(ann, 1, send(&users[0], "ann", "ann's session survived"));
    cluster.open(&users[2]);
    let leader = cluster.wait_for_leader();
    let refused = cluster.write(leader, 0, 0, open_session(&users[2]));
    assert_eq!(
        cluster.outcome(refused),
        Err(ClientError::App(AppError::TooManySessions))
    );
}

#[test]
fn a_registration_retry_is_answered_created_and_another_is_refused() {
    let mut cluster = Cluster::new(3);
    let first = cluster.write_ok(0, 0, create("alice"));
    assert_eq!(cluster.write_ok(0, 0, create("alice")), first);
    let leader = cluster.wait_for_leader();
    let other = chat_core::app::Command::CreateAccount {
        user: "alice".to_owned(),
        password_hash: "$argon2id$someone-else".to_owned(),
        registration: 42,
    };
    let taken = cluster.write(leader, 0, 0, other);
    assert_eq!(
        cluster.outcome(taken),
        Err(ClientError::App(AppError::UserExists("alice".to_owned())))
    );
}

#[test]
fn a_session_that_does_not_fit_its_command_is_invalid() {
    let mut cluster = Cluster::new(3);
    let alice = created(cluster.write_ok(0, 0, create("alice")), "alice");
    let leader = cluster.wait_for_leader();
    let unsessioned = cluster.request(
        leader,
        ClientRequest::Write {
            session: None,
            command: send(&alice, "alice", "no session"),
        },
    );
    assert!(matches!(
        cluster.outcome(unsessioned),
        Err(ClientError::InvalidRequest(_))
    ));
    let sessioned_open = cluster.request(
        leader,
        ClientRequest::Write {
            session: Some(SessionRef {
                id: SessionId(1),
                seq: 1,
            }),
            command: open_session(&alice),
        },
    );
    assert!(matches!(
        cluster.outcome(sessioned_open),
        Err(ClientError::InvalidRequest(_))
    ));
}

#[test]
fn a_retry_after_failover_is_applied_once() {
    let mut cluster = Cluster::new(5);
    let alice = created(cluster.write_ok(0, 0, create("alice")), "alice");
    let session = cluster.open(&alice);
    let old = cluster.wait_for_leader();
    // The leader commits the send but crashes before its reply leaves.
    let lost = cluster.write(old, session, 1, send(&alice, "alice", "once"));
    cluster.run_until(ms(1_000), |c| {
        c.replicas
            .values()
            .filter(|r| r.chat().message_count() == 1)
            .count()
            >= 3
    });
    cluster.crash(old.0);
    cluster.replies.remove(&lost);
    let new = cluster.wait_for_leader();
    assert_ne!(new, old);
    let retry = cluster.write(new, session, 1, send(&alice, "alice", "once"));
    assert!(matches!(
        cluster.outcome(retry),
        Ok(Response::Command(CommandOutput::Sent { .. }))
    ));
    for replica in cluster.replicas.values() {
        assert_eq!(replica.chat().message_count(), 1);
    }
}
