//! `listen` keeps receiving across a SIGKILL of the node it is connected to: it resumes
//! elsewhere from the last id it saw, missing nothing and repeating nothing. A follower
//! cut off from the leader stops serving; cursors and stream counts are bounded.

use crate::harness::{self, Cluster};
use chat_node::client::ClusterClient;
use chat_node::listen::{LISTEN_STREAMS_PER_NODE_MAX, LISTEN_STREAMS_PER_USER_MAX};
use chat_proto::chat::chat_client::ChatClient;
use chat_proto::chat::{ChatMessage, Credentials, ListenRequest};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::Code;

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

/// The first status that ends `stream` (a clean end counts as OK).
async fn end_of(stream: &mut tonic::Streaming<ChatMessage>) -> tonic::Status {
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return tonic::Status::ok("stream ended"),
            Err(status) => return status,
        }
    }
}

async fn listen_on(
    address: &str,
    auth: &Credentials,
    after_id: u64,
) -> Result<tonic::Streaming<ChatMessage>, tonic::Status> {
    let mut raw = ChatClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    let request = ListenRequest {
        auth: Some(auth.clone()),
        after_id,
    };
    raw.listen(request).await.map(tonic::Response::into_inner)
}

/// A follower that loses the leader stops serving: its stream ends UNAVAILABLE within
/// about an election timeout, since the majority could be logging the user out
/// meanwhile, and new streams are refused there until it is back in touch.
#[test]
fn a_follower_cut_off_from_the_leader_ends_its_streams() {
    harness::run(async {
        let cluster = Cluster::start(5);
        let leader = cluster.leader().await;
        let mut client = cluster.client();
        for user in ["alice", "bob"] {
            harness::register(&mut client, user)
                .await
                .expect("register");
        }
        let alice = harness::login(&mut client, "alice").await;
        let bob = harness::login(&mut client, "bob").await;
        harness::send(&mut client, &alice, "bob", "first")
            .await
            .expect("send");
        cluster.converged().await;
        let follower = (1..=5).find(|&id| id != leader).expect("a follower");
        let mut stream = listen_on(&cluster.address(follower), &bob, 0)
            .await
            .expect("listen on a follower in touch with the leader");
        let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stored message within 10 s")
            .expect("a message")
            .expect("not the end");
        assert_eq!(first.body, "first");

        let others: Vec<u64> = (1..=5).filter(|&id| id != follower).collect();
        for &id in &others {
            cluster.pause(id);
        }
        let cut = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), end_of(&mut stream))
            .await
            .expect("the stream ends within 5 s of losing the leader");
        let took = cut.elapsed();
        eprintln!("stream on the cut-off follower ended after {took:?}: {ended:?}");
        assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
        // One minimum election timeout (6 ticks of 50 ms) plus a freshness check (100 ms)
        // after the last heartbeat; the rest is margin for a loaded machine.
        assert!(took < Duration::from_millis(1_500), "took {took:?}");
        let started = Instant::now();
        let refused = listen_on(&cluster.address(follower), &bob, 0).await;
        assert_eq!(
            refused
                .expect_err("a stale replica serves no stream")
                .code(),
            Code::Unavailable
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );

        for &id in &others {
            cluster.resume(id);
        }
        cluster.leader().await;
        cluster.converged().await;
        let mut stream = listen_on(&cluster.address(follower), &bob, 0)
            .await
            .expect("back in touch, the follower serves again");
        let again = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stored message within 10 s")
            .expect("a message")
            .expect("not the end");
        assert_eq!(again.body, "first");
    });
}

/// A cursor beyond the leader's log is INVALID_ARGUMENT at once (also when asked of a
/// follower: it sends the client to the leader); a user holds a bounded number of
/// streams per node, and the slots of streams whose client hung up come back.
#[test]
fn listen_refuses_impossible_cursors_and_too_many_streams() {
    harness::run(async {
        let cluster = Cluster::start(3);
        let leader = cluster.leader().await;
        let mut client = cluster.client();
        for user in ["alice", "bob"] {
            harness::register(&mut client, user)
                .await
                .expect("register");
        }
        let alice = harness::login(&mut client, "alice").await;
        let bob = harness::login(&mut client, "bob").await;
        cluster.converged().await;
        let follower = (1..=3).find(|&id| id != leader).expect("a follower");

        let started = Instant::now();
        let refused = listen_on(&cluster.address(leader), &bob, u64::MAX).await;
        let refused = refused.expect_err("no message has id 2^64-1");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );
        let mut via_follower = ClusterClient::new(vec![cluster.address(follower)], None);
        let started = Instant::now();
        let refused = via_follower.listen(bob.clone(), u64::MAX, |_| true).await;
        let refused = refused.expect_err("no message has id 2^64-1");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        let took = started.elapsed();
        eprintln!("after_id 2^64-1 through a follower refused after {took:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");

        let address = cluster.address(follower);
        let mut held = Vec::new();
        for _ in 0..LISTEN_STREAMS_PER_USER_MAX {
            held.push(listen_on(&address, &bob, 0).await.expect("under the limit"));
        }
        let refused = listen_on(&address, &bob, 0).await;
        assert_eq!(
            refused.expect_err("one stream too many").code(),
            Code::ResourceExhausted
        );
        let alices = listen_on(&address, &alice, 0)
            .await
            .expect("the limit is per user");
        // Hanging up gives the slots back promptly.
        drop(held);
        drop(alices);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut reopened = Vec::new();
        while reopened.len() < LISTEN_STREAMS_PER_USER_MAX {
            match listen_on(&address, &bob, 0).await {
                Ok(stream) => reopened.push(stream),
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    assert!(Instant::now() < deadline, "slots not given back in 5 s");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}

/// Resident memory of a process, from /proc (Linux), in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One node serves at most `LISTEN_STREAMS_PER_NODE_MAX` streams; the next is refused at
/// once, and the slots (and the tasks behind them) come back when the clients hang up.
#[test]
fn a_node_serves_a_bounded_number_of_streams() {
    harness::run(async {
        let cluster = Cluster::start(3);
        let leader = cluster.leader().await;
        let mut client = cluster.client();
        let users = LISTEN_STREAMS_PER_NODE_MAX.div_ceil(LISTEN_STREAMS_PER_USER_MAX);
        let mut logins = Vec::new();
        for i in 0..users {
            let user = format!("u{i}");
            harness::register(&mut client, &user)
                .await
                .expect("register");
            logins.push(harness::login(&mut client, &user).await);
        }
        let extra = harness::login(&mut client, "u0").await;
        cluster.converged().await;
        let node = (1..=3).find(|&id| id != leader).expect("a follower");
        let address = cluster.address(node);
        let pid = cluster.pid(node).expect("node runs");
        let before = rss_kib(pid);
        // Each connection carries a bounded number of streams (the node's per-connection
        // limit): spread them over enough connections.
        const STREAMS_PER_CONNECTION: usize = 100;
        let mut channels = Vec::new();
        for _ in 0..=LISTEN_STREAMS_PER_NODE_MAX / STREAMS_PER_CONNECTION {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                .expect("address")
                .connect()
                .await
                .expect("connect");
            channels.push(channel);
        }
        let channel = channels.last().expect("at least one").clone();
        let mut held = Vec::new();
        for (n, auth) in logins
            .iter()
            .cycle()
            .take(LISTEN_STREAMS_PER_NODE_MAX)
            .enumerate()
        {
            let request = ListenRequest {
                auth: Some(auth.clone()),
                after_id: 0,
            };
            let mut raw = ChatClient::new(channels[n / STREAMS_PER_CONNECTION].clone());
            held.push(raw.listen(request).await.expect("under the node limit"));
        }
        let full = rss_kib(pid);
        let mut raw = ChatClient::new(channel.clone());
        let request = ListenRequest {
            auth: Some(extra.clone()),
            after_id: 0,
        };
        let refused = raw.listen(request.clone()).await;
        assert_eq!(
            refused.expect_err("one stream too many").code(),
            Code::ResourceExhausted
        );
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        let reopened = loop {
            match raw.listen(request.clone()).await {
                Ok(stream) => break stream,
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    assert!(Instant::now() < deadline, "slots not given back in 10 s");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let closed = rss_kib(pid);
        // Every slot comes back: the node fills up again, reusing the memory it kept.
        let mut held = vec![reopened];
        for (n, auth) in logins
            .iter()
            .cycle()
            .skip(1)
            .take(LISTEN_STREAMS_PER_NODE_MAX - 1)
            .enumerate()
        {
            let request = ListenRequest {
                auth: Some(auth.clone()),
                after_id: 0,
            };
            let mut raw = ChatClient::new(channels[n / STREAMS_PER_CONNECTION].clone());
            held.push(
                raw.listen(request)
                    .await
                    .expect("every slot was given back"),
            );
        }
        eprintln!(
            "node RSS: {before} KiB before, {full} KiB with {LISTEN_STREAMS_PER_NODE_MAX} \
             streams, {closed} KiB after they closed, {} KiB with as many again",
            rss_kib(pid)
        );
    });
}
