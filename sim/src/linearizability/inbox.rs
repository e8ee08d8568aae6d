//! The sequential model of one user's inbox, deliberately naive and independent of
//! `ChatState` (plain vectors; a test cross-checks the two on random command sequences).
//!
//! It matches messages by body (bodies are unique: each client numbers its own), never
//! predicts ids: ids are log positions the cluster chooses. It only uses the ids it was
//! told (by a send's acknowledgement or by a read) for two things: a send with a known
//! id must come after every send with a smaller known id (ids grow with the log, and the
//! log is the order writes take effect in), and a delete names messages by id.

use super::search::{mix, Model};
use crate::history::{OpKind, OpRecord};
use chat_core::app::limits::INBOX_MESSAGES_MAX;
use chat_core::app::{AppError, CommandOutput, MessageId, QueryOutput};
use chat_core::{ClientError, Response};
use std::collections::BTreeMap;

/// What an operation's recorded outcome says, if anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Expect<T> {
    /// No answer, or one that does not say whether it took effect (a timeout, an
    /// expired session): it may take effect at most once, any time after its call.
    Unknown,
    Known(T),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SendResult {
    Sent,
    UnknownUser,
    InboxFull,
    /// Refused for its content (an empty or oversized body) before the log: no effect,
    /// whatever the state.
    Invalid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ReadResult {
    /// The messages returned, oldest first, as message numbers (see [`InboxModel`]).
    Messages(Vec<u32>),
    Unauthenticated,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum DeleteResult {
    Deleted { count: u32 },
    NotFound(MessageId),
    Unauthenticated,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum InboxOp {
    /// The account's creation: `Known(true)` created, `Known(false)` "already exists".
    Create(Expect<bool>),
    Send {
        message: u32,
        id: Option<MessageId>,
        /// How many acknowledged sends have a smaller id: all must be stored before
        /// this one (known once every id is; 0 when the id is unknown).
        acknowledged_before: u32,
        expect: Expect<SendResult>,
    },
    Read {
        limit: u32,
        expect: Expect<ReadResult>,
    },
    /// The oldest `limit` messages present, read or not; marks nothing.
    Peek {
        limit: u32,
        expect: Expect<ReadResult>,
    },
    Delete {
        ids: Vec<MessageId>,
        /// The message each id names, if any operation revealed it.
        targets: Vec<Option<u32>>,
        expect: Expect<DeleteResult>,
    },
    /// An outcome no inbox can give (a read of a message never sent to this user, a
    /// reply of the wrong kind, an id that contradicts another): never linearizable.
    Impossible,
}

/// The state: messages are numbered in the order their sends appear in the partition,
/// and `seq` holds them in inbox order. Unread messages always form a suffix of the
/// messages not deleted (a read marks the oldest unread ones, sends append), so "read"
/// is one position, `read_upto`, instead of a flag per message.
pub(super) struct InboxModel {
    ops: Vec<InboxOp>,
    exists: bool,
    seq: Vec<u32>,
    in_seq: Vec<bool>,
    deleted: Vec<bool>,
    deletion_log: Vec<u32>,
    read_upto: usize,
    present_count: usize,
    id_max: MessageId,
    /// Acknowledged sends stored so far.
    acknowledged_count: u32,
    seq_hash: (u64, u64),
    deleted_hash: u64,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct InboxMark {
    exists: bool,
    seq_len: usize,
    deletion_len: usize,
    read_upto: usize,
    present_count: usize,
    id_max: MessageId,
    acknowledged_count: u32,
    seq_hash: (u64, u64),
    deleted_hash: u64,
}

const SEQ_HASH_BASES: (u64, u64) = (0x100_0000_01b3, 0x9e37_79b9_7f4a_7c15 | 1);

impl InboxModel {
    pub(super) fn new(ops: Vec<InboxOp>, message_count: usize) -> InboxModel {
        InboxModel {
            ops,
            exists: false,
            seq: Vec::new(),
            in_seq: vec![false; message_count],
            deleted: vec![false; message_count],
            deletion_log: Vec::new(),
            read_upto: 0,
            present_count: 0,
            id_max: MessageId(0),
            acknowledged_count: 0,
            seq_hash: (0, 0),
            deleted_hash: 0,
        }
    }

    fn append(&mut self, message: u32, id: Option<MessageId>) {
        self.seq.push(message);
        self.in_seq[message as usize] = true;
        self.present_count += 1;
        if let Some(id) = id {
            self.id_max = id;
        }
        let value = mix(u64::from(message));
        self.seq_hash = (
            self.seq_hash.0.wrapping_mul(SEQ_HASH_BASES.0) ^ value,
            self.seq_hash
                .1
                .wrapping_mul(SEQ_HASH_BASES.1)
                .wrapping_add(value),
        );
    }

    /// Up to `limit` positions in `seq` of the oldest unread messages.
    fn unread_positions(&self, limit: u32) -> impl Iterator<Item = usize> + '_ {
        (self.read_upto..self.seq.len())
            .filter(|&pos| !self.deleted[self.seq[pos] as usize])
            .take(limit as usize)
    }

    fn apply_create(&mut self, expect: &Expect<bool>) -> bool {
        match expect {
            Expect::Known(true) if self.exists => false,
            Expect::Known(false) => self.exists,
            _ => {
                self.exists = true;
                true
            }
        }
    }

    fn apply_send(
        &mut self,
        message: u32,
        id: Option<MessageId>,
        acknowledged_before: u32,
        expect: &Expect<SendResult>,
    ) -> bool {
        if *expect == Expect::Known(SendResult::Invalid) {
            return true;
        }
        let natural = if !self.exists {
            SendResult::UnknownUser
        } else if self.present_count >= INBOX_MESSAGES_MAX {
            SendResult::InboxFull
        } else {
            SendResult::Sent
        };
        if let Expect::Known(result) = expect {
            if *result != natural {
                return false;
            }
        }
        if natural == SendResult::Sent {
            if id.is_some_and(|id| id <= self.id_max) {
                // It would be stored out of log order.
                return false;
            }
            if id.is_some() && self.acknowledged_count != acknowledged_before {
                // An acknowledged send with a smaller id is not stored yet, and could
                // never be after this one: cut this branch now rather than at its return.
                return false;
            }
            if *expect == Expect::Known(SendResult::Sent) {
                self.acknowledged_count += 1;
            }
            self.append(message, id);
        }
        true
    }

    /// A peek changes nothing: it holds if it returned the oldest `limit` messages
    /// present (read or not), in order.
    fn apply_peek(&self, limit: u32, expect: &Expect<ReadResult>) -> bool {
        if !self.exists {
            return matches!(
                expect,
                Expect::Unknown | Expect::Known(ReadResult::Unauthenticated)
            );
        }
        match expect {
            Expect::Unknown => true,
            Expect::Known(ReadResult::Unauthenticated) => false,
            Expect::Known(ReadResult::Messages(expected)) => {
                let present = self
                    .seq
                    .iter()
                    .copied()
                    .filter(|&m| !self.deleted[m as usize])
                    .take(limit as usize);
                present.eq(expected.iter().copied())
            }
        }
    }

    fn apply_read(&mut self, limit: u32, expect: &Expect<ReadResult>) -> bool {
        if !self.exists {
            return matches!(
                expect,
                Expect::Unknown | Expect::Known(ReadResult::Unauthenticated)
            );
        }
        let last = match expect {
            Expect::Known(ReadResult::Unauthenticated) => return false,
            Expect::Known(ReadResult::Messages(expected)) => {
                let mut positions = self.unread_positions(limit);
                let mut last = None;
                for &message in expected {
                    match positions.next() {
                        Some(pos) if self.seq[pos] == message => last = Some(pos),
                        _ => return false,
                    }
                }
                // Fewer than `limit` returned means none was left unread.
                if expected.len() < limit as usize && positions.next().is_some() {
                    return false;
                }
                last
            }
            Expect::Unknown => self.unread_positions(limit).last(),
        };
        if let Some(pos) = last {
            self.read_upto = pos + 1;
        }
        true
    }

    fn apply_delete(
        &mut self,
        ids: &[MessageId],
        targets: &[Option<u32>],
        expect: &Expect<DeleteResult>,
    ) -> bool {
        let natural = if !self.exists {
            DeleteResult::Unauthenticated
        } else if let Some(missing) = ids.iter().zip(targets).find(|(_, target)| {
            !target.is_some_and(|m| self.in_seq[m as usize] && !self.deleted[m as usize])
        }) {
            DeleteResult::NotFound(*missing.0)
        } else {
            let mut distinct: Vec<u32> = targets.iter().flatten().copied().collect();
            distinct.sort_unstable();
            distinct.dedup();
            DeleteResult::Deleted {
                count: distinct.len() as u32,
            }
        };
        if let Expect::Known(result) = expect {
            if *result != natural {
                return false;
            }
        }
        if let DeleteResult::Deleted { .. } = natural {
            for &message in targets.iter().flatten() {
                if !self.deleted[message as usize] {
                    self.deleted[message as usize] = true;
                    self.deletion_log.push(message);
                    self.present_count -= 1;
                    self.deleted_hash = self.deleted_hash.wrapping_add(mix(!u64::from(message)));
                }
            }
        }
        true
    }
}

impl Model for InboxModel {
    type Mark = InboxMark;

    fn mark(&self) -> InboxMark {
        InboxMark {
            exists: self.exists,
            seq_len: self.seq.len(),
            deletion_len: self.deletion_log.len(),
            read_upto: self.read_upto,
            present_count: self.present_count,
            id_max: self.id_max,
            acknowledged_count: self.acknowledged_count,
            seq_hash: self.seq_hash,
            deleted_hash: self.deleted_hash,
        }
    }

    fn undo(&mut self, mark: InboxMark) {
        while self.seq.len() > mark.seq_len {
            if let Some(message) = self.seq.pop() {
                self.in_seq[message as usize] = false;
            }
        }
        while self.deletion_log.len() > mark.deletion_len {
            if let Some(message) = self.deletion_log.pop() {
                self.deleted[message as usize] = false;
            }
        }
        self.exists = mark.exists;
        self.read_upto = mark.read_upto;
        self.present_count = mark.present_count;
        self.id_max = mark.id_max;
        self.acknowledged_count = mark.acknowledged_count;
        self.seq_hash = mark.seq_hash;
        self.deleted_hash = mark.deleted_hash;
    }

    fn apply(&mut self, op: usize) -> bool {
        // Taken out and put back so the model can borrow itself mutably; the vector
        // itself never moves.
        let ops = std::mem::take(&mut self.ops);
        let applied = match &ops[op] {
            InboxOp::Create(expect) => self.apply_create(expect),
            InboxOp::Send {
                message,
                id,
                acknowledged_before,
                expect,
            } => self.apply_send(*message, *id, *acknowledged_before, expect),
            InboxOp::Read { limit, expect } => self.apply_read(*limit, expect),
            InboxOp::Peek { limit, expect } => self.apply_peek(*limit, expect),
            InboxOp::Delete {
                ids,
                targets,
                expect,
            } => self.apply_delete(ids, targets, expect),
            InboxOp::Impossible => false,
        };
        self.ops = ops;
        applied
    }

    fn fingerprint(&self) -> u128 {
        let scalars = mix((self.seq.len() as u64) << 33
            ^ (self.read_upto as u64) << 1
            ^ u64::from(self.exists));
        (u128::from(self.seq_hash.0 ^ scalars) << 64)
            | u128::from(self.seq_hash.1 ^ self.deleted_hash)
    }
}

/// What a recorded outcome says: `None` when it does not say whether the operation took
/// effect, `Some(Err(app error))` for a refusal.
pub(super) fn known_outcome(op: &OpRecord) -> Option<Result<&Response, &AppError>> {
    match op.outcome.as_ref()? {
        Ok(response) => Some(Ok(response)),
        Err(ClientError::App(error)) => Some(Err(error)),
        // Not leader and busy are retried, never final; a refusal by the session table
        // says this attempt was not applied, not whether an earlier one was.
        Err(
            ClientError::NotLeader { .. }
            | ClientError::Busy { .. }
            | ClientError::SessionExpired
            | ClientError::StaleRequest { .. }
            | ClientError::SessionNotOwned
            | ClientError::RetryMismatch { .. }
            | ClientError::InvalidRequest(_)
            // Chat operations never get it: membership changes are not in the chat model.
            | ClientError::Membership(_),
        ) => None,
    }
}

/// Builds the model of `user`'s inbox from the history operations `ops` (indices into
/// `all`), which must be the creation of `user`, sends to `user`, and reads and deletes
/// by `user`. The model's operation `n` is `ops[n]`.
pub(super) fn build(user: &str, all: &[OpRecord], ops: &[usize]) -> InboxModel {
    // Number the messages: one per send, in partition order.
    let mut message_of_body: BTreeMap<&str, u32> = BTreeMap::new();
    let mut senders: Vec<&str> = Vec::new();
    let mut ids: Vec<Option<MessageId>> = Vec::new();
    for &index in ops {
        if let OpKind::Send { from, body, .. } = &all[index].kind {
            let message = senders.len() as u32;
            message_of_body.entry(body).or_insert(message);
            senders.push(from);
            ids.push(match known_outcome(&all[index]) {
                Some(Ok(Response::Command(CommandOutput::Sent { id, .. }))) => Some(*id),
                _ => None,
            });
        }
    }
    let mut model_ops: Vec<InboxOp> = Vec::with_capacity(ops.len());
    let mut next_message: u32 = 0;
    let mut deletes: Vec<usize> = Vec::new();
    for &index in ops {
        let record = &all[index];
        let outcome = known_outcome(record);
        let op = match &record.kind {
            OpKind::CreateAccount { .. } => match outcome {
                None => InboxOp::Create(Expect::Unknown),
                Some(Ok(Response::Command(CommandOutput::AccountCreated { .. }))) => {
                    InboxOp::Create(Expect::Known(true))
                }
                Some(Err(AppError::UserExists(_))) => InboxOp::Create(Expect::Known(false)),
                Some(_) => InboxOp::Impossible,
            },
            OpKind::Send { .. } => {
                let message = next_message;
                next_message += 1;
                let expect = match outcome {
                    None => Some(Expect::Unknown),
                    Some(Ok(Response::Command(CommandOutput::Sent { .. }))) => {
                        Some(Expect::Known(SendResult::Sent))
                    }
                    Some(Err(AppError::UnknownUser(_))) => {
                        Some(Expect::Known(SendResult::UnknownUser))
                    }
                    Some(Err(AppError::InboxFull(_))) => Some(Expect::Known(SendResult::InboxFull)),
                    Some(Err(AppError::BodyTooLarge { .. } | AppError::EmptyBody)) => {
                        Some(Expect::Known(SendResult::Invalid))
                    }
                    Some(_) => None,
                };
                match expect {
                    Some(expect) => InboxOp::Send {
                        message,
                        id: None,
                        acknowledged_before: 0,
                        expect,
                    },
                    None => InboxOp::Impossible,
                }
            }
            OpKind::Read { limit, .. } => {
                read_op(user, *limit, outcome, &message_of_body, &senders, &mut ids)
            }
            OpKind::Peek { limit, .. } => {
                // A peek answers with a query output: read it like a read's answer, then
                // apply it without marking anything read.
                let op = match outcome {
                    Some(Ok(Response::Query(QueryOutput::Messages(views)))) => {
                        let as_read = Response::Command(CommandOutput::Messages(views.clone()));
                        let outcome = Some(Ok(&as_read));
                        read_op(user, *limit, outcome, &message_of_body, &senders, &mut ids)
                    }
                    Some(Ok(_)) => InboxOp::Impossible,
                    other => read_op(user, *limit, other, &message_of_body, &senders, &mut ids),
                };
                match op {
                    InboxOp::Read { limit, expect } => InboxOp::Peek { limit, expect },
                    other => other,
                }
            }
            OpKind::Delete { .. } => {
                deletes.push(model_ops.len());
                InboxOp::Impossible
            }
            OpKind::List { .. } | OpKind::OpenSession { .. } => InboxOp::Impossible,
        };
        model_ops.push(op);
    }
    // Ids are complete only now that every read has revealed what it saw.
    let mut message_of_id: BTreeMap<MessageId, u32> = BTreeMap::new();
    for (message, id) in ids.iter().enumerate() {
        if let Some(id) = id {
            message_of_id.entry(*id).or_insert(message as u32);
        }
    }
    for op in &mut model_ops {
        if let InboxOp::Send { message, id, .. } = op {
            *id = ids[*message as usize];
        }
    }
    let mut acknowledged_ids: Vec<MessageId> = model_ops
        .iter()
        .filter_map(|op| match op {
            InboxOp::Send {
                id: Some(id),
                expect: Expect::Known(SendResult::Sent),
                ..
            } => Some(*id),
            _ => None,
        })
        .collect();
    acknowledged_ids.sort_unstable();
    for op in &mut model_ops {
        if let InboxOp::Send {
            id: Some(id),
            acknowledged_before,
            ..
        } = op
        {
            *acknowledged_before = acknowledged_ids.partition_point(|other| other < id) as u32;
        }
    }
    for position in deletes {
        let record = &all[ops[position]];
        if let OpKind::Delete { ids, .. } = &record.kind {
            model_ops[position] = delete_op(ids, known_outcome(record), &message_of_id);
        }
    }
    InboxModel::new(model_ops, senders.len())
}

fn read_op(
    user: &str,
    limit: u32,
    outcome: Option<Result<&Response, &AppError>>,
    message_of_body: &BTreeMap<&str, u32>,
    senders: &[&str],
    ids: &mut [Option<MessageId>],
) -> InboxOp {
    let views = match outcome {
        None => {
            return InboxOp::Read {
                limit,
                expect: Expect::Unknown,
            }
        }
        Some(Err(AppError::Unauthenticated)) => {
            return InboxOp::Read {
                limit,
                expect: Expect::Known(ReadResult::Unauthenticated),
            }
        }
        Some(Ok(Response::Command(CommandOutput::Messages(views)))) => views,
        Some(_) => return InboxOp::Impossible,
    };
    let mut messages = Vec::with_capacity(views.len());
    for view in views {
        let Some(&message) = message_of_body.get(view.body.as_str()) else {
            return InboxOp::Impossible;
        };
        if view.recipient != user || view.sender != senders[message as usize] {
            return InboxOp::Impossible;
        }
        match &mut ids[message as usize] {
            Some(id) if *id != view.id => return InboxOp::Impossible,
            id => *id = Some(view.id),
        }
        messages.push(message);
    }
    InboxOp::Read {
        limit,
        expect: Expect::Known(ReadResult::Messages(messages)),
    }
}

fn delete_op(
    ids: &[MessageId],
    outcome: Option<Result<&Response, &AppError>>,
    message_of_id: &BTreeMap<MessageId, u32>,
) -> InboxOp {
    let expect = match outcome {
        None => Expect::Unknown,
        Some(Ok(Response::Command(CommandOutput::Deleted { count }))) => {
            Expect::Known(DeleteResult::Deleted { count: *count })
        }
        Some(Err(AppError::MessageNotFound(id))) => {
            Expect::Known(DeleteResult::NotFound(MessageId(*id)))
        }
        Some(Err(AppError::Unauthenticated)) => Expect::Known(DeleteResult::Unauthenticated),
        Some(_) => return InboxOp::Impossible,
    };
    InboxOp::Delete {
        ids: ids.to_vec(),
        targets: ids
            .iter()
            .map(|id| message_of_id.get(id).copied())
            .collect(),
        expect,
    }
}
