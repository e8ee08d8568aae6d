//! The sequential model of the set of accounts, as linearizable `List` queries see it.
//! Stale lists are not linearizable by contract and are left out; a list with no answer
//! has no effect and is left out too.

use super::inbox::known_outcome;
use super::search::{mix, Model};
use crate::history::{OpKind, OpRecord};
use chat_core::app::limits::LIST_PAGE_SIZE;
use chat_core::app::{AppError, CommandOutput, QueryOutput};
use chat_core::Response;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
enum AccountsOp {
    /// `created`: `Some(true)` acknowledged, `Some(false)` "already exists", `None`
    /// unknown.
    Create {
        user: usize,
        created: Option<bool>,
        /// The complete lists (every account on one page) that do not name this user:
        /// if it is created at all, it is after each of them. Knowing this up front
        /// keeps the search from trying every subset of concurrent creations against
        /// a list (exponential in the clients starting together).
        after_lists: Vec<usize>,
    },
    /// Users are numbered in name order, so a page is a run of numbers.
    List {
        page: u32,
        names: Vec<usize>,
        total: u64,
    },
    Impossible,
}

pub(super) struct AccountsModel {
    ops: Vec<AccountsOp>,
    created: Vec<bool>,
    /// The users created so far, in the order they were.
    creation_log: Vec<usize>,
    created_hash: u64,
    /// Per operation, whether it is a list already linearized; and their order.
    listed: Vec<bool>,
    list_log: Vec<usize>,
}

impl AccountsModel {
    fn page(&self, page: u32) -> impl Iterator<Item = usize> + '_ {
        let skip = (page as usize).saturating_mul(LIST_PAGE_SIZE);
        (0..self.created.len())
            .filter(|&user| self.created[user])
            .skip(skip)
            .take(LIST_PAGE_SIZE)
    }
}

impl Model for AccountsModel {
    /// The lengths of the creation and list logs, and the hash, before the operation.
    type Mark = (usize, usize, u64);

    fn mark(&self) -> Self::Mark {
        (
            self.creation_log.len(),
            self.list_log.len(),
            self.created_hash,
        )
    }

    fn undo(&mut self, mark: Self::Mark) {
        while self.list_log.len() > mark.1 {
            if let Some(op) = self.list_log.pop() {
                self.listed[op] = false;
            }
        }
        while self.creation_log.len() > mark.0 {
            if let Some(user) = self.creation_log.pop() {
                self.created[user] = false;
            }
        }
        self.created_hash = mark.2;
    }

    fn apply(&mut self, op: usize) -> bool {
        match &self.ops[op] {
            AccountsOp::Create {
                user,
                created,
                after_lists,
            } => {
                let user = *user;
                if !after_lists.iter().all(|&list| self.listed[list]) {
                    return false;
                }
                match (created, self.created[user]) {
                    (Some(true), true) => false,
                    (Some(false), exists) => exists,
                    (_, true) => true,
                    (_, false) => {
                        self.created[user] = true;
                        self.creation_log.push(user);
                        self.created_hash = self.created_hash.wrapping_add(mix(user as u64));
                        true
                    }
                }
            }
            AccountsOp::List { page, names, total } => {
                let matches = *total == self.creation_log.len() as u64
                    && self.page(*page).eq(names.iter().copied());
                if matches {
                    self.listed[op] = true;
                    self.list_log.push(op);
                }
                matches
            }
            AccountsOp::Impossible => false,
        }
    }

    fn fingerprint(&self) -> u128 {
        u128::from(self.created_hash) << 64 | self.creation_log.len() as u128
    }
}

/// Whether a history operation belongs to the accounts partition.
pub(super) fn is_member(op: &OpRecord) -> bool {
    match op.kind {
        OpKind::CreateAccount { .. } => true,
        OpKind::List { stale } => !stale && known_outcome(op).is_some(),
        _ => false,
    }
}

/// Builds the model from the history operations `ops` (indices into `all`): creations
/// and linearizable lists with an answer.
pub(super) fn build(all: &[OpRecord], ops: &[usize]) -> AccountsModel {
    let mut users: BTreeMap<&str, usize> = BTreeMap::new();
    for &index in ops {
        if let OpKind::CreateAccount { user } = &all[index].kind {
            users.insert(user, 0);
        }
    }
    for (number, slot) in users.values_mut().enumerate() {
        *slot = number;
    }
    let mut model_ops: Vec<AccountsOp> = ops
        .iter()
        .map(|&index| {
            let record = &all[index];
            let outcome = known_outcome(record);
            match (&record.kind, outcome) {
                (OpKind::CreateAccount { user }, outcome) => {
                    let created = match outcome {
                        None => None,
                        Some(Ok(Response::Command(CommandOutput::AccountCreated { .. }))) => {
                            Some(true)
                        }
                        Some(Err(AppError::UserExists(_))) => Some(false),
                        Some(_) => return AccountsOp::Impossible,
                    };
                    AccountsOp::Create {
                        user: users[user.as_str()],
                        created,
                        after_lists: Vec::new(),
                    }
                }
                (
                    OpKind::List { .. },
                    Some(Ok(Response::Query(QueryOutput::Accounts {
                        names, page, total, ..
                    }))),
                ) => {
                    let numbers: Option<Vec<usize>> = names
                        .iter()
                        .map(|name| users.get(name.as_str()).copied())
                        .collect();
                    match numbers {
                        Some(names) => AccountsOp::List {
                            page: *page,
                            names,
                            total: *total,
                        },
                        // A name nobody created.
                        None => AccountsOp::Impossible,
                    }
                }
                _ => AccountsOp::Impossible,
            }
        })
        .collect();
    let complete_lists: Vec<(usize, Vec<usize>)> = model_ops
        .iter()
        .enumerate()
        .filter_map(|(op, model_op)| match model_op {
            AccountsOp::List {
                page: 0,
                names,
                total,
            } if names.len() as u64 == *total => Some((op, names.clone())),
            _ => None,
        })
        .collect();
    for model_op in &mut model_ops {
        if let AccountsOp::Create {
            user, after_lists, ..
        } = model_op
        {
            *after_lists = complete_lists
                .iter()
                .filter(|(_, names)| !names.contains(user))
                .map(|(op, _)| *op)
                .collect();
        }
    }
    let op_count = model_ops.len();
    AccountsModel {
        ops: model_ops,
        listed: vec![false; op_count],
        list_log: Vec::new(),
        created: vec![false; users.len()],
        creation_log: Vec::new(),
        created_hash: 0,
    }
}
