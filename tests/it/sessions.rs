//! Exactly-once sessions against real nodes, as an outside client would attack them
//! (issue #10, findings 1-3): churn cannot evict another user's session or make a retry
//! apply twice, a session answers only its owner and only its own command, and a request
//! refused before the log does not damage the session.

use crate::harness::{self, Cluster};
use chat_node::client::ClusterClient;
use chat_proto::chat::{
    Credentials, OpenSessionRequest, ReadRequest, SendRequest, SendResponse, Session,
};
use tonic::{Code, Status};

async fn open(client: &mut ClusterClient, auth: &Credentials) -> Result<u64, Status> {
    let request = OpenSessionRequest {
        auth: Some(auth.clone()),
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.open_session(request).await }
        })
        .await
        .map(|r| r.session_id)
}

async fn send_in(
    client: &mut ClusterClient,
    session: Session,
    auth: &Credentials,
    to: &str,
    body: &str,
) -> Result<SendResponse, Status> {
    let request = SendRequest {
        session: Some(session),
        auth: Some(auth.clone()),
        to: to.to_owned(),
        body: body.to_owned(),
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.send(request).await }
        })
        .await
}

async fn read_in(
    client: &mut ClusterClient,
    session: Session,
    auth: &Credentials,
) -> Result<Vec<String>, Status> {
    let request = ReadRequest {
        session: Some(session),
        auth: Some(auth.clone()),
        limit: 100,
    };
    let read = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.read(request).await }
        })
        .await?;
    Ok(read.messages.into_iter().map(|m| m.body).collect())
}

fn at(id: u64, seq: u64) -> Session {
    Session { id, seq }
}

#[test]
fn churn_cannot_make_a_retry_apply_twice_or_evict_another_users_session() {
    harness::run(async {
        let cluster = Cluster::start(3);
        cluster.leader().await;
        let mut client = cluster.client();
        for user in ["alice", "bob", "mallory"] {
            harness::register(&mut client, user)
                .await
                .expect("register");
        }
        let alice = harness::login(&mut client, "alice").await;
        let bob = harness::login(&mut client, "bob").await;
        let mallory = harness::login(&mut client, "mallory").await;
        let session = open(&mut client, &alice).await.expect("open");
        let first = send_in(&mut client, at(session, 1), &alice, "bob", "once")
            .await
            .expect("send");

        // Mallory opens far more sessions than one user may hold; only her own are
        // evicted.
        for _ in 0..60 {
            open(&mut client, &mallory).await.expect("open");
        }
        // A request in a session nobody opened is refused, at any sequence number.
        for seq in [1, 2] {
            let made_up = send_in(
                &mut client,
                at(session + 1_000_000, seq),
                &alice,
                "bob",
                "x",
            )
            .await;
            assert_eq!(
                made_up.expect_err("never opened").code(),
                Code::FailedPrecondition
            );
        }
        // Alice's retry is answered from her session: the same message, not a copy.
        let retry = send_in(&mut client, at(session, 1), &alice, "bob", "once")
            .await
            .expect("retry");
        assert_eq!(retry, first);
        let second = send_in(&mut client, at(session, 2), &alice, "bob", "twice")
            .await
            .expect("alice's session still works");
        assert_ne!(second.id, first.id);
        let bodies: Vec<String> = harness::read_all(&mut client, &bob)
            .await
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(bodies, ["once", "twice"], "each send applied once");
    });
}

#[test]
fn a_session_answers_only_its_owner_and_only_its_own_command() {
    harness::run(async {
        let cluster = Cluster::start(3);
        cluster.leader().await;
        let mut client = cluster.client();
        for user in ["alice", "mallory"] {
            harness::register(&mut client, user)
                .await
                .expect("register");
        }
        let alice = harness::login(&mut client, "alice").await;
        let mallory = harness::login(&mut client, "mallory").await;
        harness::send(&mut client, &mallory, "alice", "secret for alice")
            .await
            .expect("send");
        let session = open(&mut client, &alice).await.expect("open");
        let read = read_in(&mut client, at(session, 1), &alice)
            .await
            .expect("read");
        assert_eq!(read, ["secret for alice"]);

        // Mallory, with her own valid token, under alice's session: at the answered
        // number (which would return alice's stored read) and at the next.
        for seq in [1, 2] {
            let borrowed = read_in(&mut client, at(session, seq), &mallory).await;
            let status = borrowed.expect_err("not mallory's session");
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert!(!status.message().contains("secret"), "{status:?}");
        }
        // Alice's session is untouched by that: her number 1 is still her read, and
        // another command under it is refused without an answer's dump.
        let retry = read_in(&mut client, at(session, 1), &alice)
            .await
            .expect("retry");
        assert_eq!(retry, ["secret for alice"]);
        let mismatch = send_in(&mut client, at(session, 1), &alice, "alice", "other").await;
        let status = mismatch.expect_err("another command under an answered number");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(!status.message().contains("secret"), "{status:?}");
        send_in(&mut client, at(session, 2), &alice, "alice", "next")
            .await
            .expect("the session carries on");
    });
}

#[test]
fn requests_refused_before_the_log_do_not_damage_the_session() {
    harness::run(async {
        let cluster = Cluster::start(3);
        cluster.leader().await;
        let mut client = cluster.client();
        harness::register(&mut client, "alice")
            .await
            .expect("register");
        let alice = harness::login(&mut client, "alice").await;
        let session = open(&mut client, &alice).await.expect("open");
        // The first request of the session is refused before the log: a bad token, then
        // an empty body.
        let forged = Credentials {
            user: "alice".to_owned(),
            token: "not-a-token".to_owned(),
        };
        let bad_token = send_in(&mut client, at(session, 1), &forged, "alice", "x").await;
        assert_eq!(
            bad_token.expect_err("bad token").code(),
            Code::Unauthenticated
        );
        let empty = send_in(&mut client, at(session, 1), &alice, "alice", "").await;
        assert_eq!(empty.expect_err("empty").code(), Code::InvalidArgument);
        // Number 1 is still free, and a later number after a gap works too.
        send_in(&mut client, at(session, 1), &alice, "alice", "first")
            .await
            .expect("number 1 was not used up");
        send_in(&mut client, at(session, 5), &alice, "alice", "fifth")
            .await
            .expect("a gap is allowed");
        let stale = send_in(&mut client, at(session, 3), &alice, "alice", "late").await;
        assert_eq!(
            stale.expect_err("below the last number").code(),
            Code::FailedPrecondition
        );
        let bodies: Vec<String> = harness::read_all(&mut client, &alice)
            .await
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(bodies, ["first", "fifth"]);
    });
}
