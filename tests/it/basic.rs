//! Five nodes start; two users register; 100 messages go through and come back once.

use crate::harness::{self, Cluster};

use std::collections::BTreeSet;
use std::time::Instant;

#[test]
fn hundred_messages_are_read_back_exactly_once() {
    harness::run(async {
        let mut cluster = Cluster::start(5);
        cluster.leader().await;
        let mut client = cluster.client();
        harness::register(&mut client, "alice")
            .await
            .expect("register alice");
        harness::register(&mut client, "bob")
            .await
            .expect("register bob");
        let alice = harness::login(&mut client, "alice").await;
        let bob = harness::login(&mut client, "bob").await;

        let started = Instant::now();
        for i in 0..100 {
            harness::send(&mut client, &alice, "bob", &format!("message {i}"))
                .await
                .expect("send");
        }
        let elapsed = started.elapsed();
        println!(
            "100 sequential sends in {elapsed:?}: {:.0} sends/s",
            100.0 / elapsed.as_secs_f64()
        );

        let read = harness::read_all(&mut client, &bob).await;
        let bodies: Vec<&str> = read.iter().map(|m| m.body.as_str()).collect();
        let expected: Vec<String> = (0..100).map(|i| format!("message {i}")).collect();
        assert_eq!(bodies, expected, "every message once, oldest first");
        assert!(read
            .iter()
            .all(|m| m.sender == "alice" && m.recipient == "bob"));
        let ids: BTreeSet<u64> = read.iter().map(|m| m.id).collect();
        assert_eq!(ids.len(), 100);
        assert!(harness::read_all(&mut client, &bob).await.is_empty());

        // Throughput with concurrent sessions: group commit batches them.
        const CLIENTS: usize = 8;
        const SENDS_PER_CLIENT: usize = 50;
        let started = Instant::now();
        let mut senders = Vec::new();
        for c in 0..CLIENTS {
            let mut client = cluster.client();
            let alice = alice.clone();
            senders.push(tokio::spawn(async move {
                for i in 0..SENDS_PER_CLIENT {
                    let body = format!("c{c} m{i}");
                    harness::send(&mut client, &alice, "bob", &body)
                        .await
                        .expect("send");
                }
            }));
        }
        for sender in senders {
            sender.await.expect("sender");
        }
        let elapsed = started.elapsed();
        let total = CLIENTS * SENDS_PER_CLIENT;
        println!(
            "{total} sends from {CLIENTS} concurrent clients in {elapsed:?}: {:.0} sends/s",
            total as f64 / elapsed.as_secs_f64()
        );
        let read = harness::read_all(&mut client, &bob).await;
        let bodies: BTreeSet<&str> = read.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(read.len(), total);
        assert_eq!(bodies.len(), total);
        let leader = cluster.leader().await;
        cluster.converged().await;

        // Every node reports itself healthy through the standard gRPC health service.
        for address in cluster.addresses() {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                .expect("valid address")
                .connect()
                .await
                .expect("connect");
            let health = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "chat.v1.Chat".to_owned(),
                })
                .await
                .expect("health check")
                .into_inner();
            assert_eq!(
                health.status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            );
        }

        // SIGTERM the leader: it exits cleanly and reports how many entries each fsync
        // carried (group commit).
        let status = cluster.terminate(leader);
        assert!(status.success(), "{}", cluster.log(leader));
        let log = cluster.log(leader);
        let summary = log
            .lines()
            .find(|l| l.contains("core stopped"))
            .expect("summary");
        println!("leader n{leader}: {summary}");
    });
}
