//! Misbehaving clients (`client-abuse`): the abuse really happens, the checkers see what
//! it can break, and seeds without the kind are generated and run as before it existed.

use chat_core::app::{CommandOutput, MessageId, MessageView};
use chat_core::{ClientError, Response, Time};
use chat_sim::checker::{check_abuse, check_history, FinalState};
use chat_sim::faults::{FaultKind, FaultSet};
use chat_sim::history::{Abuse, History, OpKind};
use chat_sim::scenario::OpPlan;
use chat_sim::trace::Tracer;
use chat_sim::{GenerateOptions, Scenario, World};

/// `all` without misbehaving clients: how seeds were generated before they existed.
fn polite_options() -> GenerateOptions {
    let mut faults = FaultSet::all();
    faults.0.remove(&FaultKind::ClientAbuse);
    GenerateOptions {
        faults,
        ..GenerateOptions::default()
    }
}

/// The first seed whose scenario turns abuse on (and no other fault, so that the abuse
/// is what decides the outcome) and plans `wanted` somewhere.
fn abusive_scenario(wanted: impl Fn(&OpPlan) -> bool) -> Scenario {
    let only_abuse = GenerateOptions {
        faults: "client-abuse".parse().unwrap(),
        ..GenerateOptions::default()
    };
    (0..200)
        .map(|seed| Scenario::generate(seed, &only_abuse))
        .find(|s| {
            s.faults.contains(FaultKind::ClientAbuse)
                && s.clients.iter().flat_map(|c| &c.ops).any(|p| wanted(&p.op))
        })
        .expect("some seed plans it")
}

#[test]
fn client_abuse_is_in_the_default_sweep_and_parses() {
    assert!(FaultSet::all().contains(FaultKind::ClientAbuse));
    assert!(GenerateOptions::default()
        .faults
        .contains(FaultKind::ClientAbuse));
    let set: FaultSet = "crash,client-abuse".parse().unwrap();
    assert!(set.contains(FaultKind::ClientAbuse) && set.contains(FaultKind::Crash));
    assert_eq!(set.to_string().parse::<FaultSet>().unwrap(), set);
}

#[test]
fn churn_passes_the_per_user_bound_and_made_up_sessions_are_refused() {
    let scenario = abusive_scenario(|op| matches!(op, OpPlan::OpenSession));
    let per_user_max = scenario
        .tuning
        .sessions_per_user_max
        .expect("a small bound");
    assert!((2..=4).contains(&per_user_max));
    let (outcome, history) = World::new(&scenario, Tracer::silent()).run_with_history();
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    let most_opened = (0..scenario.clients.len())
        .map(|client| {
            history
                .ops
                .iter()
                .filter(|op| {
                    op.client == client
                        && op.abuse == Some(Abuse::Churn)
                        && matches!(
                            op.outcome,
                            Some(Ok(Response::Command(CommandOutput::SessionOpened { .. })))
                        )
                })
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most_opened > per_user_max,
        "one client opened {most_opened} sessions, its bound is {per_user_max}"
    );
    let made_up: Vec<_> = history
        .ops
        .iter()
        .filter(|op| op.abuse == Some(Abuse::FreshSession))
        .collect();
    assert!(!made_up.is_empty());
    for op in made_up {
        assert!(
            matches!(
                op.outcome,
                None | Some(Err(
                    ClientError::SessionExpired | ClientError::NotLeader { .. }
                ))
            ),
            "a request in a session never opened got {:?}",
            op.outcome
        );
    }
}

#[test]
fn a_client_really_uses_another_clients_session() {
    let scenario = abusive_scenario(|op| matches!(op, OpPlan::ForeignSession { .. }));
    let (_, history) = World::new(&scenario, Tracer::silent()).run_with_history();
    assert!(history.ops.iter().any(|op| matches!(
        op.abuse,
        Some(Abuse::Foreign { owner }) if owner != op.client
    )));
}

#[test]
fn late_replays_are_sent_and_recorded() {
    let scenario = abusive_scenario(|op| matches!(op, OpPlan::Replay { .. }));
    let (_, history) = World::new(&scenario, Tracer::silent()).run_with_history();
    let replay = history
        .ops
        .iter()
        .find_map(|op| match op.abuse {
            Some(Abuse::Replay { of }) => Some((op, of)),
            _ => None,
        })
        .expect("a replay");
    assert_eq!(
        replay.0.kind, history.ops[replay.1].kind,
        "the same request"
    );
}

fn read_answer(id: u64, to: &str) -> Option<Result<Response, ClientError>> {
    Some(Ok(Response::Command(CommandOutput::Messages(vec![
        MessageView {
            id: MessageId(id),
            sender: "x".into(),
            sender_deleted: false,
            recipient: to.into(),
            body: format!("x-m{id}-"),
            timestamp: Time(id),
            read: false,
        },
    ]))))
}

#[test]
fn another_users_stored_answer_fails_session_isolation() {
    let mut history = History::default();
    let a = history.invoke(
        0,
        OpKind::Read {
            user: "a".into(),
            limit: 5,
        },
        0,
    );
    history.complete(a, read_answer(7, "a").unwrap(), 10);
    let b = history.invoke(
        1,
        OpKind::Read {
            user: "b".into(),
            limit: 5,
        },
        20,
    );
    history.ops[b].abuse = Some(Abuse::Foreign { owner: 0 });
    assert_eq!(check_abuse(&history), Ok(()), "not answered yet");
    history.complete(b, read_answer(7, "a").unwrap(), 30);
    let violation = check_abuse(&history).unwrap_err();
    assert_eq!(violation.check, "session-isolation");
    assert_eq!(
        check_history(&history, &FinalState::default())
            .unwrap_err()
            .check,
        "session-isolation"
    );
    // The victim's side: a send answered with what someone else's send was given.
    let mut history = History::default();
    let sent = || {
        Ok(Response::Command(CommandOutput::Sent {
            id: MessageId(9),
            timestamp: Time(9),
        }))
    };
    for client in 0..2 {
        let op = history.invoke(
            client,
            OpKind::Send {
                from: format!("c{client}"),
                to: "c0".into(),
                body: format!("c{client}-m1-"),
            },
            0,
        );
        history.complete(op, sent(), 10);
    }
    assert_eq!(
        check_abuse(&history).unwrap_err().check,
        "session-isolation"
    );
}

#[test]
fn a_late_retry_applied_again_fails_exactly_once() {
    let mut history = History::default();
    let kind = OpKind::Read {
        user: "a".into(),
        limit: 5,
    };
    let first = history.invoke(0, kind.clone(), 0);
    history.complete(first, read_answer(3, "a").unwrap(), 10);
    let replay = history.invoke(0, kind, 5_000_000);
    history.ops[replay].abuse = Some(Abuse::Replay { of: first });
    // Answered from the session table: the same answer.
    history.ops[replay].outcome = read_answer(3, "a");
    assert_eq!(check_abuse(&history), Ok(()));
    // Refused: fine too.
    history.ops[replay].outcome = Some(Err(ClientError::SessionExpired));
    assert_eq!(check_abuse(&history), Ok(()));
    // Applied a second time: it read other messages.
    history.ops[replay].outcome = read_answer(4, "a");
    assert_eq!(check_abuse(&history).unwrap_err().check, "exactly-once");
}

#[test]
fn seeds_without_the_kind_are_unchanged() {
    for seed in 0..40 {
        let plain = Scenario::generate(seed, &polite_options());
        let mut abused = Scenario::generate(seed, &GenerateOptions::default());
        if !abused.faults.contains(FaultKind::ClientAbuse) {
            assert_eq!(
                plain, abused,
                "seed {seed}: abuse off, nothing else differs"
            );
            continue;
        }
        // Abuse on: the faults, network and tuning are drawn as before; only the table
        // bounds, the expiry and the clients' plans gain something.
        assert_eq!(plain.fault_events, abused.fault_events);
        assert_eq!(plain.network, abused.network);
        abused.tuning.sessions_max = None;
        abused.tuning.sessions_per_user_max = None;
        abused.tuning.session_expiry_us = None;
        assert_eq!(plain.tuning, abused.tuning);
    }
}
