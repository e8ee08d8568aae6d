//! Each checker is fed a hand-made broken state or history and must fail: a checker that
//! cannot fail is no checker. Each also accepts the matching correct one.

use chat_core::app::{AppError, CommandOutput, MessageId, MessageView, QueryOutput};
use chat_core::{ClientError, LogIndex, NodeId, Response, Term, Time};
use chat_sim::checker::{check_history, FinalState, SafetyChecker};
use chat_sim::history::{History, OpKind};

#[test]
fn two_leaders_in_one_term_fail_election_safety() {
    let mut checker = SafetyChecker::default();
    checker.observe_leader(NodeId(1), Term(3)).unwrap();
    checker.observe_leader(NodeId(1), Term(3)).unwrap();
    checker.observe_leader(NodeId(2), Term(4)).unwrap();
    let violation = checker.observe_leader(NodeId(3), Term(3)).unwrap_err();
    assert_eq!(violation.check, "election-safety");
}

#[test]
fn a_changed_committed_entry_fails_log_safety() {
    let mut checker = SafetyChecker::default();
    checker
        .observe_committed(NodeId(1), LogIndex(5), Term(2), 0xaa)
        .unwrap();
    checker
        .observe_committed(NodeId(2), LogIndex(5), Term(2), 0xaa)
        .unwrap();
    assert_eq!(
        checker
            .observe_committed(NodeId(3), LogIndex(5), Term(3), 0xbb)
            .unwrap_err()
            .check,
        "log-safety"
    );
    assert_eq!(
        checker
            .observe_committed(NodeId(3), LogIndex(5), Term(2), 0xbc)
            .unwrap_err()
            .check,
        "log-safety"
    );
}

fn view(id: u64, to: &str, body: &str) -> MessageView {
    MessageView {
        id: MessageId(id),
        sender: "a".into(),
        sender_deleted: false,
        recipient: to.into(),
        body: body.into(),
        timestamp: Time(id),
        read: false,
    }
}

fn sent(id: u64) -> Option<Result<Response, ClientError>> {
    Some(Ok(Response::Command(CommandOutput::Sent {
        id: MessageId(id),
        timestamp: Time(id),
    })))
}

/// One send from a to b, acknowledged at t=10.
fn history_with_send() -> History {
    let mut history = History::default();
    let op = history.invoke(
        0,
        OpKind::Send {
            from: "a".into(),
            to: "b".into(),
            body: "hi".into(),
        },
        1,
    );
    history.complete(op, sent(7).unwrap(), 10);
    history
}

fn state(messages: &[MessageView]) -> FinalState {
    let mut state = FinalState::default();
    state.inboxes.insert("a".into(), Vec::new());
    state.inboxes.insert("b".into(), messages.to_vec());
    state
}

#[test]
fn a_lost_acknowledged_send_fails_durability() {
    let history = history_with_send();
    check_history(&history, &state(&[view(7, "b", "hi")])).unwrap();
    assert_eq!(
        check_history(&history, &state(&[])).unwrap_err().check,
        "durability"
    );
    assert_eq!(
        check_history(&history, &state(&[view(7, "b", "changed")]))
            .unwrap_err()
            .check,
        "durability"
    );
}

#[test]
fn a_deleted_message_may_be_gone() {
    let mut history = history_with_send();
    let op = history.invoke(
        1,
        OpKind::Delete {
            user: "b".into(),
            ids: vec![MessageId(7)],
        },
        20,
    );
    history.complete(
        op,
        Ok(Response::Command(CommandOutput::Deleted { count: 1 })),
        30,
    );
    check_history(&history, &state(&[])).unwrap();
}

#[test]
fn a_message_stored_twice_fails_exactly_once() {
    let history = history_with_send();
    let duplicated = state(&[view(7, "b", "hi"), view(9, "b", "hi")]);
    assert_eq!(
        check_history(&history, &duplicated).unwrap_err().check,
        "exactly-once"
    );
}

#[test]
fn an_account_created_twice_fails_exactly_once() {
    let mut history = History::default();
    let op = history.invoke(0, OpKind::CreateAccount { user: "a".into() }, 1);
    history.complete(
        op,
        Err(ClientError::App(AppError::UserExists("a".into()))),
        2,
    );
    assert_eq!(
        check_history(&history, &state(&[])).unwrap_err().check,
        "exactly-once"
    );
}

fn read(history: &mut History, ids: &[u64], limit: u32, at: u64) {
    let op = history.invoke(
        1,
        OpKind::Read {
            user: "b".into(),
            limit,
        },
        at,
    );
    let messages = ids.iter().map(|&id| view(id, "b", "hi")).collect();
    history.complete(
        op,
        Ok(Response::Command(CommandOutput::Messages(messages))),
        at + 1,
    );
}

#[test]
fn a_message_read_twice_fails_exactly_once() {
    let mut history = history_with_send();
    read(&mut history, &[7], 10, 20);
    check_history(&history, &state(&[view(7, "b", "hi")])).unwrap();
    read(&mut history, &[7], 10, 30);
    assert_eq!(
        check_history(&history, &state(&[view(7, "b", "hi")]))
            .unwrap_err()
            .check,
        "exactly-once"
    );
}

#[test]
fn a_read_that_misses_an_acknowledged_send_fails_linearizability() {
    // The read began (t=20) after the send was acknowledged (t=10) and returned less than
    // its limit, so it must have included the message.
    let mut history = history_with_send();
    read(&mut history, &[], 10, 20);
    assert_eq!(
        check_history(&history, &state(&[view(7, "b", "hi")]))
            .unwrap_err()
            .check,
        "linearizability"
    );
    // A read that began before the acknowledgement may miss it.
    let mut history = history_with_send();
    read(&mut history, &[], 10, 5);
    check_history(&history, &state(&[view(7, "b", "hi")])).unwrap();
}

#[test]
fn a_list_that_misses_an_acknowledged_account_fails_linearizability() {
    let mut history = History::default();
    let create = history.invoke(0, OpKind::CreateAccount { user: "a".into() }, 1);
    history.complete(
        create,
        Ok(Response::Command(CommandOutput::AccountCreated {
            user: "a".into(),
            generation: 1,
        })),
        2,
    );
    let list = |names: Vec<String>| {
        Ok(Response::Query(QueryOutput::Accounts {
            names,
            page: 0,
            total: 0,
            has_more: false,
        }))
    };
    let mut good = history.clone();
    let op = good.invoke(1, OpKind::List { stale: false }, 3);
    good.complete(op, list(vec!["a".into()]), 4);
    check_history(&good, &state(&[])).unwrap();
    let mut stale_ok = history.clone();
    let op = stale_ok.invoke(1, OpKind::List { stale: true }, 3);
    stale_ok.complete(op, list(vec![]), 4);
    check_history(&stale_ok, &state(&[])).unwrap();
    let op = history.invoke(1, OpKind::List { stale: false }, 3);
    history.complete(op, list(vec![]), 4);
    assert_eq!(
        check_history(&history, &state(&[])).unwrap_err().check,
        "linearizability"
    );
}

fn calm_scenario() -> chat_sim::Scenario {
    let options = chat_sim::GenerateOptions {
        faults: "none".parse().unwrap(),
        ..Default::default()
    };
    chat_sim::Scenario::generate(11, &options)
}

#[test]
fn a_cluster_that_never_recovers_fails_liveness() {
    // Led but deaf to clients: `leaderless` stays quiet, so liveness must speak.
    let scenario = calm_scenario();
    assert_eq!(chat_sim::run_scenario(&scenario).failure, None);
    let world = chat_sim::World::new(&scenario, chat_sim::trace::Tracer::silent());
    let outcome = world.sabotage(chat_sim::Sabotage::IgnoreClients).run();
    assert_eq!(
        outcome.failure.expect("must fail").violation.check,
        "liveness"
    );
}

#[test]
fn a_power_loss_that_loses_state_fails_the_power_loss_check() {
    let scenario = calm_scenario();
    let world = chat_sim::World::new(&scenario, chat_sim::trace::Tracer::silent());
    let outcome = world
        .sabotage(chat_sim::Sabotage::WipeDisksOnPowerLoss)
        .run();
    assert_eq!(
        outcome.failure.expect("must fail").violation.check,
        "power-loss"
    );
}

#[test]
fn listeners_receive_every_message_once_and_sabotaged_deliveries_fail() {
    let scenario = calm_scenario();
    let clean = chat_sim::run_scenario(&scenario);
    assert_eq!(clean.failure, None);
    assert!(
        clean.stats.messages_listened > 0,
        "the listeners must have received something for the check to mean anything"
    );
    for sabotage in [
        chat_sim::Sabotage::LoseSomeDeliveries,
        chat_sim::Sabotage::RepeatDeliveries,
    ] {
        let world = chat_sim::World::new(&scenario, chat_sim::trace::Tracer::silent());
        let outcome = world.sabotage(sabotage).run();
        let failure = outcome.failure.expect("a broken delivery path must fail");
        assert_eq!(failure.violation.check, "delivery", "{sabotage:?}");
    }
}
