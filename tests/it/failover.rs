//! Crashes while clients send: the leader and a follower are SIGKILLed mid-stream, then
//! restarted and caught up; then the whole cluster is SIGKILLed and restarted. Every
//! acknowledged send is there exactly once throughout, and nothing is duplicated.

use crate::harness::{self, Cluster};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[test]
fn acknowledged_sends_survive_crashes_exactly_once() {
    harness::run(async {
        let mut cluster = Cluster::start(5);
        let leader = cluster.leader().await;
        let mut setup = cluster.client();
        harness::register(&mut setup, "alice")
            .await
            .expect("register");
        harness::register(&mut setup, "bob")
            .await
            .expect("register");
        let alice = harness::login(&mut setup, "alice").await;
        let bob = harness::login(&mut setup, "bob").await;

        // Two sender tasks, each acknowledging sends one at a time with its own session.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut senders = Vec::new();
        for name in ["a", "b"] {
            let mut sender_client = cluster.client();
            let alice = alice.clone();
            let mut stop_rx = stop_rx.clone();
            senders.push(tokio::spawn(async move {
                let mut acked = BTreeMap::new();
                let mut attempts = 0u64;
                while !*stop_rx.borrow_and_update() {
                    attempts += 1;
                    let body = format!("{name}{attempts}");
                    if let Ok(id) = harness::send(&mut sender_client, &alice, "bob", &body).await {
                        acked.insert(body, id);
                    }
                }
                (acked, attempts)
            }));
        }

        tokio::time::sleep(Duration::from_millis(700)).await;
        let follower = (1..=5).find(|&id| id != leader).expect("a follower");
        cluster.kill(leader);
        cluster.kill(follower);
        let killed_at = Instant::now();
        // Sends must resume on the survivors: wait for a new leader, then some more.
        let new_leader = cluster.leader().await;
        assert_ne!(new_leader, leader);
        println!("new leader n{new_leader} after {:?}", killed_at.elapsed());
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        stop_tx.send(true).expect("sender alive");
        let mut acked = BTreeMap::new();
        let mut attempts = 0;
        for sender in senders {
            let (sender_acked, sender_attempts) = sender.await.expect("sender task");
            acked.extend(sender_acked);
            attempts += sender_attempts;
        }
        println!("{attempts} sends attempted, {} acknowledged", acked.len());
        assert!(
            acked.len() > 10,
            "too few sends acknowledged: {}",
            acked.len()
        );

        let mut client = cluster.client();
        let alice = harness::login(&mut client, "alice").await;
        let more = harness::send(&mut client, &alice, "bob", "after the crash")
            .await
            .expect("sends resume after the crash");
        acked.insert("after the crash".to_owned(), more);

        // The killed nodes come back and catch up.
        cluster.restart(leader);
        cluster.restart(follower);
        let (commit, hash) = cluster.converged().await;
        println!("converged at commit {commit}, state hash {hash:016x}");

        // Power loss: every node SIGKILLed at once, then restarted.
        for id in 1..=5 {
            cluster.kill(id);
        }
        for id in 1..=5 {
            cluster.restart(id);
        }
        cluster.leader().await;
        cluster.converged().await;
        let mut client = cluster.client();
        let all = harness::inbox(&mut client, &bob).await;
        harness::check_exactly_once(&all, &acked);
        let read = harness::read_all(&mut client, &bob).await;
        harness::check_exactly_once(&read, &acked);
        assert_eq!(read.len(), all.len());
    });
}
