use crate::election::list_all;
use crate::harness::*;
use chat_core::app::{Query, QueryOutput};
use chat_core::{ClientError, ReadConsistency, Response};

#[test]
fn a_read_after_an_acknowledged_write_sees_it() {
    let mut cluster = Cluster::new(5);
    for (client, name) in ["ann", "ben", "cat"].iter().enumerate() {
        cluster.write_ok(client as u64 + 1, 1, create(name));
        assert!(list_all(&mut cluster).contains(&name.to_string()));
    }
}

#[test]
fn an_isolated_old_leader_cannot_serve_a_linearizable_read() {
    let mut cluster = Cluster::new(5);
    let old = cluster.wait_for_leader();
    cluster.write_ok(1, 1, create("ann"));
    cluster.isolate(old.0);
    let query = Query::ListAccounts {
        pattern: "*".into(),
        page: 0,
    };
    let read = cluster.read(old, query.clone(), ReadConsistency::Linearizable);
    // Meanwhile the majority moves on.
    assert!(cluster.run_until(ms(5_000), |c| c.leader().is_some_and(|l| l != old)));
    cluster.write_ok(2, 1, create("ben"));
    match cluster.outcome(read) {
        Err(ClientError::NotLeader { .. }) => {}
        other => panic!("the isolated leader answered a linearizable read: {other:?}"),
    }
    // A stale read is allowed, and is visibly stale.
    let stale = cluster.read(old, query, ReadConsistency::Stale);
    match cluster.outcome(stale) {
        Ok(Response::Query(QueryOutput::Accounts { names, .. })) => {
            assert_eq!(names, vec!["ann".to_string()])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_follower_redirects_linearizable_reads_and_writes_to_the_leader() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.wait_for_leader();
    cluster.run_for(ms(100));
    let follower = cluster
        .replicas
        .keys()
        .copied()
        .find(|&id| id != leader)
        .unwrap();
    let read = cluster.read(
        follower,
        Query::ListAccounts {
            pattern: "*".into(),
            page: 0,
        },
        ReadConsistency::Linearizable,
    );
    assert_eq!(
        cluster.outcome(read),
        Err(ClientError::NotLeader {
            leader_hint: Some(leader)
        })
    );
    let write = cluster.write(follower, 1, 1, create("ann"));
    assert_eq!(
        cluster.outcome(write),
        Err(ClientError::NotLeader {
            leader_hint: Some(leader)
        })
    );
}
