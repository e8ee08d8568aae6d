//! Work a client can force on password hashing is bounded: a flood of wrong-password
//! logins neither costs the leader its leadership nor grows its memory, a follower refuses
//! a registration as "not the leader" without hashing, and a legitimate user still logs in
//! afterwards.

use crate::harness::{self, Cluster};
use chat_node::auth::HASH_MEMORY_BYTES;
use chat_node::client::ClusterClient;
use chat_node::hashing::hash_workers_default;
use chat_proto::chat::{LoginRequest, RegisterRequest};
use chat_proto::metadata::LEADER_ADDR;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

/// Concurrent wrong-password logins per round, each from its own loopback address so that
/// the per-address limit does not refuse them all and the hash pool is really pressed.
const FLOOD_CLIENTS: usize = 64;
const FLOOD_ROUNDS: usize = 5;
/// Accounts the flood spreads over: two clients per account, so that the per-account
/// limit is reached only after a few rounds and the first rounds press the hash pool.
const VICTIM_COUNT: usize = 32;
/// The leader's resident memory during and after the flood stays under this plus one
/// argon2 buffer (19 MiB) per hash worker. Measured on the 2-core test machine (one
/// worker, debug build of the node): 32 MB before the flood, 34 MB at its peak; with one
/// hashing thread per request, before the pool, the same flood reached 1.4 to 6.2 GB
/// and stayed there. 200 MB leaves room for allocator slack and other builds without
/// letting an unbounded pool pass.
const LEADER_RSS_BYTES_BASE_MAX: u64 = 200 * 1024 * 1024;
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(20);

fn flood_source(client: usize) -> IpAddr {
    // 127.0.1.x: apart from 127.0.0.1, which the legitimate user's client uses.
    let low = u8::try_from(client + 1).expect("fewer than 255 flood clients");
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, low))
}

/// Samples a process's RSS until `stop`, keeping the largest value.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(0));
    let peak_out = Arc::clone(&peak);
    let sampler = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let Some(rss) = harness::rss_bytes_of(pid) {
                peak.fetch_max(rss, Ordering::Relaxed);
            }
            tokio::time::sleep(RSS_SAMPLE_INTERVAL).await;
        }
    });
    (peak_out, sampler)
}

/// A count from the summary a node logs when it stops: "password hashing stopped
/// hashed=.. verified=.. refused=.. abandoned=..".
fn hashing_summary(cluster: &Cluster, id: u64, field: &str) -> u64 {
    let log = cluster.log(id);
    let line = log
        .lines()
        .find(|l| l.contains("password hashing stopped"))
        .unwrap_or_else(|| panic!("no hashing summary in n{id}'s log:\n{log}"));
    let prefix = format!("{field}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {field}= in {line:?}"))
        .parse()
        .expect("a count")
}

#[test]
fn wrong_password_flood_keeps_the_leader_its_term_and_its_memory() {
    harness::run(async {
        let mut cluster = Cluster::start(5);
        let leader = cluster.leader().await;
        let mut client = cluster.client();
        for v in 0..VICTIM_COUNT {
            harness::register(&mut client, &format!("victim{v}"))
                .await
                .expect("register a victim");
        }
        harness::register(&mut client, "bob")
            .await
            .expect("register bob");
        let before = client
            .status_of(&cluster.address(leader))
            .await
            .expect("leader status");
        let rss_before = cluster.rss_bytes(leader).expect("leader runs");
        let pid = cluster.pid(leader).expect("leader runs");
        let stop = Arc::new(AtomicBool::new(false));
        let (rss_peak, sampler) = sample_rss(pid, Arc::clone(&stop));

        let attackers: Vec<_> = (0..FLOOD_CLIENTS)
            .map(|c| cluster.raw_client(leader, Some(flood_source(c))))
            .collect();
        // Every answer's code, counted: printed before anything is asserted.
        let mut answers: BTreeMap<String, usize> = BTreeMap::new();
        for round in 0..FLOOD_ROUNDS {
            let calls: Vec<_> = attackers
                .iter()
                .enumerate()
                .map(|(c, attacker)| {
                    let mut attacker = attacker.clone();
                    let request = LoginRequest {
                        user: format!("victim{}", c % VICTIM_COUNT),
                        password: format!("wrong password {round}"),
                    };
                    tokio::spawn(async move { attacker.login(request).await })
                })
                .collect();
            for call in calls {
                let refused = call
                    .await
                    .expect("login task")
                    .expect_err("a wrong password never logs in");
                *answers.entry(format!("{:?}", refused.code())).or_default() += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        sampler.await.expect("sampler");
        let rss_peak = rss_peak.load(Ordering::Relaxed);
        let rss_after = cluster.rss_bytes(leader).expect("leader runs");
        let after = client
            .status_of(&cluster.address(leader))
            .await
            .expect("leader status");
        println!(
            "{FLOOD_ROUNDS} rounds of {FLOOD_CLIENTS} concurrent wrong-password logins: \
             answers {answers:?}; leader RSS {} MB before, {} MB peak, {} MB after; term {} -> {}",
            rss_before >> 20,
            rss_peak >> 20,
            rss_after >> 20,
            before.term,
            after.term,
        );

        let count = |code: Code| answers.get(&format!("{code:?}")).copied().unwrap_or(0);
        let unauthenticated = count(Code::Unauthenticated);
        let exhausted = count(Code::ResourceExhausted);
        assert_eq!(
            unauthenticated + exhausted,
            FLOOD_ROUNDS * FLOOD_CLIENTS,
            "a wrong password got another answer: {answers:?}"
        );
        // Hashing really ran (the flood was not refused wholesale), and the bounds engaged.
        assert!(unauthenticated > 0, "no wrong password was ever checked");
        assert!(exhausted > 0, "neither the pool nor the limits refused");
        assert_eq!(
            after.role, "leader",
            "the flood cost n{leader} its leadership"
        );
        assert_eq!(after.term, before.term, "the flood caused an election");
        let workers = hash_workers_default() as u64;
        let rss_max = LEADER_RSS_BYTES_BASE_MAX + workers * HASH_MEMORY_BYTES as u64;
        assert!(
            rss_peak <= rss_max,
            "leader RSS peaked at {rss_peak} bytes, over {rss_max}"
        );
        assert!(rss_after <= rss_max);

        // Another user, from another address, still logs in.
        harness::login(&mut client, "bob").await;

        // The attacked account itself is limited, whatever address the attempts come
        // from: fresh addresses, so only the per-account limit can refuse.
        let mut refused_for_account = None;
        for attempt in 0..=chat_node::limiter::ACCOUNT_FAILURES_BURST {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 2, (attempt + 1) as u8));
            let request = LoginRequest {
                user: "victim0".to_owned(),
                password: "still wrong".to_owned(),
            };
            let refused = cluster
                .raw_client(leader, Some(source))
                .login(request)
                .await
                .expect_err("wrong password");
            if refused.code() == Code::ResourceExhausted {
                refused_for_account = Some(refused);
                break;
            }
            assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        }
        let refused = refused_for_account.expect("the per-account limit refuses");
        assert!(refused.message().contains("account"), "{refused:?}");

        // The pool's own bound engaged too (64 at once is more than it queues), and it
        // checked passwords: the flood was not stopped by the limits alone.
        assert!(cluster.terminate(leader).success());
        assert!(hashing_summary(&cluster, leader, "refused") > 0);
        assert!(hashing_summary(&cluster, leader, "verified") > 0);
    });
}

#[test]
fn a_follower_refuses_registration_before_hashing() {
    harness::run(async {
        let mut cluster = Cluster::start(3);
        let leader = cluster.leader().await;
        let follower = (1..=3).find(|&id| id != leader).expect("a follower");
        let mut client = cluster.client();
        harness::register(&mut client, "alice")
            .await
            .expect("register through the leader");

        let rss_before = cluster.rss_bytes(follower).expect("follower runs");
        let raw = cluster.raw_client(follower, None);
        let calls: Vec<_> = (0..FLOOD_CLIENTS)
            .map(|i| {
                let mut raw = raw.clone();
                let request = RegisterRequest {
                    registration_id: ClusterClient::registration_id(),
                    user: format!("user{i}"),
                    password: harness::PASSWORD.to_owned(),
                };
                tokio::spawn(async move { raw.register(request).await })
            })
            .collect();
        for call in calls {
            let refused = call
                .await
                .expect("register task")
                .expect_err("a follower does not register");
            // Had the follower hashed first, most of these would be RESOURCE_EXHAUSTED
            // (its pool queue is far shorter than the flood).
            assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
            let hint = refused
                .metadata()
                .get(LEADER_ADDR)
                .and_then(|v| v.to_str().ok());
            assert_eq!(hint, Some(cluster.address(leader).as_str()));
        }

        let rss_after = cluster.rss_bytes(follower).expect("follower runs");
        println!(
            "{FLOOD_CLIENTS} concurrent registrations sent to a follower: its RSS {} MB \
             before, {} MB after",
            rss_before >> 20,
            rss_after >> 20
        );
        assert!(rss_after <= LEADER_RSS_BYTES_BASE_MAX);

        // Each node counts the passwords it hashed, and says so when it stops.
        assert!(cluster.terminate(follower).success());
        assert!(cluster.terminate(leader).success());
        let hashed = |id| hashing_summary(&cluster, id, "hashed");
        assert_eq!(hashed(follower), 0, "the follower hashed");
        assert_eq!(hashing_summary(&cluster, follower, "verified"), 0);
        assert!(hashed(leader) >= 1, "the leader's count is live");
    });
}
