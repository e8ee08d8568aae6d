//! With certificate files the nodes serve TLS and reach each other over TLS; clients
//! verify them with the CA, and a plaintext client gets nowhere.

use crate::harness::{self, Cluster};
use chat_node::client::ClusterClient;
use std::time::Duration;

#[test]
fn a_tls_cluster_serves_and_replicates() {
    harness::run(async {
        let cluster = Cluster::start_with(3, true);
        cluster.leader().await;
        let mut client = cluster.client();
        harness::register(&mut client, "alice")
            .await
            .expect("register over TLS");
        harness::register(&mut client, "bob")
            .await
            .expect("register");
        let alice = harness::login(&mut client, "alice").await;
        let bob = harness::login(&mut client, "bob").await;
        harness::send(&mut client, &alice, "bob", "secret")
            .await
            .expect("send");
        let read = harness::read_all(&mut client, &bob).await;
        assert_eq!(read.len(), 1);
        cluster.converged().await;

        let mut plaintext = ClusterClient::new(cluster.addresses(), None);
        plaintext.retry_budget = Duration::from_millis(300);
        assert!(
            plaintext.discover().await.is_err(),
            "plaintext must not work"
        );

        let output = std::process::Command::new(harness::chatctl())
            .arg("--cluster")
            .arg(cluster.address(1))
            .arg("--ca")
            .arg(harness::tls_file("ca.pem"))
            .args(["list", "--user", "alice"])
            .env("CHAT_PASSWORD", harness::PASSWORD)
            .env_remove("CHAT_TOKEN")
            .output()
            .expect("run chatctl");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "alice\nbob\n(2 matching, page 0)\n"
        );
    });
}
