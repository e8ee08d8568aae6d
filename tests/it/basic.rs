//! Five nodes start; two users register; 100 messages go through and come back once.

use crate::harness::{self, Cluster};
use std::collections::BTreeSet;
use std::time::Instant;

#[test]
fn hundred_messages_are_read_back_exactly_once() {
    harness::run(async {
        let cluster = Cluster::start(5);
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
    });
}
