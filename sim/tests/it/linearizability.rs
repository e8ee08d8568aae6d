//! The linearizability checker on hand-built histories: ones that are not linearizable
//! must fail (and be narrowed to a short window), ones with real concurrency and unknown
//! outcomes must pass. Then the checker's model against `ChatState` itself on random
//! sequential histories, both ways: what `ChatState` answers passes, any other answer
//! fails.

use chat_core::app::{
    AppError, ApplyContext, Auth, ChatState, Command, CommandOutput, MessageId, MessageView,
    QueryOutput,
};
use chat_core::{ClientError, LogIndex, Response, Time};
use chat_sim::history::{History, OpKind};
use chat_sim::linearizability::{check, history_html, Partition, Report, Verdict};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Builds a history script-style. Times are in µs; `None` as the end time means the
/// operation never got an answer.
#[derive(Default)]
struct Script {
    history: History,
}

type Outcome = Result<Response, ClientError>;

fn sent(id: u64) -> Outcome {
    Ok(Response::Command(CommandOutput::Sent {
        id: MessageId(id),
        timestamp: Time(id),
    }))
}

fn messages(to: &str, items: &[(u64, &str, &str)]) -> Outcome {
    Ok(Response::Command(CommandOutput::Messages(
        items
            .iter()
            .map(|&(id, from, body)| MessageView {
                id: MessageId(id),
                sender: from.into(),
                sender_deleted: false,
                recipient: to.into(),
                body: body.into(),
                timestamp: Time(id),
                read: true,
            })
            .collect(),
    )))
}

fn app_error(error: AppError) -> Outcome {
    Err(ClientError::App(error))
}

impl Script {
    fn op(
        mut self,
        client: usize,
        kind: OpKind,
        call_us: u64,
        end: Option<(u64, Outcome)>,
    ) -> Self {
        let op = self.history.invoke(client, kind, call_us);
        self.history.ops[op].attempts = 1;
        if let Some((return_us, outcome)) = end {
            self.history.complete(op, outcome, return_us);
        }
        self
    }

    /// Client `client` is user `c{client}`; creates its account over `[call, ret]`.
    fn create(self, client: usize, call_us: u64, return_us: u64) -> Self {
        let user = format!("c{client}");
        let outcome = Ok(Response::Command(CommandOutput::AccountCreated {
            user: user.clone(),
            generation: call_us,
        }));
        self.op(
            client,
            OpKind::CreateAccount { user },
            call_us,
            Some((return_us, outcome)),
        )
    }

    fn send(
        self,
        client: usize,
        to: usize,
        body: &str,
        call_us: u64,
        end: Option<(u64, Outcome)>,
    ) -> Self {
        let kind = OpKind::Send {
            from: format!("c{client}"),
            to: format!("c{to}"),
            body: body.into(),
        };
        self.op(client, kind, call_us, end)
    }

    fn read(self, client: usize, limit: u32, call_us: u64, end: Option<(u64, Outcome)>) -> Self {
        let kind = OpKind::Read {
            user: format!("c{client}"),
            limit,
        };
        self.op(client, kind, call_us, end)
    }

    fn peek(self, client: usize, limit: u32, call_us: u64, end: Option<(u64, Outcome)>) -> Self {
        let kind = OpKind::Peek {
            user: format!("c{client}"),
            limit,
        };
        self.op(client, kind, call_us, end)
    }

    fn delete(self, client: usize, ids: &[u64], call_us: u64, end: Option<(u64, Outcome)>) -> Self {
        let kind = OpKind::Delete {
            user: format!("c{client}"),
            ids: ids.iter().map(|&id| MessageId(id)).collect(),
        };
        self.op(client, kind, call_us, end)
    }

    fn list(self, client: usize, names: &[&str], call_us: u64, return_us: u64) -> Self {
        let outcome = Ok(Response::Query(QueryOutput::Accounts {
            names: names.iter().map(|n| n.to_string()).collect(),
            page: 0,
            total: names.len() as u64,
            has_more: false,
        }));
        self.op(
            client,
            OpKind::List { stale: false },
            call_us,
            Some((return_us, outcome)),
        )
    }

    /// Sets the last scripted operation's attempts.
    fn attempts(mut self, attempts: u32) -> Self {
        self.history.ops.last_mut().expect("an operation").attempts = attempts;
        self
    }

    fn report(&self) -> Report {
        check(&self.history)
    }

    #[track_caller]
    fn passes(self) -> Self {
        let report = self.report();
        assert!(report.failure().is_none(), "{report:#?}");
        assert_eq!(report.unknown_count(), 0);
        self
    }

    /// Asserts the history fails in `partition`, with a window of exactly `window` (op
    /// indices in the order they were scripted).
    #[track_caller]
    fn fails(self, partition: Partition, window: &[usize]) {
        let report = self.report();
        let Some((failed, found)) = report.failure() else {
            panic!("expected a failure in {partition}: {report:#?}");
        };
        assert_eq!(*failed, partition, "{}", found.text);
        assert_eq!(found.ops, window, "{}", found.text);
    }
}

fn inbox(client: usize) -> Partition {
    Partition::Inbox(format!("c{client}"))
}

/// c1 and c2 exist; c2's account is op 1.
fn two_users() -> Script {
    Script::default().create(1, 0, 10).create(2, 0, 10)
}

#[test]
fn a_read_that_misses_a_send_acknowledged_before_it_began_fails() {
    two_users()
        .send(1, 2, "c1-m1", 100, Some((200, sent(5))))
        .read(2, 10, 300, Some((400, messages("c2", &[]))))
        .fails(inbox(2), &[1, 2, 3]);
}

#[test]
fn a_read_concurrent_with_a_send_may_see_it_or_not() {
    for seen in [&[(5, "c1", "c1-m1")][..], &[]] {
        two_users()
            .send(1, 2, "c1-m1", 100, Some((400, sent(5))))
            .read(2, 10, 200, Some((300, messages("c2", seen))))
            .passes();
    }
}

#[test]
fn a_lost_write_fails_even_when_a_later_one_is_seen() {
    two_users()
        .send(1, 2, "c1-m1", 100, Some((200, sent(5))))
        .send(1, 2, "c1-m2", 300, Some((400, sent(7))))
        .read(
            2,
            10,
            500,
            Some((600, messages("c2", &[(7, "c1", "c1-m2")]))),
        )
        .fails(inbox(2), &[1, 2, 3, 4]);
}

#[test]
fn a_message_returned_unread_twice_fails() {
    let first = messages("c2", &[(5, "c1", "c1-m1")]);
    // Stored twice by a retry: the same body under a second id.
    let again = messages("c2", &[(9, "c1", "c1-m1")]);
    two_users()
        .send(1, 2, "c1-m1", 100, Some((200, sent(5))))
        .read(2, 10, 300, Some((400, first)))
        .read(2, 10, 500, Some((600, again)))
        .fails(inbox(2), &[1, 2, 4]);
    let both = messages("c2", &[(5, "c1", "c1-m1"), (9, "c1", "c1-m1")]);
    two_users()
        .send(1, 2, "c1-m1", 100, Some((200, sent(5))))
        .read(2, 10, 300, Some((400, both)))
        .fails(inbox(2), &[1, 2, 3]);
}

#[test]
fn a_read_of_a_message_nobody_sent_fails() {
    two_users()
        .read(
            2,
            10,
            300,
            Some((400, messages("c2", &[(5, "c1", "c1-m1")]))),
        )
        .fails(inbox(2), &[1, 2]);
}

#[test]
fn a_read_of_a_refused_send_fails() {
    // The send was refused (no such user yet), so it never took effect.
    Script::default()
        .create(1, 0, 10)
        .send(
            1,
            2,
            "c1-m1",
            100,
            Some((200, app_error(AppError::UnknownUser("c2".into())))),
        )
        .create(2, 300, 400)
        .read(
            2,
            10,
            500,
            Some((600, messages("c2", &[(5, "c1", "c1-m1")]))),
        )
        .fails(inbox(2), &[1, 2, 3]);
}

#[test]
fn a_send_refused_for_its_body_has_no_effect_and_a_read_of_it_fails() {
    // Refused before the log (oversized or empty body): linearizable as a no-op
    // next to anything...
    let refused = |script: Script| {
        script
            .send(
                1,
                2,
                "c1-m1",
                100,
                Some((
                    200,
                    app_error(AppError::BodyTooLarge {
                        size_bytes: 5_000,
                        max_bytes: 4_096,
                    }),
                )),
            )
            .send(
                1,
                2,
                "c1-m2",
                300,
                Some((400, app_error(AppError::EmptyBody))),
            )
    };
    refused(two_users())
        .read(2, 10, 500, Some((600, messages("c2", &[]))))
        .passes();
    // ...but it never took effect, so no read may return it.
    refused(two_users())
        .read(
            2,
            10,
            500,
            Some((600, messages("c2", &[(5, "c1", "c1-m1")]))),
        )
        .fails(inbox(2), &[1, 2, 4]);
}

/// A peek's answer: the messages as a linearizable query returns them.
fn peeked(to: &str, items: &[(u64, &str, &str)]) -> Outcome {
    match messages(to, items) {
        Ok(Response::Command(CommandOutput::Messages(views))) => {
            Ok(Response::Query(QueryOutput::Messages(views)))
        }
        other => other,
    }
}

#[test]
fn a_stale_peek_fails_and_a_peek_marks_nothing_read() {
    // A peek that misses a send acknowledged before it began: what a leader that did not
    // confirm its leadership would serve.
    two_users()
        .send(1, 2, "c1-m1", 100, Some((200, sent(5))))
        .peek(2, 20, 300, Some((400, peeked("c2", &[]))))
        .fails(inbox(2), &[1, 2, 3]);
    // A peek sees read messages too, and reads nothing: a read after it still gets them.
    two_users()
        .send(1, 2, "c1-m1", 100, Some((200, sent(5))))
        .peek(2, 20, 300, Some((400, peeked("c2", &[(5, "c1", "c1-m1")]))))
        .read(
            2,
            10,
            500,
            Some((600, messages("c2", &[(5, "c1", "c1-m1")]))),
        )
        .peek(2, 20, 700, Some((800, peeked("c2", &[(5, "c1", "c1-m1")]))))
        .passes();
}

#[test]
fn a_read_of_a_send_invoked_after_it_returned_fails() {
    two_users()
        .read(
            2,
            10,
            100,
            Some((200, messages("c2", &[(5, "c1", "c1-m1")]))),
        )
        .send(1, 2, "c1-m1", 300, None)
        .fails(inbox(2), &[1, 2, 3]);
}

#[test]
fn a_pending_send_may_be_seen_by_a_later_read_or_by_none() {
    two_users()
        .send(1, 2, "c1-m1", 100, None)
        .read(
            2,
            10,
            5_000,
            Some((5_100, messages("c2", &[(5, "c1", "c1-m1")]))),
        )
        .read(2, 10, 6_000, Some((6_100, messages("c2", &[]))))
        .passes();
    two_users()
        .send(1, 2, "c1-m1", 100, None)
        .read(2, 10, 5_000, Some((5_100, messages("c2", &[]))))
        .read(2, 10, 6_000, Some((6_100, messages("c2", &[]))))
        .passes();
    // An expired session after a retry does not say whether the send took effect
    // either (the first attempt may have been applied)...
    let expired = || {
        two_users().send(
            1,
            2,
            "c1-m1",
            100,
            Some((200, Err(ClientError::SessionExpired))),
        )
    };
    let seen = |script: Script| {
        script.read(
            2,
            10,
            5_000,
            Some((5_100, messages("c2", &[(5, "c1", "c1-m1")]))),
        )
    };
    seen(expired().attempts(2)).passes();
    // ...but refused on its only attempt, it certainly did not.
    assert!(seen(expired()).report().failure().is_some());
}

#[test]
fn a_pending_read_may_have_consumed_what_a_later_read_misses() {
    let base = || two_users().send(1, 2, "c1-m1", 100, Some((200, sent(5))));
    base()
        .read(2, 10, 300, None)
        .read(2, 10, 5_000, Some((5_100, messages("c2", &[]))))
        .passes();
    // Without the pending read, nothing explains the miss.
    base()
        .read(2, 10, 5_000, Some((5_100, messages("c2", &[]))))
        .fails(inbox(2), &[1, 2, 3]);
}

#[test]
fn concurrent_sends_are_stored_in_id_order() {
    let base = || {
        two_users()
            .create(3, 0, 10)
            .send(1, 2, "c1-m1", 100, Some((500, sent(7))))
            .send(3, 2, "c3-m1", 100, Some((500, sent(5))))
    };
    base()
        .read(
            2,
            10,
            600,
            Some((
                700,
                messages("c2", &[(5, "c3", "c3-m1"), (7, "c1", "c1-m1")]),
            )),
        )
        .passes();
    base()
        .read(
            2,
            10,
            600,
            Some((
                700,
                messages("c2", &[(7, "c1", "c1-m1"), (5, "c3", "c3-m1")]),
            )),
        )
        .fails(inbox(2), &[1, 3, 4, 5]);
}

#[test]
fn reads_respect_their_limit_and_deletes_their_ids() {
    two_users()
        .send(1, 2, "c1-m1", 100, Some((200, sent(5))))
        .send(1, 2, "c1-m2", 300, Some((400, sent(7))))
        .read(
            2,
            1,
            500,
            Some((600, messages("c2", &[(5, "c1", "c1-m1")]))),
        )
        .delete(
            2,
            &[5],
            700,
            Some((
                800,
                Ok(Response::Command(CommandOutput::Deleted { count: 1 })),
            )),
        )
        .delete(
            2,
            &[5],
            900,
            Some((1_000, app_error(AppError::MessageNotFound(5)))),
        )
        .read(
            2,
            1,
            1_100,
            Some((1_200, messages("c2", &[(7, "c1", "c1-m2")]))),
        )
        .passes();
    // A second delete of the same message cannot succeed (the read is not needed: the
    // acknowledgement tells which message id 5 is).
    two_users()
        .send(1, 2, "c1-m1", 100, Some((200, sent(5))))
        .read(
            2,
            1,
            500,
            Some((600, messages("c2", &[(5, "c1", "c1-m1")]))),
        )
        .delete(
            2,
            &[5],
            700,
            Some((
                800,
                Ok(Response::Command(CommandOutput::Deleted { count: 1 })),
            )),
        )
        .delete(
            2,
            &[5],
            900,
            Some((
                1_000,
                Ok(Response::Command(CommandOutput::Deleted { count: 1 })),
            )),
        )
        .fails(inbox(2), &[1, 2, 4, 5]);
}

#[test]
fn a_list_that_misses_an_acknowledged_account_fails() {
    two_users().list(1, &["c1", "c2"], 100, 200).passes();
    two_users()
        .list(1, &["c1"], 100, 200)
        .fails(Partition::Accounts, &[0, 1, 2]);
    // Concurrent with the creation, either answer is right.
    Script::default()
        .create(1, 0, 10)
        .create(2, 50, 300)
        .list(1, &["c1"], 100, 200)
        .list(1, &["c1", "c2"], 400, 500)
        .passes();
}

#[test]
fn a_failure_is_narrowed_to_a_short_window_and_drawn() {
    let mut script = two_users();
    let mut time_us = 100;
    for n in 0..100u64 {
        let body = format!("c1-m{n}");
        let id = 10 + n;
        script = script
            .send(1, 2, &body, time_us, Some((time_us + 50, sent(id))))
            .read(
                2,
                5,
                time_us + 100,
                Some((time_us + 150, messages("c2", &[(id, "c1", &body)]))),
            );
        time_us += 200;
    }
    // Op 202 is acknowledged, op 203 misses it.
    script
        .send(1, 2, "c1-late", time_us, Some((time_us + 50, sent(500))))
        .read(
            2,
            5,
            time_us + 100,
            Some((time_us + 150, messages("c2", &[]))),
        )
        .fails(inbox(2), &[1, 202, 203]);

    let script = two_users().read(
        2,
        10,
        300,
        Some((400, messages("c2", &[(5, "c1", "c1-m1")]))),
    );
    let report = script.report();
    assert!(matches!(
        report.partitions[1].verdict,
        Verdict::NotLinearizable { .. }
    ));
    let page = history_html(&script.history, &report);
    assert!(page.starts_with("<!doctype html>"));
    assert_eq!(page.matches("class=\"op ").count(), 3);
    assert_eq!(page.matches(" hot\"").count(), 2, "{page}");
    assert!(page.contains("inbox of c2 is not linearizable"));
}

/// One random sequential history of `ops` commands on `users` accounts, each answered
/// by `ChatState` itself.
fn chat_state_history(rng: &mut ChaCha8Rng, users: usize, ops: usize) -> History {
    let mut state = ChatState::new();
    let mut history = History::default();
    let mut auths: Vec<Option<Auth>> = vec![None; users];
    let mut time_us = 0;
    for index in 1..=ops as u64 {
        let client = rng.random_range(0..users);
        let user = format!("c{client}");
        let (kind, command) = match (&auths[client], rng.random_range(0..10)) {
            (None, _) | (Some(_), 0) => (
                OpKind::CreateAccount { user: user.clone() },
                Command::CreateAccount {
                    user: user.clone(),
                    password_hash: "h".into(),
                    // A new registration each time: a second one is refused.
                    registration: u128::from(index),
                },
            ),
            (Some(auth), 1..=5) => {
                let to = format!("c{}", rng.random_range(0..users));
                let body = format!("{user}-m{index}");
                (
                    OpKind::Send {
                        from: user.clone(),
                        to: to.clone(),
                        body: body.clone(),
                    },
                    Command::Send {
                        auth: auth.clone(),
                        to,
                        body,
                    },
                )
            }
            (Some(auth), 6..=7) => {
                let limit = rng.random_range(1..=4);
                (
                    OpKind::Read {
                        user: user.clone(),
                        limit,
                    },
                    Command::ReadMessages {
                        auth: auth.clone(),
                        limit,
                    },
                )
            }
            (Some(auth), _) => {
                // Ids near recent log positions: some present, some not.
                let ids: Vec<MessageId> = (0..rng.random_range(1..=2))
                    .map(|_| MessageId(rng.random_range(index.saturating_sub(12)..=index)))
                    .collect();
                (
                    OpKind::Delete {
                        user: user.clone(),
                        ids: ids.clone(),
                    },
                    Command::DeleteMessages {
                        auth: auth.clone(),
                        ids,
                    },
                )
            }
        };
        let ctx = ApplyContext {
            index: LogIndex(index),
            timestamp: Time(time_us),
        };
        let outcome = state.apply(ctx, &command, &mut Vec::new());
        if let Ok(CommandOutput::AccountCreated { user, generation }) = &outcome {
            auths[client] = Some(Auth {
                user: user.clone(),
                generation: *generation,
                token_epoch: 0,
            });
        }
        let op = history.invoke(client, kind, time_us);
        let outcome = outcome.map(Response::Command).map_err(ClientError::App);
        history.complete(op, outcome, time_us + 10);
        time_us += 20;
    }
    history
}

/// The same answer made wrong, if the operation has one that can be (a sequential
/// history has exactly one right answer per operation).
fn wrong_answer(outcome: &Outcome) -> Option<Outcome> {
    match outcome {
        Ok(Response::Command(CommandOutput::Sent { .. })) => {
            Some(app_error(AppError::UnknownUser("x".into())))
        }
        Err(ClientError::App(AppError::UnknownUser(_))) => Some(sent(1_000_000)),
        Ok(Response::Command(CommandOutput::Messages(views))) if !views.is_empty() => {
            let mut fewer = views.clone();
            fewer.pop();
            Some(Ok(Response::Command(CommandOutput::Messages(fewer))))
        }
        Ok(Response::Command(CommandOutput::Deleted { count })) => {
            Some(Ok(Response::Command(CommandOutput::Deleted {
                count: count + 1,
            })))
        }
        Err(ClientError::App(AppError::MessageNotFound(id))) => {
            Some(app_error(AppError::MessageNotFound(id + 1)))
        }
        _ => None,
    }
}

#[test]
fn the_model_agrees_with_chat_state_on_random_sequential_histories() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut wrong_answers_tried = 0;
    for _ in 0..200 {
        let history = chat_state_history(&mut rng, 3, 40);
        let report = check(&history);
        assert!(report.failure().is_none(), "{history:#?}\n{report:#?}");
        // Every answer ChatState did not give must fail.
        for index in 0..history.ops.len() {
            let Some(wrong) = history.ops[index].outcome.as_ref().and_then(wrong_answer) else {
                continue;
            };
            let mut broken = history.clone();
            broken.ops[index].outcome = Some(wrong);
            wrong_answers_tried += 1;
            assert!(
                check(&broken).failure().is_some(),
                "op {index} answered wrongly passed: {broken:#?}"
            );
        }
    }
    assert!(wrong_answers_tried > 1_000, "{wrong_answers_tried}");
}

#[test]
fn many_concurrent_creations_against_lists_are_decided_quickly() {
    // Thirty creations at once and lists seeing half of them, then all: without knowing
    // which creation must follow which list, the search tries subsets (2^30).
    let mut script = Script::default();
    for client in 0..30 {
        script = script.create(client, 0, 1_000);
    }
    let mut even: Vec<String> = (0..30).step_by(2).map(|c| format!("c{c}")).collect();
    even.sort();
    let mut all: Vec<String> = (0..30).map(|c| format!("c{c}")).collect();
    all.sort();
    let even: Vec<&str> = even.iter().map(String::as_str).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    script = script
        .list(31, &even, 100, 200)
        .list(31, &all, 2_000, 2_100)
        .passes();
    let report = script.report();
    let accounts = report
        .partitions
        .iter()
        .find(|p| p.partition == Partition::Accounts)
        .expect("a history with lists has an accounts partition");
    assert!(accounts.steps < 10_000, "{}", accounts.steps);
    // A list after every creation that misses c0: the window is c0's creation, the
    // creations the list names (without them it would fail for another reason) and it.
    let mut window: Vec<usize> = (0..30).step_by(2).collect();
    window.push(32);
    script
        .list(31, &even[1..], 3_000, 3_100)
        .fails(Partition::Accounts, &window);
}

#[test]
fn a_simulated_history_passes_and_fails_once_a_read_is_made_to_miss_a_message() {
    let scenario = chat_sim::Scenario::generate(0, &chat_sim::GenerateOptions::default());
    let world = chat_sim::World::new(&scenario, chat_sim::trace::Tracer::silent());
    let (outcome, history) = world.run_with_history();
    assert_eq!(outcome.failure, None);
    let report = check(&history);
    assert!(report.failure().is_none());
    assert!(report.partitions.len() > 2, "{report:#?}");
    assert!(report.steps() >= history.ops.len() as u64);
    // The first read that returned something now returns nothing: the messages it saw
    // were acknowledged or seen, so some later read or this one cannot be explained.
    let mut broken = history.clone();
    let read = broken
        .ops
        .iter_mut()
        .find(|op| {
            matches!(&op.outcome, Some(Ok(Response::Command(CommandOutput::Messages(m)))) if !m.is_empty())
        })
        .expect("seed 0 has a read that returned messages");
    read.outcome = Some(messages("x", &[]));
    let report = check(&broken);
    let (partition, window) = report.failure().expect("the broken history fails");
    assert!(matches!(partition, Partition::Inbox(_)));
    assert!(window.ops.len() < 10, "{}", window.text);
}
