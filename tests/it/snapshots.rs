//! Snapshots on real nodes: each replica saves its own snapshot on its snapshot thread,
//! and recovers from it (and its log tail) after a kill -9 of every node. (Compaction of
//! segments is covered by the simulator, which rolls small segments.)

use crate::harness::{self, Cluster};
use crate::metrics::Page;

#[test]
fn replicas_snapshot_and_recover_after_kill() {
    harness::run(async {
        const SNAPSHOT_ENTRIES: u64 = 50;
        const SENDS: usize = 300;
        let mut cluster = Cluster::start_configured(3, false, Some(SNAPSHOT_ENTRIES));
        cluster.leader().await;
        let mut client = cluster.client();
        harness::register(&mut client, "alice")
            .await
            .expect("register");
        let alice = harness::login(&mut client, "alice").await;
        for n in 0..SENDS {
            harness::send(&mut client, &alice, "alice", &format!("note {n}"))
                .await
                .expect("send");
        }
        let (commit, hash) = cluster.converged().await;
        assert!(commit >= SENDS as u64);
        for id in 1..=3 {
            let dir = cluster.data_dir(id);
            assert!(dir.join("snapshot").exists(), "node {id} saved a snapshot");
            assert!(
                cluster.log(id).contains("snapshot staged"),
                "node {id} wrote its snapshot on the snapshot thread"
            );
        }
        // kill -9 every node and restart: each recovers from its snapshot and log tail.
        for id in 1..=3 {
            cluster.kill(id);
        }
        for id in 1..=3 {
            cluster.restart(id);
        }
        cluster.leader().await;
        let (commit_after, hash_after) = cluster.converged().await;
        assert!(commit_after >= commit);
        if commit_after == commit {
            assert_eq!(hash_after, hash, "the same state after recovery");
        }
        let inbox = harness::inbox(&mut client, &alice).await;
        assert_eq!(inbox.len(), SENDS, "every acknowledged send survived");
    });
}

/// A follower that missed entries the leader has compacted catches up by InstallSnapshot
/// over the real transport, streamed from the leader's snapshot file; afterwards no node
/// holds snapshot bytes in memory (the follower swaps what it received for its own file),
/// and the transfer is visible in the metrics.
#[test]
fn a_lagging_follower_installs_the_leaders_snapshot_streamed_from_its_file() {
    harness::run(async {
        const SNAPSHOT_ENTRIES: u64 = 50;
        const SENDS: usize = 300;
        let mut cluster = Cluster::start_configured(3, false, Some(SNAPSHOT_ENTRIES));
        let leader = cluster.leader().await;
        let lagger = cluster.follower().await;
        cluster.kill(lagger);
        let mut client = cluster.client();
        harness::register(&mut client, "alice")
            .await
            .expect("register");
        let alice = harness::login(&mut client, "alice").await;
        for n in 0..SENDS {
            harness::send(&mut client, &alice, "alice", &format!("note {n}"))
                .await
                .expect("send");
        }
        cluster.restart(lagger);
        cluster.converged().await;
        let page = |text: Result<String, String>| Page::parse(&text.expect("scrape /metrics"));
        let lagger_page = page(cluster.scrape(lagger).await);
        assert!(lagger_page.get("chat_snapshots_installed_total", &[]) >= 1.0);
        assert_eq!(lagger_page.get("chat_snapshots_refused_total", &[]), 0.0);
        let leader_page = page(cluster.scrape(leader).await);
        assert!(leader_page.get("chat_snapshot_chunks_sent_total", &[]) >= 1.0);
        assert_eq!(leader_page.get("chat_snapshot_read_errors_total", &[]), 0.0);
        for id in [leader, lagger] {
            let node_page = page(cluster.scrape(id).await);
            assert_eq!(
                node_page.get("chat_snapshot_memory_bytes", &[]),
                0.0,
                "node {id} reads its snapshot from its file"
            );
        }
        let inbox = harness::inbox(&mut client, &alice).await;
        assert_eq!(inbox.len(), SENDS);
    });
}
