//! `listen` keeps receiving across a SIGKILL of the node it is connected to: it resumes
//! elsewhere from the last id it saw, missing nothing and repeating nothing.

use crate::harness::{self, Cluster};
use chat_node::client::ClusterClient;
use std::time::Duration;
use tokio::sync::mpsc;

#[test]
fn listen_survives_the_death_of_its_node() {
    harness::run(async {
        let mut cluster = Cluster::start(5);
        let leader = cluster.leader().await;
        let mut client = cluster.client();
        harness::register(&mut client, "alice")
            .await
            .expect("register");
        harness::register(&mut client, "bob")
            .await
            .expect("register");
        let alice = harness::login(&mut client, "alice").await;
        let bob = harness::login(&mut client, "bob").await;

        // The listener starts on a follower (the first address it is given).
        let listened = (1..=5).find(|&id| id != leader).expect("a follower");
        let mut listener = ClusterClient::new(vec![cluster.address(listened)], None);
        listener.discover().await.expect("discover");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let bob_token = bob.clone();
        let listening = tokio::spawn(async move {
            listener
                .listen(bob, 0, |message| tx.send(message).is_ok())
                .await
        });

        for i in 0..10 {
            harness::send(&mut client, &alice, "bob", &format!("before {i}"))
                .await
                .expect("send");
        }
        let mut received = Vec::new();
        while received.len() < 10 {
            let message = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("live message within 10 s")
                .expect("listener alive");
            received.push(message);
        }
        cluster.kill(listened);
        for i in 0..10 {
            harness::send(&mut client, &alice, "bob", &format!("after {i}"))
                .await
                .expect("send");
        }
        while received.len() < 20 {
            let message = tokio::time::timeout(Duration::from_secs(15), rx.recv())
                .await
                .expect("live message after failover within 15 s")
                .expect("listener alive");
            received.push(message);
        }
        // Nothing more (in particular no repeat) arrives.
        let extra = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
        assert!(extra.is_err(), "unexpected extra message: {extra:?}");
        let bodies: Vec<String> = received.iter().map(|m| m.body.clone()).collect();
        let expected: Vec<String> = (0..10)
            .map(|i| format!("before {i}"))
            .chain((0..10).map(|i| format!("after {i}")))
            .collect();
        assert_eq!(bodies, expected);

        // Logging out ends the stream: the token is dead on every node.
        let request = chat_proto::chat::LogoutRequest {
            session: Some(client.session(&bob_token).await.expect("session")),
            auth: Some(bob_token),
        };
        client
            .call(|mut c| {
                let request = request.clone();
                async move { c.logout(request).await }
            })
            .await
            .expect("logout");
        let ended = tokio::time::timeout(Duration::from_secs(10), listening)
            .await
            .expect("stream ends within 10 s after logout")
            .expect("listener task");
        assert_eq!(
            ended.expect_err("ended by the server").code(),
            tonic::Code::Unauthenticated
        );
    });
}
