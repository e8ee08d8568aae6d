//! SIGTERM: the node finishes what it was writing, closes its streams and exits 0; a
//! listener on it moves to another node without missing a message.

use crate::harness::{self, Cluster};
use chat_node::client::ClusterClient;
use std::time::Duration;
use tokio::sync::mpsc;

#[test]
fn sigterm_stops_a_node_cleanly() {
    harness::run(async {
        let mut cluster = Cluster::start(3);
        cluster.leader().await;
        let mut client = cluster.client();
        harness::register(&mut client, "alice")
            .await
            .expect("register");
        harness::register(&mut client, "bob")
            .await
            .expect("register");
        let alice = harness::login(&mut client, "alice").await;
        let bob = harness::login(&mut client, "bob").await;

        let mut listener = ClusterClient::new(vec![cluster.address(1)], None);
        listener.discover().await.expect("discover");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let listening =
            tokio::spawn(async move { listener.listen(bob, 0, |m| tx.send(m).is_ok()).await });
        harness::send(&mut client, &alice, "bob", "one")
            .await
            .expect("send");
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(first.expect("in time").expect("listening").body, "one");

        let status = cluster.terminate(1);
        assert!(
            status.success(),
            "SIGTERM exit: {status:?}\n{}",
            cluster.log(1)
        );
        assert!(cluster.log(1).contains("core stopped; storage is synced"));

        harness::send(&mut client, &alice, "bob", "two")
            .await
            .expect("send");
        let second = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(second.expect("in time").expect("listening").body, "two");
        listening.abort();
    });
}
