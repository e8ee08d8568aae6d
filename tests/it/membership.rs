//! Membership changes on real processes, under load: replacing a failed machine by a new
//! id, removing the leader, a rolling restart with leadership transfer; a backup taken
//! under load restored into a new cluster; and `chatctl member` errors (insta).

use crate::harness::{self, Cluster};
use chat_core::NodeId;
use std::collections::BTreeMap;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Election timeouts are 6 to 12 ticks of 50 ms. A step may cost at most one election
/// timeout of unavailability (plus the clients' own retry: a backoff step and a
/// redirect); asserted with room for a loaded 2-core machine, and printed.
const GAP_BOUND: Duration = Duration::from_millis(1_500);

/// Senders: each its own client and session, sending alice -> bob until stopped. Every
/// acknowledged body and the time of every acknowledgement are recorded.
struct Load {
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
    ack_times: Arc<Mutex<Vec<Instant>>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(cluster: &Cluster, clients: usize) -> Load {
        let mut setup = cluster.client();
        harness::register(&mut setup, "alice")
            .await
            .expect("register");
        harness::register(&mut setup, "bob")
            .await
            .expect("register");
        let alice = harness::login(&mut setup, "alice").await;
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let ack_times = Arc::new(Mutex::new(Vec::new()));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for task in 0..clients {
            let mut client = cluster.client();
            let alice = alice.clone();
            let stop_rx = stop_rx.clone();
            let acked = Arc::clone(&acked);
            let ack_times = Arc::clone(&ack_times);
            tasks.push(tokio::spawn(async move {
                let mut attempt = 0u64;
                while !*stop_rx.borrow() {
                    attempt += 1;
                    let body = format!("c{task}-{attempt}");
                    if let Ok(id) = harness::send(&mut client, &alice, "bob", &body).await {
                        let now = Instant::now();
                        lock(&acked).insert(body, id);
                        lock(&ack_times).push(now);
                    }
                }
            }));
        }
        Load {
            acked,
            ack_times,
            stop,
            tasks,
        }
    }

    /// The longest stretch without any acknowledgement between `from` and `to`.
    fn gap(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = lock(&self.ack_times)
            .iter()
            .copied()
            .filter(|t| *t >= from && *t <= to)
            .collect();
        times.sort();
        let mut previous = from;
        let mut gap = Duration::ZERO;
        for time in times.into_iter().chain([to]) {
            gap = gap.max(time - previous);
            previous = time;
        }
        gap
    }

    fn acked(&self) -> BTreeMap<String, u64> {
        lock(&self.acked).clone()
    }

    async fn stop(self) -> BTreeMap<String, u64> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("sender task");
        }
        lock(&self.acked).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A sender that panicked fails the test anyway; the data is still readable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `exit <code>: <stderr>` for an error snapshot.
fn failure(output: &Output) -> String {
    format!(
        "exit {}: {}",
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).trim_end()
    )
}

/// Waits until node `id` answers and has applied at least `index`.
async fn caught_up(cluster: &Cluster, id: u64, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.client().status_of(&cluster.address(id)).await;
        if status.is_ok_and(|s| s.last_applied >= index) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "n{id} did not catch up to {index}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn commit_index(cluster: &Cluster) -> u64 {
    let leader = cluster.leader().await;
    cluster
        .client()
        .status_of(&cluster.address(leader))
        .await
        .expect("leader status")
        .commit_index
}

#[test]
fn replace_remove_leader_and_rolling_restart_under_load() {
    harness::run(async {
        let mut cluster = Cluster::start(5);
        let first_leader = cluster.leader().await;
        let load = Load::start(&cluster, 8).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut gaps = Vec::new();

        // A machine dies and loses its disk: remove it, add a new node under a new id.
        let started = Instant::now();
        let failed = (1..=5).find(|&id| id != first_leader).expect("a follower");
        cluster.kill(failed);
        std::fs::remove_dir_all(cluster.data_dir(failed)).expect("wipe the data dir");
        let removed = cluster.chatctl(&["member", "remove", &failed.to_string()]);
        ok(&removed, "member remove");
        cluster.forget(failed);
        let new = cluster.start_joining();
        let added = cluster.chatctl(&[
            "member",
            "add",
            "--id",
            &new.to_string(),
            "--addr",
            &cluster.address(new),
        ]);
        let added = ok(&added, "member add");
        assert!(added.contains("is a voter"), "{added}");
        let replaced = Instant::now();
        gaps.push(("replace", load.gap(started, replaced), replaced - started));

        // The leader is removed: it hands over and stops serving for good.
        let started = Instant::now();
        let leader = cluster.leader().await;
        ok(
            &cluster.chatctl(&["member", "remove", &leader.to_string()]),
            "remove the leader",
        );
        cluster.forget(leader);
        let new_leader = cluster.leader().await;
        assert_ne!(new_leader, leader);
        let deadline = Instant::now() + Duration::from_secs(15);
        while cluster.is_running(leader) {
            assert!(Instant::now() < deadline, "removed n{leader} still serves");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            cluster.log(leader).contains("was removed from the cluster"),
            "the removed node says why it stopped"
        );
        let done = Instant::now();
        gaps.push(("remove leader", load.gap(started, done), done - started));

        // Back to five voters: one more new node.
        let started = Instant::now();
        let another = cluster.start_joining();
        let added = cluster.chatctl(&[
            "member",
            "add",
            "--id",
            &another.to_string(),
            "--addr",
            &cluster.address(another),
        ]);
        ok(&added, "member add");
        assert_eq!(cluster.member_ids().len(), 5);
        let done = Instant::now();
        gaps.push(("add capacity", load.gap(started, done), done - started));

        // Rolling restart: all five in turn, SIGTERM (the leader hands over first).
        for id in cluster.member_ids() {
            let started = Instant::now();
            let index = commit_index(&cluster).await;
            let status = cluster.terminate(id);
            assert!(status.success(), "n{id} stopped cleanly: {status:?}");
            cluster.restart(id);
            caught_up(&cluster, id, index).await;
            let done = Instant::now();
            gaps.push(("restart", load.gap(started, done), done - started));
        }
        let handed: Vec<String> = cluster
            .member_ids()
            .into_iter()
            .flat_map(|id| {
                cluster
                    .log(id)
                    .lines()
                    .filter(|l| l.contains("leadership handed over"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(!handed.is_empty(), "the leader's restart handed over");

        let acked = load.stop().await;
        for (step, gap, took) in &gaps {
            println!("{step}: longest gap without an acknowledgement {gap:?} (step took {took:?})");
        }
        for line in &handed {
            println!("{line}");
        }
        for (step, gap, _) in &gaps {
            assert!(
                *gap <= GAP_BOUND,
                "{step}: no send acknowledged for {gap:?}"
            );
        }
        let (commit, hash) = cluster.converged().await;
        println!(
            "{} sends acknowledged; converged at commit {commit}, state hash {hash:016x}",
            acked.len()
        );
        let mut client = cluster.client();
        let bob = harness::login(&mut client, "bob").await;
        let all = harness::inbox(&mut client, &bob).await;
        harness::check_exactly_once(&all, &acked);
    });
}

#[test]
fn backup_under_load_restores_into_a_new_cluster() {
    harness::run(async {
        let source = Cluster::start(3);
        source.leader().await;
        let load = Load::start(&source, 4).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let backup_file = source.dir.path().join("backup.chat");
        let before = load.acked();
        let saved = source.chatctl(&["snapshot", "save", backup_file.to_str().expect("utf-8")]);
        let saved = ok(&saved, "snapshot save");
        println!("{}", saved.trim_end());
        let acked = load.stop().await;
        assert!(
            acked.len() > before.len(),
            "the load went on around the save"
        );

        let backup = chat_node::backup::Backup::read_from(&backup_file).expect("backup file");
        let state = chat_core::machine::MachineState::decode(&backup.data).expect("state");
        assert_eq!(
            state.state_hash(),
            backup.state_hash,
            "the file holds the source's state at index {}",
            backup.last_index
        );

        // A new cluster: node 1 restored from the file, then a second node added.
        let mut restored = Cluster::prepare(1, false, None);
        let seeded = std::process::Command::new(harness::chatnode())
            .arg("restore")
            .arg("--from")
            .arg(&backup_file)
            .arg("--data-dir")
            .arg(restored.data_dir(1))
            .arg("--id")
            .arg("1")
            .output()
            .expect("run chatnode restore");
        ok(&seeded, "chatnode restore");
        let expected = chat_node::backup::restored_state(&backup, NodeId(1))
            .expect("restorable")
            .state_hash();
        let seeded = String::from_utf8_lossy(&seeded.stdout).into_owned();
        assert!(
            seeded.contains(&format!("{expected:016x}")),
            "restore reports the restored hash: {seeded}"
        );
        // The restored cluster must be reachable with the source's secret (tokens).
        std::fs::copy(source.secret_file(), restored.secret_file()).expect("same secret");
        restored.restart(1);
        restored.leader().await;
        let joined = restored.start_joining();
        ok(
            &restored.chatctl(&[
                "member",
                "add",
                "--id",
                &joined.to_string(),
                "--addr",
                &restored.address(joined),
            ]),
            "grow the restored cluster",
        );
        let (commit, hash) = restored.converged().await;
        println!("restored cluster converged at commit {commit}, state hash {hash:016x}");
        let mut client = restored.client();
        let bob = harness::login(&mut client, "bob").await;
        let all = harness::inbox(&mut client, &bob).await;
        harness::check_exactly_once(&all, &before);
        assert!(all.len() >= before.len());
    });
}

#[test]
fn member_errors_are_one_line_each() {
    harness::run(async {
        let mut cluster = Cluster::start(3);
        let leader = cluster.leader().await;
        let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
        let (f, g) = (followers[0], followers[1]);
        let mut lines = Vec::new();
        let addr_g = cluster.address(g);
        let mut record = |what: &str, output: Output| {
            let text = failure(&output)
                .replace(&addr_g, "ADDR_G")
                .replace(&format!("node n{g}"), "node nG")
                .replace(&format!("node n{f}"), "node nF");
            lines.push(format!("{what}\n  {text}"));
        };
        record(
            "promote an unknown id",
            cluster.chatctl(&["member", "promote", "42"]),
        );
        record(
            "add at a member's address",
            cluster.chatctl(&["member", "add", "--id", "9", "--addr", &cluster.address(g)]),
        );
        record(
            "add an existing id",
            cluster.chatctl(&[
                "member",
                "add",
                "--id",
                &g.to_string(),
                "--addr",
                "127.0.0.1:1",
            ]),
        );
        record(
            "add a bad address",
            cluster.chatctl(&["member", "add", "--id", "9", "--addr", "no port here"]),
        );
        record(
            "transfer to a non-voter",
            cluster.chatctl(&["transfer-leader", "42"]),
        );
        let no_secret = std::process::Command::new(harness::chatctl())
            .arg("--cluster")
            .arg(cluster.addresses().join(","))
            .args(["member", "list"])
            .env_remove("CHAT_SECRET_FILE")
            .output()
            .expect("run chatctl");
        record("no secret", no_secret);
        let wrong = cluster.dir.path().join("wrong-secret");
        std::fs::write(&wrong, "not-the-secret-of-this-cluster").expect("write");
        let wrong_secret = std::process::Command::new(harness::chatctl())
            .arg("--cluster")
            .arg(cluster.addresses().join(","))
            .arg("--secret-file")
            .arg(&wrong)
            .args(["member", "list"])
            .output()
            .expect("run chatctl");
        record("a wrong secret", wrong_secret);

        // Below a quorum: with f down, removing g would leave the leader alone of two.
        cluster.kill(f);
        tokio::time::sleep(Duration::from_millis(800)).await;
        record(
            "remove below a reachable quorum",
            cluster.chatctl(&["member", "remove", &g.to_string()]),
        );
        cluster.restart(f);
        cluster.converged().await;
        ok(
            &cluster.chatctl(&["member", "remove", &g.to_string()]),
            "remove g",
        );
        cluster.forget(g);
        record(
            "add a removed id again",
            cluster.chatctl(&[
                "member",
                "add",
                "--id",
                &g.to_string(),
                "--addr",
                "127.0.0.1:1",
            ]),
        );
        insta::assert_snapshot!("chatctl_member_errors", lines.join("\n"));
    });
}
