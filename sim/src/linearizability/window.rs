//! Narrowing a non-linearizable partition to a short window that is itself not
//! linearizable: first the shortest failing prefix (by call time), then, latest first,
//! without each operation whose removal keeps it failing.
//!
//! Removing an operation can make a history fail for another reason than the original
//! one (drop the send whose message a read returned, and the read returns a message
//! nobody sent). So a send stays while a kept read returned its message or a kept
//! delete names it, and the account's creation always stays: the window keeps the
//! cause of the failure, not a new one.

use super::search::SearchResult;
use super::{check_ops, describe_op, Partition, Window, SEARCH_STEPS_MAX, WINDOW_STEPS_MAX};
use crate::history::{History, OpKind};
use chat_core::app::{CommandOutput, MessageId, QueryOutput};
use chat_core::Response;
use std::collections::BTreeSet;

/// Whether `ops` is certainly not linearizable; out of budget counts as "not certainly",
/// so the operation under trial is kept.
fn fails(history: &History, partition: &Partition, ops: &[usize], steps: &mut u64) -> bool {
    let budget = SEARCH_STEPS_MAX.min(WINDOW_STEPS_MAX.saturating_sub(*steps));
    budget > 0
        && check_ops(&history.ops, partition, ops, budget, steps) == SearchResult::NotLinearizable
}

pub(super) fn narrow(history: &History, partition: &Partition, ops: &[usize]) -> Window {
    let mut steps: u64 = 0;
    // The whole partition fails; `prefix_failing` stays a failing prefix length and
    // `prefix_passing` a passing one (the empty history passes).
    let (mut prefix_passing, mut prefix_failing) = (0, ops.len());
    while prefix_failing - prefix_passing > 1 {
        let middle = prefix_passing + (prefix_failing - prefix_passing) / 2;
        if fails(
            history,
            partition,
            &closed(history, ops, middle),
            &mut steps,
        ) {
            prefix_failing = middle;
        } else {
            prefix_passing = middle;
        }
    }
    let mut window: Vec<usize> = closed(history, ops, prefix_failing);
    for position in (0..window.len()).rev() {
        let index = window[position];
        let mut candidate = window.clone();
        candidate.remove(position);
        if is_needed(history, partition, index, &candidate) {
            continue;
        }
        if fails(history, partition, &candidate, &mut steps) {
            window = candidate;
        }
    }
    let text = window
        .iter()
        .map(|&index| format!("  {}", describe_op(history, index)))
        .collect::<Vec<_>>()
        .join("\n");
    Window { ops: window, text }
}

/// The first `prefix_len` of `ops`, plus every later send whose message they return or
/// name (a read may see a send invoked after it: that is what makes it fail), in call
/// order.
fn closed(history: &History, ops: &[usize], prefix_len: usize) -> Vec<usize> {
    let prefix = &ops[..prefix_len];
    let mut window = prefix.to_vec();
    window.extend(
        ops[prefix_len..]
            .iter()
            .filter(|&&index| is_referred_to(history, index, prefix)),
    );
    window
}

/// Whether history operation `index` must stay because what remains refers to it.
fn is_needed(history: &History, partition: &Partition, index: usize, remaining: &[usize]) -> bool {
    match (&history.ops[index].kind, partition) {
        (OpKind::CreateAccount { .. }, Partition::Inbox(_)) => true,
        _ => is_referred_to(history, index, remaining),
    }
}

/// Whether an operation in `others` returned or named what history operation `index`
/// created: a send's message, an account's name.
fn is_referred_to(history: &History, index: usize, others: &[usize]) -> bool {
    let op = &history.ops[index];
    let body = match &op.kind {
        OpKind::CreateAccount { user } => {
            return others.iter().any(|&i| {
                matches!(
                    &history.ops[i].outcome,
                    Some(Ok(Response::Query(QueryOutput::Accounts { names, .. }))) if names.contains(user)
                )
            })
        }
        OpKind::Send { body, .. } => body,
        _ => return false,
    };
    let mut ids: BTreeSet<MessageId> = BTreeSet::new();
    if let Some(Ok(Response::Command(CommandOutput::Sent { id, .. }))) = &op.outcome {
        ids.insert(*id);
    }
    let mut returned = false;
    for other in others.iter().map(|&i| &history.ops[i]) {
        if let Some(Ok(Response::Command(CommandOutput::Messages(views)))) = &other.outcome {
            for view in views.iter().filter(|view| view.body == *body) {
                returned = true;
                ids.insert(view.id);
            }
        }
    }
    returned
        || others.iter().any(|&i| match &history.ops[i].kind {
            OpKind::Delete { ids: named, .. } => named.iter().any(|id| ids.contains(id)),
            _ => false,
        })
}
