//! The registry as Prometheus reads it: names, types, labels and values.

use super::*;
use crate::hashing::HashPool;
use crate::listen::Listeners;
use chat_core::app::Delivery;
use chat_core::entry::Persist;
use chat_core::{drive, Config, Envelope, Reply, Shell, Time};
use std::convert::Infallible;
use std::sync::Arc;

/// A shell whose disk and network do nothing: enough for a single-member replica.
struct NullShell;

impl Shell for NullShell {
    type Error = Infallible;

    fn persist(&mut self, _: &Persist) -> Result<(), Infallible> {
        Ok(())
    }
    fn send(&mut self, _: Envelope) {}
    fn reply(&mut self, _: Reply) {}
    fn deliver(&mut self, _: Delivery) {}
    // Far below the snapshot threshold: never asked.
    fn save_snapshot(&mut self, _: chat_core::machine::SnapshotImage) {}
}

/// A single-member replica that has elected itself.
fn leader() -> Replica {
    /// Far more rounds than a lone member needs (pre-vote, vote, lead).
    const ROUNDS_MAX: usize = 16;
    let config = Config::new(NodeId(1), vec![NodeId(1)]);
    let mut replica =
        Replica::new(config, Default::default(), Time::from_millis(0)).expect("a fresh replica");
    for _ in 0..ROUNDS_MAX {
        if replica.role() == Role::Leader {
            return replica;
        }
        replica.handle_timeout(replica.poll_timeout());
        let Ok(()) = drive(&mut replica, &mut NullShell);
    }
    panic!("a lone member did not elect itself in {ROUNDS_MAX} rounds");
}

fn sampled() -> (Sampled, Listeners) {
    let listeners = Listeners::default();
    let hashing = Arc::new(HashPool::start(1, 1).expect("start a hash pool"));
    let sampled = Sampled {
        listeners: listeners.clone(),
        hashing,
    };
    (sampled, listeners)
}

/// The value of the sample line that starts with `series` followed by a space.
fn value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|line| {
            line.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"));
    line[series.len()..].trim().parse().expect("a number")
}

#[test]
fn the_core_thread_values_render_with_their_names_and_types() {
    let metrics = Metrics::new([NodeId(2), NodeId(3)]);
    let replica = leader();
    let mut observer = CoreObserver::new(metrics.core.clone());
    observer.observe(&replica);
    // Observing the same state again changes nothing.
    observer.observe(&replica);
    metrics
        .core
        .persisted(3, Some(2_048), Duration::from_millis(5));
    metrics.core.persisted(0, None, Duration::from_micros(50));
    let (sampled, _listeners) = sampled();
    let text = metrics.finish(sampled).render().expect("render");

    assert_eq!(value(&text, "chat_raft_term"), replica.term().0 as f64);
    assert!(replica.term().0 >= 1);
    assert_eq!(value(&text, r#"chat_raft_role{role="leader"}"#), 1.0);
    assert_eq!(value(&text, r#"chat_raft_role{role="follower"}"#), 0.0);
    assert_eq!(value(&text, r#"chat_raft_role{role="pre-candidate"}"#), 0.0);
    assert_eq!(value(&text, "chat_raft_leader_changes_total"), 1.0);
    assert_eq!(
        value(&text, "chat_raft_commit_index"),
        replica.commit_index().0 as f64
    );
    assert_eq!(
        value(&text, "chat_raft_last_log_index"),
        replica.last_log_index().0 as f64
    );
    assert_eq!(
        value(&text, "chat_raft_elections_total"),
        replica.metrics().elections_started as f64
    );
    assert!(text.contains("# TYPE chat_persist_duration_seconds histogram\n"));
    assert_eq!(value(&text, "chat_persist_duration_seconds_count"), 2.0);
    assert_eq!(value(&text, "chat_persist_entries_sum"), 3.0);
    assert_eq!(value(&text, r#"chat_persist_entries_bucket{le="1"}"#), 1.0);
    assert_eq!(value(&text, "chat_snapshot_size_bytes_count"), 1.0);
    assert_eq!(value(&text, "chat_snapshot_size_bytes_sum"), 2_048.0);
    assert_eq!(
        value(&text, "chat_snapshot_persist_duration_seconds_count"),
        1.0
    );
    assert_eq!(value(&text, "chat_snapshots_taken_total"), 0.0);
}

#[test]
fn client_peer_and_sampled_values_render() {
    let metrics = Metrics::new([NodeId(2)]);
    let client = metrics.client.clone();
    client.submitted(RequestKind::Write);
    client.submitted(RequestKind::Write);
    client.answered(RequestKind::Write, Duration::from_millis(3));
    client.submitted(RequestKind::StaleRead);
    client.login_refused(&Limited::Address {
        retry_after: Duration::from_secs(1),
    });
    let peer = metrics.peers.of(NodeId(2));
    peer.stream_full.inc_by(5);
    peer.reconnects.inc();
    let (sampled, listeners) = sampled();
    let _slot = listeners.acquire("alice").expect("under the limit");
    let text = metrics.finish(sampled).render().expect("render");

    assert_eq!(value(&text, "chat_proposals_total"), 2.0);
    assert_eq!(value(&text, "chat_proposal_duration_seconds_count"), 1.0);
    assert_eq!(
        value(&text, r#"chat_reads_total{consistency="stale"}"#),
        1.0
    );
    assert_eq!(
        value(&text, r#"chat_reads_total{consistency="linearizable"}"#),
        0.0
    );
    assert_eq!(
        value(&text, r#"chat_login_refusals_total{limit="address"}"#),
        1.0
    );
    assert_eq!(
        value(&text, r#"chat_login_refusals_total{limit="account"}"#),
        0.0
    );
    assert_eq!(
        value(
            &text,
            r#"chat_peer_messages_dropped_total{peer="2",reason="stream_full"}"#
        ),
        5.0
    );
    assert_eq!(
        value(
            &text,
            r#"chat_peer_messages_dropped_total{peer="2",reason="queue_full"}"#
        ),
        0.0
    );
    assert_eq!(value(&text, r#"chat_peer_reconnects_total{peer="2"}"#), 1.0);
    assert_eq!(value(&text, "chat_listen_streams"), 1.0);
    assert_eq!(value(&text, "chat_password_hash_queued"), 0.0);
    assert_eq!(
        value(&text, r#"chat_password_hashes_total{operation="verify"}"#),
        0.0
    );
    assert_eq!(value(&text, "chat_password_hash_refusals_total"), 0.0);
    assert!(text.contains("# TYPE chat_password_hashes_total counter\n"));
}
