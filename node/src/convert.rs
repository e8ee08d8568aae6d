//! Conversions between core's values and the wire types: the only place that knows both.

use crate::auth::AuthError;
use crate::hashing::{HashError, PoolError};
use crate::limiter::Limited;
use chat_core::app::{AppError, MessageView};
use chat_core::entry::SessionRef;
use chat_core::membership::MembershipError;
use chat_core::{ClientError, NodeId, Role, SessionId};
use chat_proto::chat::{ChatMessage, Session};
use chat_proto::metadata::{LEADER_ADDR, LEADER_ID};
use std::collections::BTreeMap;
use tonic::{Code, Status};

pub fn message(view: &MessageView) -> ChatMessage {
    ChatMessage {
        id: view.id.0,
        sender: view.sender.clone(),
        sender_deleted: view.sender_deleted,
        recipient: view.recipient.clone(),
        body: view.body.clone(),
        timestamp_us: view.timestamp.as_micros(),
        read: view.read,
    }
}

pub fn session(session: Option<Session>) -> Result<SessionRef, Status> {
    let session = session.ok_or_else(|| {
        Status::invalid_argument("missing session: call OpenSession and send its id")
    })?;
    if session.id == 0 {
        return Err(Status::invalid_argument(
            "missing session id: call OpenSession and send its id",
        ));
    }
    if session.seq == 0 {
        return Err(Status::invalid_argument("session seq starts at 1"));
    }
    Ok(SessionRef {
        id: SessionId(session.id),
        seq: session.seq,
    })
}

/// The 16 bytes a client picked for a registration.
pub fn registration(bytes: &[u8]) -> Result<u128, Status> {
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| {
        Status::invalid_argument(format!(
            "registration_id must be 16 random bytes, got {}",
            bytes.len()
        ))
    })?;
    Ok(u128::from_le_bytes(bytes))
}

pub fn role(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

pub fn app_error(error: &AppError) -> Status {
    let code = match error {
        AppError::InvalidUsername { .. }
        | AppError::BodyTooLarge { .. }
        | AppError::EmptyBody
        | AppError::InvalidPasswordHash
        | AppError::InvalidPattern(_)
        | AppError::OutOfRange { .. } => Code::InvalidArgument,
        AppError::UserExists(_) => Code::AlreadyExists,
        AppError::UnknownUser(_) | AppError::MessageNotFound(_) => Code::NotFound,
        AppError::Unauthenticated => Code::Unauthenticated,
        AppError::InboxFull(_) | AppError::TooManyUsers | AppError::TooManySessions => {
            Code::ResourceExhausted
        }
    };
    Status::new(code, error.to_string())
}

pub fn auth_error(error: &AuthError) -> Status {
    match error {
        AuthError::BadPassword => Status::invalid_argument(error.to_string()),
        AuthError::Hashing(_) => Status::internal(error.to_string()),
        AuthError::WrongPassword | AuthError::InvalidToken | AuthError::Expired => {
            Status::unauthenticated(error.to_string())
        }
    }
}

/// A refusal from consensus. "Not the leader" carries the leader's address, when known,
/// in the metadata so that clients can go straight there.
pub fn client_error(error: &ClientError, members: &BTreeMap<u64, String>) -> Status {
    match error {
        ClientError::App(app) => app_error(app),
        ClientError::NotLeader { leader_hint } => {
            let known = leader_hint.is_some_and(|id| members.contains_key(&id.0));
            let message = if known {
                "not the leader"
            } else {
                "not the leader; no leader is known yet, retry shortly"
            };
            unavailable_with_leader(message, *leader_hint, members)
        }
        ClientError::Busy { .. } => Status::unavailable(error.to_string()),
        ClientError::SessionExpired | ClientError::StaleRequest { .. } => {
            Status::failed_precondition(error.to_string())
        }
        ClientError::SessionNotOwned => Status::permission_denied(error.to_string()),
        ClientError::RetryMismatch { .. } | ClientError::InvalidRequest(_) => {
            Status::invalid_argument(error.to_string())
        }
        ClientError::Membership(membership) => membership_error(membership),
    }
}

/// A refused membership change: one that may succeed on a retry (the leader is settling,
/// another change or a transfer is under way) is UNAVAILABLE; one the cluster's state
/// refuses is FAILED_PRECONDITION; a malformed one INVALID_ARGUMENT.
pub fn membership_error(error: &MembershipError) -> Status {
    match error {
        MembershipError::LeaderNotReady
        | MembershipError::ChangeInProgress { .. }
        | MembershipError::TransferInProgress(_) => Status::unavailable(error.to_string()),
        MembershipError::InvalidAddress { .. } | MembershipError::ReservedId => {
            Status::invalid_argument(error.to_string())
        }
        MembershipError::AlreadyMember(_)
        | MembershipError::IdRemoved(_)
        | MembershipError::DuplicateAddress { .. }
        | MembershipError::UnknownMember(_)
        | MembershipError::AlreadyVoter(_)
        | MembershipError::LastVoter(_)
        | MembershipError::TooManyMembers { .. }
        | MembershipError::TooManyRemoved { .. }
        | MembershipError::LearnerLagging { .. }
        | MembershipError::BelowQuorum { .. } => Status::failed_precondition(error.to_string()),
    }
}

/// UNAVAILABLE with `reason`, naming the leader (when known) in the message and in the
/// `x-chat-leader-*` metadata, so that a client retries there instead of anywhere.
pub fn unavailable_with_leader(
    reason: &str,
    leader: Option<NodeId>,
    members: &BTreeMap<u64, String>,
) -> Status {
    let address = leader.and_then(|id| members.get(&id.0).map(|a| (id, a)));
    let mut status = Status::unavailable(match address {
        Some((id, address)) => format!("{reason}; the leader is {id} at {address}"),
        None => reason.to_owned(),
    });
    if let Some((id, address)) = address {
        if let (Ok(id), Ok(address)) = (id.0.to_string().parse(), address.parse()) {
            status.metadata_mut().insert(LEADER_ID, id);
            status.metadata_mut().insert(LEADER_ADDR, address);
        }
    }
    status
}

/// A refusal from the password pool: full is RESOURCE_EXHAUSTED (the client should slow
/// down, not retry at once elsewhere), stopped is UNAVAILABLE (retry on another node).
pub fn hash_error(error: &HashError) -> Status {
    match error {
        HashError::Auth(auth) => auth_error(auth),
        HashError::Pool(PoolError::Busy { .. }) => Status::resource_exhausted(error.to_string()),
        HashError::Pool(PoolError::Stopped) => Status::unavailable(error.to_string()),
    }
}

/// Too many failed logins: RESOURCE_EXHAUSTED with the wait in the message, so that
/// clients (which retry UNAVAILABLE by themselves) do not hammer on.
pub fn login_limited(error: &Limited) -> Status {
    Status::resource_exhausted(error.to_string())
}
