//! Linearizability of the whole client history, checked, not sampled: a search in the
//! style of Porcupine / Knossos (Wing & Gong with Lowe's memoization, `search.rs`) of
//! every operation against a naive sequential model of the chat service.
//!
//! **Partitioning (P-compositionality).** The state is split into parts that no
//! operation's outcome crosses, and each part is checked on its own:
//! - one partition per user's inbox: the account's creation, every send *to* that user,
//!   and that user's reads and deletes (`inbox.rs`). A send's outcome depends only on
//!   the recipient's account and inbox (its sender is authenticated by a token from its
//!   own creation, acknowledged before it could send);
//! - one partition for the set of accounts: every creation and every linearizable list
//!   (`accounts.rs`).
//!
//! A creation is in two partitions. Each projection of a linearizable history is
//! linearizable, so a failure in any partition is a real failure; the converse is
//! slightly weaker than a whole-history search (a creation could be placed at different
//! points in its two partitions), which costs nothing in practice: creations come first.
//!
//! **Unknown outcomes.** An operation without a definite answer (no reply, an expired
//! session) may take effect at most once, at any time after its call: it has no return
//! event, and the search may linearize it or leave it out. A retried operation is one
//! record in the history (exactly-once sessions), so it is linearized at most once.
//!
//! **Budget.** Each partition's search takes at most [`SEARCH_STEPS_MAX`] steps; one
//! that runs out is `Unknown`: counted and reported, not a failure.
//!
//! **Reporting.** A failing partition is narrowed to a short window (`window.rs`): the
//! first prefix of its operations that fails, then greedily without every operation
//! whose removal still fails, so what is printed is a small history that is itself not
//! linearizable. `timeline.rs` draws a history as HTML.

mod accounts;
mod inbox;
mod search;
mod timeline;
mod window;

use crate::history::{History, OpKind, OpRecord};
use search::{SearchResult, Timing};
use std::collections::BTreeMap;
use std::fmt;

pub use timeline::history_html;

/// Steps (events visited) one partition's search may take. A seed's largest inbox has a
/// few hundred operations and needs about two steps per operation when it passes.
pub const SEARCH_STEPS_MAX: u64 = 1_000_000;
/// Steps the narrowing of a failure to a short window may take, over all its searches.
pub const WINDOW_STEPS_MAX: u64 = 20_000_000;

/// A part of the state checked on its own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Partition {
    Inbox(String),
    Accounts,
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Inbox(user) => write!(f, "inbox of {user}"),
            Partition::Accounts => write!(f, "accounts"),
        }
    }
}

/// The verdict on one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable {
        window: Window,
    },
    /// The step budget ran out before the search decided.
    Unknown,
}

/// A short sub-history of one partition that cannot be linearized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Indices into the history's operations, by call time.
    pub ops: Vec<usize>,
    /// The operations, one a line (client, operation, call..return, outcome).
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionReport {
    pub partition: Partition,
    pub op_count: usize,
    pub steps: u64,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub partitions: Vec<PartitionReport>,
}

impl Report {
    /// The first partition that is not linearizable, with its window.
    pub fn failure(&self) -> Option<(&Partition, &Window)> {
        self.partitions.iter().find_map(|p| match &p.verdict {
            Verdict::NotLinearizable { window } => Some((&p.partition, window)),
            _ => None,
        })
    }

    pub fn unknown_count(&self) -> u64 {
        self.partitions
            .iter()
            .filter(|p| p.verdict == Verdict::Unknown)
            .count() as u64
    }

    pub fn steps(&self) -> u64 {
        self.partitions.iter().map(|p| p.steps).sum()
    }
}

/// Checks every partition of `history`.
pub fn check(history: &History) -> Report {
    let mut report = Report::default();
    for (partition, ops) in partitions(history) {
        let mut steps = 0;
        let result = check_ops(&history.ops, &partition, &ops, SEARCH_STEPS_MAX, &mut steps);
        let verdict = match result {
            SearchResult::Linearizable => Verdict::Linearizable,
            SearchResult::Exhausted => Verdict::Unknown,
            SearchResult::NotLinearizable => Verdict::NotLinearizable {
                window: window::narrow(history, &partition, &ops),
            },
        };
        report.partitions.push(PartitionReport {
            partition,
            op_count: ops.len(),
            steps,
            verdict,
        });
    }
    report
}

/// The operations of each partition, as indices into the history, by call time.
pub fn partitions(history: &History) -> BTreeMap<Partition, Vec<usize>> {
    let mut partitions: BTreeMap<Partition, Vec<usize>> = BTreeMap::new();
    let mut has_list = false;
    let replayed: std::collections::BTreeSet<usize> = history
        .ops
        .iter()
        .filter_map(|op| match op.abuse {
            Some(crate::history::Abuse::Replay { of }) => Some(of),
            _ => None,
        })
        .collect();
    for (index, op) in history.ops.iter().enumerate() {
        if !takes_part(op, replayed.contains(&index)) {
            continue;
        }
        let inbox_user = match &op.kind {
            OpKind::CreateAccount { user } => Some(user),
            OpKind::Send { to, .. } => Some(to),
            OpKind::Read { user, .. } | OpKind::Peek { user, .. } | OpKind::Delete { user, .. } => {
                Some(user)
            }
            OpKind::List { .. } | OpKind::OpenSession { .. } => None,
        };
        if let Some(user) = inbox_user {
            partitions
                .entry(Partition::Inbox(user.clone()))
                .or_default()
                .push(index);
        }
        if accounts::is_member(op) {
            has_list |= matches!(op.kind, OpKind::List { .. });
            partitions
                .entry(Partition::Accounts)
                .or_default()
                .push(index);
        }
    }
    if !has_list {
        // Creations alone are trivially linearizable.
        partitions.remove(&Partition::Accounts);
    }
    for ops in partitions.values_mut() {
        ops.sort_by_key(|&index| (history.ops[index].invoke_us, index));
    }
    partitions
}

/// Whether an operation is searched: a late replay of another operation's request is
/// not a new operation (the checker's `check_abuse` judges its answer), and a request
/// refused on its only attempt (an expired session, a stale sequence number) certainly
/// did not take effect, unless it was `replayed` later (the replay may apply it).
fn takes_part(op: &OpRecord, replayed: bool) -> bool {
    use chat_core::ClientError;
    let refused_once = op.attempts == 1
        && matches!(
            op.outcome,
            Some(Err(ClientError::SessionExpired
                | ClientError::StaleRequest { .. }
                | ClientError::SessionNotOwned
                | ClientError::RetryMismatch { .. }
                | ClientError::InvalidRequest(_)))
        );
    !matches!(op.abuse, Some(crate::history::Abuse::Replay { .. })) && (!refused_once || replayed)
}

/// Searches one partition restricted to `ops` (indices into `all`, by call time).
fn check_ops(
    all: &[OpRecord],
    partition: &Partition,
    ops: &[usize],
    steps_max: u64,
    steps: &mut u64,
) -> SearchResult {
    let timings = timings(all, ops);
    match partition {
        Partition::Inbox(user) => {
            let mut model = inbox::build(user, all, ops);
            search::search(&mut model, &timings, steps_max, steps)
        }
        Partition::Accounts => {
            let mut model = accounts::build(all, ops);
            search::search(&mut model, &timings, steps_max, steps)
        }
    }
}

/// Call and return keys of `ops`; see [`Timing`].
fn timings(all: &[OpRecord], ops: &[usize]) -> Vec<Timing> {
    // A client's operations are sequential, so its previous completion is that of its
    // last operation before this one in the whole history.
    let mut last_complete_us: BTreeMap<usize, u64> = BTreeMap::new();
    let mut call_keys: BTreeMap<usize, u64> = BTreeMap::new();
    let mut wanted = ops.to_vec();
    wanted.sort_unstable();
    let mut wanted = wanted.into_iter().peekable();
    for (index, op) in all.iter().enumerate() {
        if wanted.peek() == Some(&index) {
            wanted.next();
            let rank = if last_complete_us.get(&op.client) == Some(&op.invoke_us) {
                search::RANK_CALL_AFTER_OWN_RETURN
            } else {
                search::RANK_CALL
            };
            call_keys.insert(index, search::time_key(op.invoke_us, rank));
        }
        if let Some(complete_us) = op.complete_us {
            last_complete_us.insert(op.client, complete_us);
        }
    }
    ops.iter()
        .map(|index| {
            let op = &all[*index];
            let call_key = call_keys[index];
            let return_key = inbox::known_outcome(op)
                .and(op.complete_us)
                .map(|t| search::time_key(t, search::RANK_RETURN).max(call_key + 1));
            Timing {
                call_key,
                return_key,
            }
        })
        .collect()
}

/// One operation as a line of text: `#index cN kind call..return outcome`.
pub fn describe_op(history: &History, index: usize) -> String {
    let op = &history.ops[index];
    let kind = match &op.kind {
        OpKind::CreateAccount { user } => format!("create {user}"),
        OpKind::OpenSession { user } => format!("open session {user}"),
        OpKind::Send { from, to, body } => format!("send {from}->{to} {body:?}"),
        OpKind::Read { user, limit } => format!("read {user} limit {limit}"),
        OpKind::Peek { user, limit } => format!("peek {user} limit {limit}"),
        OpKind::Delete { user, ids } => format!(
            "delete {user} [{}]",
            ids.iter()
                .map(|id| id.0.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        OpKind::List { stale } => format!("list{}", if *stale { " (stale)" } else { "" }),
    };
    let complete = match (op.complete_us, inbox::known_outcome(op)) {
        (Some(t), Some(_)) => format_us(t),
        _ => "?".to_string(),
    };
    format!(
        "#{index} c{} {kind}  {}..{}  {}",
        op.client,
        format_us(op.invoke_us),
        complete,
        describe_outcome(op)
    )
}

fn format_us(time_us: u64) -> String {
    format!("{}.{:06}s", time_us / 1_000_000, time_us % 1_000_000)
}

/// The outcome, short: ids and bodies for reads, the id for sends.
pub fn describe_outcome(op: &OpRecord) -> String {
    use chat_core::app::{CommandOutput, QueryOutput};
    use chat_core::Response;
    let Some(outcome) = &op.outcome else {
        return "unknown (no reply)".to_string();
    };
    let known = inbox::known_outcome(op).is_some();
    let text = match outcome {
        Ok(Response::Command(CommandOutput::Sent { id, .. })) => format!("ok id {}", id.0),
        Ok(Response::Command(CommandOutput::Messages(views))) => format!(
            "ok [{}]",
            views
                .iter()
                .map(|v| format!("{}:{:?} from {}", v.id.0, v.body, v.sender))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Ok(Response::Command(CommandOutput::Deleted { count })) => format!("ok {count} deleted"),
        Ok(Response::Command(CommandOutput::AccountCreated { generation, .. })) => {
            format!("ok generation {generation}")
        }
        Ok(Response::Query(QueryOutput::Accounts { names, total, .. })) => {
            format!("ok {total} [{}]", names.join(","))
        }
        Ok(other) => format!("ok {other:?}"),
        Err(error) => format!("error: {error}"),
    };
    if known {
        text
    } else {
        format!("unknown ({text})")
    }
}
