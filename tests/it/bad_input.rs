//! Bad input gets a typed, clear refusal and the node stays up: wrong password, unknown
//! recipient, oversize body and request, bad username, expired and forged tokens, a
//! token used for someone else, garbage bytes on the port. Also the refusals at start:
//! a data dir of another node, and a corrupt log.

use crate::harness::{self, Cluster};
use chat_core::app::Auth;
use chat_node::auth::Secret;
use chat_proto::chat::{Credentials, RegisterRequest};
use std::io::Write;
use tonic::Code;

#[test]
fn bad_input_is_refused_and_nodes_stay_up() {
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

        let wrong = harness::login_with(&mut client, "alice", "nope").await;
        assert_eq!(
            wrong.expect_err("wrong password").code(),
            Code::Unauthenticated
        );
        let unknown = harness::login_with(&mut client, "nobody", "nope").await;
        assert_eq!(
            unknown.expect_err("unknown user").code(),
            Code::Unauthenticated
        );

        let to_nobody = harness::send(&mut client, &alice, "carol", "hi").await;
        assert_eq!(
            to_nobody.expect_err("unknown recipient").code(),
            Code::NotFound
        );
        let big = "x".repeat(5_000);
        let oversize = harness::send(&mut client, &alice, "bob", &big).await;
        assert_eq!(
            oversize.expect_err("oversize body").code(),
            Code::InvalidArgument
        );
        let huge = "x".repeat(100_000);
        let too_big = harness::send(&mut client, &alice, "bob", &huge).await;
        assert_eq!(
            too_big.expect_err("oversize request").code(),
            Code::OutOfRange
        );
        let empty = harness::send(&mut client, &alice, "bob", "").await;
        assert_eq!(empty.expect_err("empty body").code(), Code::InvalidArgument);

        for bad_name in ["-dash", "", "has space", &"n".repeat(33)] {
            let refused = harness::register(&mut client, bad_name).await;
            assert_eq!(refused.expect_err("bad name").code(), Code::InvalidArgument);
        }
        let duplicate = harness::register(&mut client, "alice").await;
        assert_eq!(duplicate.expect_err("taken").code(), Code::AlreadyExists);

        let secret = std::fs::read(cluster.secret_file()).expect("secret");
        let secret = Secret::new(secret).expect("valid secret");
        let auth = Auth {
            user: "alice".to_owned(),
            generation: 0,
            token_epoch: 0,
        };
        let expired = Credentials {
            user: "alice".to_owned(),
            token: secret.mint_token(&auth, 1),
        };
        let refused = harness::send(&mut client, &expired, "bob", "hi").await;
        let refused = refused.expect_err("expired token");
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert!(refused.message().contains("expired"));
        let forger = Secret::new(b"not the cluster secret at all".to_vec()).expect("secret");
        let forged = Credentials {
            user: "alice".to_owned(),
            token: forger.mint_token(&auth, u64::MAX),
        };
        let refused = harness::send(&mut client, &forged, "bob", "hi").await;
        assert_eq!(refused.expect_err("forged").code(), Code::Unauthenticated);
        // A valid token with the wrong generation (as after delete and re-register).
        let stale = Credentials {
            user: "alice".to_owned(),
            token: secret.mint_token(&auth, u64::MAX),
        };
        let refused = harness::send(&mut client, &stale, "bob", "hi").await;
        assert_eq!(
            refused.expect_err("stale generation").code(),
            Code::Unauthenticated
        );
        let as_bob = Credentials {
            user: "bob".to_owned(),
            token: alice.token.clone(),
        };
        let refused = harness::send(&mut client, &as_bob, "alice", "hi").await;
        assert_eq!(
            refused.expect_err("someone else's token").code(),
            Code::PermissionDenied
        );

        // Only your own inbox: bob cannot delete alice's messages, even by id.
        let bob = harness::login(&mut client, "bob").await;
        let to_alice = harness::send(&mut client, &bob, "alice", "for alice")
            .await
            .expect("send");
        let request = chat_proto::chat::DeleteMessagesRequest {
            session: Some(client.session(&bob).await.expect("session")),
            auth: Some(bob.clone()),
            ids: vec![to_alice],
        };
        let refused = client
            .call(|mut c| {
                let request = request.clone();
                async move { c.delete_messages(request).await }
            })
            .await;
        assert_eq!(
            refused.expect_err("not bob's message").code(),
            Code::NotFound
        );

        // Logout kills every token of the account on every node.
        let request = chat_proto::chat::LogoutRequest {
            session: Some(client.session(&bob).await.expect("session")),
            auth: Some(bob.clone()),
        };
        client
            .call(|mut c| {
                let request = request.clone();
                async move { c.logout(request).await }
            })
            .await
            .expect("logout");
        let refused = harness::send(&mut client, &bob, "alice", "hi").await;
        assert_eq!(
            refused.expect_err("logged out").code(),
            Code::Unauthenticated
        );

        // A registration without its 16-byte id cannot be retried exactly once: refused.
        let no_id = client
            .call(|mut c| async move {
                c.register(RegisterRequest {
                    registration_id: vec![1, 2, 3],
                    user: "carol".to_owned(),
                    password: "pw".to_owned(),
                })
                .await
            })
            .await;
        assert_eq!(
            no_id.expect_err("no registration id").code(),
            Code::InvalidArgument
        );

        // Peer calls without a proof of membership, or with a forged one, are refused.
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.address(1)))
                .expect("address")
                .connect()
                .await
                .expect("connect");
        let mut peer = chat_proto::peer::peer_client::PeerClient::new(channel);
        let batch = chat_proto::peer::PeerBatch {
            from: 2,
            to: 1,
            envelopes: vec![vec![0xFF; 16]],
        };
        let refused = peer.deliver(batch.clone()).await;
        assert_eq!(
            refused.expect_err("no proof").code(),
            Code::PermissionDenied
        );
        let mut forged = tonic::Request::new(batch);
        forged
            .metadata_mut()
            .insert(chat_proto::metadata::PEER_ID, "2".parse().expect("ascii"));
        let proof = forger.peer_proof(2).parse().expect("hex is ascii");
        forged
            .metadata_mut()
            .insert(chat_proto::metadata::PEER_PROOF, proof);
        let refused = peer.deliver(forged).await;
        assert_eq!(
            refused.expect_err("forged proof").code(),
            Code::PermissionDenied
        );

        // Garbage on the gRPC port of every node.
        for address in cluster.addresses() {
            let mut stream = std::net::TcpStream::connect(&address).expect("connect");
            // The node may close the connection before reading it all; that is fine.
            let _ = stream.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff\xfe garbage \x16\x03\x01");
            let _ = stream.write_all(&[0xAB; 4096]);
        }
        for id in 1..=3 {
            assert!(cluster.is_running(id), "node {id} died on bad input");
        }
        harness::send(&mut client, &alice, "bob", "still up")
            .await
            .expect("still serving");
        cluster.converged().await;
    });
}

#[test]
fn a_data_dir_of_another_node_or_a_corrupt_log_is_refused() {
    harness::run(async {
        let mut cluster = Cluster::start(3);
        cluster.leader().await;
        let mut client = cluster.client();
        harness::register(&mut client, "alice")
            .await
            .expect("register");
        cluster.converged().await;
        cluster.kill(3);

        // Node 3 started on node 2's directory.
        let output = cluster
            .command_in(3, &cluster.data_dir(2))
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run chatnode");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.contains("belongs to node 2"), "{stderr}");

        // Node 3's own log with a damaged segment header.
        let dir = cluster.data_dir(3);
        let segment = std::fs::read_dir(&dir)
            .expect("data dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .expect("a log segment");
        let mut bytes = std::fs::read(&segment).expect("segment");
        bytes[..4].copy_from_slice(b"JUNK");
        std::fs::write(&segment, bytes).expect("damage segment");
        let output = cluster
            .command(3)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run chatnode");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.contains("corrupt") && last.contains("wipe its data dir"),
            "{stderr}"
        );
    });
}

/// Bytes that are not a request (malformed protobuf, invalid UTF-8 in a string field)
/// are INVALID_ARGUMENT, not INTERNAL; listing accounts needs a login; and an answer of
/// the wrong kind never shows the client core's internals (message bodies among them).
#[test]
fn malformed_requests_and_anonymous_listing_are_refused() {
    harness::run(async {
        let cluster = Cluster::start(3);
        let leader = cluster.leader().await;
        let address = cluster.address(leader);
        let mut client = cluster.client();
        harness::register(&mut client, "alice")
            .await
            .expect("register");
        let alice = harness::login(&mut client, "alice").await;

        let login = "/chat.v1.Chat/Login";
        let malformed: [(&str, Vec<u8>); 4] = [
            // Field 1 (user, a string) holding the bytes C3 28: not UTF-8.
            ("invalid UTF-8", vec![0x0A, 0x02, 0xC3, 0x28]),
            // A varint of eleven bytes.
            (
                "overlong varint",
                [vec![0x10], vec![0xFF; 10], vec![0x01]].concat(),
            ),
            // A string whose length runs past the end of the message.
            ("truncated field", vec![0x0A, 0x10, b'a']),
            // Wire type 7 does not exist.
            ("bad wire type", vec![0x0F]),
        ];
        for (what, bytes) in malformed {
            let refused = harness::raw_call(&address, login, bytes).await;
            let refused = refused.expect_err(what);
            assert_eq!(refused.code(), Code::InvalidArgument, "{what}: {refused:?}");
            assert!(
                refused.message().starts_with("malformed message"),
                "{what}: {refused:?}"
            );
            assert!(!refused.message().contains('\n'), "one line: {refused:?}");
        }

        // List without a token, with a forged one, and with alice's.
        let list = |auth: Option<Credentials>| chat_proto::chat::ListRequest {
            pattern: "*".to_owned(),
            page: 0,
            auth,
        };
        let anonymous = list(None);
        let refused = client
            .call(|mut c| {
                let request = anonymous.clone();
                async move { c.list(request).await }
            })
            .await;
        assert_eq!(
            refused.expect_err("anonymous list").code(),
            Code::Unauthenticated
        );
        let forged = list(Some(Credentials {
            user: "alice".to_owned(),
            token: "not-a-token".to_owned(),
        }));
        let refused = client
            .call(|mut c| {
                let request = forged.clone();
                async move { c.list(request).await }
            })
            .await;
        assert_eq!(
            refused.expect_err("forged token").code(),
            Code::Unauthenticated
        );
        let mine = list(Some(alice.clone()));
        let listed = client
            .call(|mut c| {
                let request = mine.clone();
                async move { c.list(request).await }
            })
            .await
            .expect("list with a login");
        assert_eq!(listed.names, ["alice"]);

        // A session number reused for another command: whatever the answer, it carries
        // no message body (nor any other dump of core's values).
        let secret_body = "the body nobody else may see";
        harness::send(&mut client, &alice, "alice", secret_body)
            .await
            .expect("send to self");
        let session = client.session(&alice).await.expect("session");
        let read = chat_proto::chat::ReadRequest {
            session: Some(session),
            auth: Some(alice.clone()),
            limit: 10,
        };
        let messages = client
            .call(|mut c| {
                let request = read.clone();
                async move { c.read(request).await }
            })
            .await
            .expect("read")
            .messages;
        assert_eq!(messages.len(), 1);
        let send = chat_proto::chat::SendRequest {
            session: Some(session),
            auth: Some(alice.clone()),
            to: "alice".to_owned(),
            body: "another".to_owned(),
        };
        let answer = client
            .call(|mut c| {
                let request = send.clone();
                async move { c.send(request).await }
            })
            .await;
        let refused = answer.expect_err("a read's answer is no send's answer");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            !refused.message().contains(secret_body) && !refused.message().contains("Message"),
            "{refused:?}"
        );
    });
}
