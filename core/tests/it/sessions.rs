use crate::harness::*;
use chat_core::app::CommandOutput;
use chat_core::{ClientError, Response};

#[test]
fn a_retried_write_is_applied_once_and_answered_with_the_first_response() {
    let mut cluster = Cluster::new(5);
    let alice = match cluster.write_ok(1, 1, create("alice")) {
        CommandOutput::AccountCreated { generation, .. } => auth("alice", generation),
        other => panic!("{other:?}"),
    };
    cluster.write_ok(2, 1, create("bob"));
    let leader = cluster.wait_for_leader();
    let first = cluster.write(leader, 1, 2, send(&alice, "bob", "exactly once"));
    // The retry arrives while the first is still in flight, and again after it applied.
    let retry_in_flight = cluster.write(leader, 1, 2, send(&alice, "bob", "exactly once"));
    let first_outcome = cluster.outcome(first);
    let retry_outcome = cluster.outcome(retry_in_flight);
    let retry_after = cluster.write(leader, 1, 2, send(&alice, "bob", "exactly once"));
    let after_outcome = cluster.outcome(retry_after);
    assert!(matches!(
        first_outcome,
        Ok(Response::Command(CommandOutput::Sent { .. }))
    ));
    assert_eq!(retry_outcome, first_outcome);
    assert_eq!(after_outcome, first_outcome);
    cluster.run_for(ms(200));
    for replica in cluster.replicas.values() {
        assert_eq!(
            replica.chat().message_count(),
            1,
            "{} applied the send once",
            replica.id()
        );
    }
    // An older sequence number is refused; a new one is applied.
    let stale = cluster.write(leader, 1, 1, create("alice"));
    assert_eq!(
        cluster.outcome(stale),
        Err(ClientError::StaleRequest {
            seq: 1,
            last_seq: 2
        })
    );
    // An unknown session that is not at its start has expired.
    let expired = cluster.write(leader, 77, 5, create("zed"));
    assert_eq!(cluster.outcome(expired), Err(ClientError::SessionExpired));
}

#[test]
fn a_retry_after_failover_is_applied_once() {
    let mut cluster = Cluster::new(5);
    let alice = match cluster.write_ok(1, 1, create("alice")) {
        CommandOutput::AccountCreated { generation, .. } => auth("alice", generation),
        other => panic!("{other:?}"),
    };
    let old = cluster.wait_for_leader();
    // The leader commits the send but crashes before its reply leaves.
    let lost = cluster.write(old, 1, 2, send(&alice, "alice", "once"));
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
    let retry = cluster.write(new, 1, 2, send(&alice, "alice", "once"));
    assert!(matches!(
        cluster.outcome(retry),
        Ok(Response::Command(CommandOutput::Sent { .. }))
    ));
    for replica in cluster.replicas.values() {
        assert_eq!(replica.chat().message_count(), 1);
    }
}
