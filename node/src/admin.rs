//! The operator API (`chat.admin.v1.Admin`): membership, leadership transfer, backup.
//! Every call must carry the admin proof (an HMAC under the cluster secret), checked by
//! [`AdminAuth`] from the headers before the body is read. The decisions are core's:
//! a change is a `ClientRequest::ChangeMembership`, a transfer
//! `Replica::transfer_leadership`, a backup `Replica::export_image` after a
//! linearizable read (so the copy holds every write acknowledged before the call).

use crate::auth::Secret;
use crate::convert;
use crate::driver::{Input, SubmitError};
use crate::service::Shared;
use chat_core::app::Query;
use chat_core::membership::{MemberRole, Membership, MembershipChange};
use chat_core::{ClientError, NodeId, ReadConsistency, Response as CoreResponse, TransferError};
use chat_proto::admin::admin_server::{Admin, AdminServer};
use chat_proto::admin::change_membership_request::Kind;
use chat_proto::admin::*;
use chat_proto::metadata::ADMIN_PROOF;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::{Request, Response, Status};

/// A backup answer holds the whole encoded state: this bounds it (and what chatctl
/// accepts). A state beyond it cannot be saved this way.
pub const SNAPSHOT_EXPORT_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// How long a transfer waits for another node to lead before it answers
/// DEADLINE_EXCEEDED. Core gives up on a transfer after one minimum election timeout;
/// this leaves the new leader time to be heard of.
pub const TRANSFER_WAIT: Duration = Duration::from_secs(3);

pub struct AdminService {
    pub shared: Arc<Shared>,
}

/// The admin API as served: the proof checked on the headers, then [`AdminService`].
pub fn server(
    service: AdminService,
    secret: Secret,
) -> InterceptedService<AdminServer<AdminService>, AdminAuth> {
    let server = AdminServer::new(service).max_encoding_message_size(SNAPSHOT_EXPORT_BYTES_MAX);
    InterceptedService::new(server, AdminAuth { secret })
}

#[derive(Clone)]
pub struct AdminAuth {
    secret: Secret,
}

impl Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let proof = request
            .metadata()
            .get(ADMIN_PROOF)
            .and_then(|v| v.to_str().ok());
        match proof {
            Some(proof) if self.secret.verify_admin_proof(proof) => Ok(request),
            _ => Err(Status::permission_denied(
                "admin call without a valid admin proof (chatctl needs --secret-file, the cluster secret)",
            )),
        }
    }
}

fn role_name(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Voter => "voter",
        MemberRole::Learner => "learner",
    }
}

impl AdminService {
    fn members_response(&self, membership: &Membership) -> MembersResponse {
        let book = &self.shared.addresses;
        MembersResponse {
            members: membership
                .members()
                .iter()
                .map(|(&id, member)| MemberInfo {
                    id: id.0,
                    address: book.resolve(id).unwrap_or_default(),
                    role: role_name(member.role).to_owned(),
                })
                .collect(),
            removed: membership.removed().iter().map(|id| id.0).collect(),
            leader_id: self.shared.core.leadership().leader_id.map_or(0, |id| id.0),
            id: book.id().0,
        }
    }

    fn not_leader(&self, leader_hint: Option<NodeId>) -> Status {
        convert::client_error(
            &ClientError::NotLeader { leader_hint },
            &self.shared.addresses.map(),
        )
    }

    fn transfer_error(&self, error: &TransferError) -> Status {
        match error {
            TransferError::NotLeader { leader_hint } => self.not_leader(*leader_hint),
            TransferError::NotAVoter(_)
            | TransferError::AlreadyLeader(_)
            | TransferError::NoOtherVoter => Status::failed_precondition(error.to_string()),
        }
    }

    async fn ask<T>(&self, input: impl FnOnce(oneshot::Sender<T>) -> Input) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .core
            .submit(input(reply))
            .map_err(|e: SubmitError| Status::unavailable(e.to_string()))?;
        answer
            .await
            .map_err(|_| Status::unavailable("node is shutting down; retry elsewhere"))
    }
}

/// The change a request asks for, or INVALID_ARGUMENT.
pub fn change_of(request: &ChangeMembershipRequest) -> Result<MembershipChange, Status> {
    let id = NodeId(request.id);
    match Kind::try_from(request.kind) {
        Ok(Kind::AddLearner) => Ok(MembershipChange::AddLearner {
            id,
            address: request.address.clone(),
        }),
        Ok(Kind::Promote) => Ok(MembershipChange::Promote { id }),
        Ok(Kind::Remove) => Ok(MembershipChange::Remove { id }),
        Ok(Kind::Unspecified) | Err(_) => Err(Status::invalid_argument(
            "membership change kind must be add-learner, promote or remove",
        )),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let membership = self.shared.addresses.membership();
        Ok(Response::new(self.members_response(&membership)))
    }

    async fn change_membership(
        &self,
        request: Request<ChangeMembershipRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let change = change_of(request.get_ref())?;
        // Founders' addresses are not in the log, so core cannot see that a new node's
        // address is one of theirs; the address book can.
        if let MembershipChange::AddLearner { id, address } = &change {
            let taken = self
                .shared
                .addresses
                .members()
                .into_iter()
                .find(|(other, _, known)| known == address && other != id);
            if let Some((other, _, _)) = taken {
                let error = chat_core::membership::MembershipError::DuplicateAddress {
                    address: address.clone(),
                    id: other,
                };
                return Err(convert::membership_error(&error));
            }
        }
        tracing::info!(?change, "membership change asked");
        match self
            .shared
            .submit(chat_core::ClientRequest::ChangeMembership(change))
            .await?
        {
            CoreResponse::Membership(membership) => {
                Ok(Response::new(self.members_response(&membership)))
            }
            other => {
                tracing::error!(
                    ?other,
                    "core answered a membership change with another kind"
                );
                Err(Status::internal(
                    "internal error: unexpected answer from core",
                ))
            }
        }
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let target = Some(NodeId(request.get_ref().target)).filter(|id| id.0 != 0);
        let started = Instant::now();
        let chosen = self
            .ask(|reply| Input::TransferLeadership { target, reply })
            .await?
            .map_err(|e| self.transfer_error(&e))?;
        let me = self.shared.addresses.id();
        let mut view = self.shared.core.view();
        let waited = tokio::time::timeout(TRANSFER_WAIT, async {
            view.wait_for(|v| v.leader_id.is_some_and(|leader| leader != me))
                .await
                .map(|v| v.leader_id)
        })
        .await;
        let leader = match waited {
            Ok(Ok(leader)) => leader.unwrap_or(chosen),
            Ok(Err(_)) => return Err(Status::unavailable("node is shutting down")),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "node {chosen} did not take over within {} ms; node {me} leads again",
                    TRANSFER_WAIT.as_millis()
                )))
            }
        };
        Ok(Response::new(TransferLeaderResponse {
            leader_id: leader.0,
            elapsed_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
        }))
    }

    async fn save_snapshot(
        &self,
        _request: Request<SaveSnapshotRequest>,
    ) -> Result<Response<SaveSnapshotResponse>, Status> {
        // A linearizable read first: only the leader answers, and only once it has
        // applied every write committed before the call, so the copy holds them all.
        // What the read finds does not matter (an unknown user is as good).
        let probe = Query::Credentials {
            user: "backup-probe".to_owned(),
        };
        match self.shared.read(probe, ReadConsistency::Linearizable).await {
            Ok(_) => {}
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound | tonic::Code::InvalidArgument
                ) => {}
            Err(status) => return Err(status),
        }
        let exported = self.ask(Input::ExportSnapshot).await?;
        let Some(image) = exported else {
            return Err(Status::failed_precondition(
                "nothing applied yet: nothing to back up",
            ));
        };
        // Encoding is linear in the state: on a blocking thread, never the core's.
        let (snapshot, state_hash) =
            tokio::task::spawn_blocking(move || (image.encode(), image.state.state_hash()))
                .await
                .map_err(|e| Status::internal(format!("encoding the backup failed: {e}")))?;
        if snapshot.data.len() > SNAPSHOT_EXPORT_BYTES_MAX {
            return Err(Status::resource_exhausted(format!(
                "the state is {} bytes, above the {} a backup call carries",
                snapshot.data.len(),
                SNAPSHOT_EXPORT_BYTES_MAX
            )));
        }
        tracing::info!(
            last_index = snapshot.meta.last_index.0,
            bytes = snapshot.data.len(),
            "backup snapshot exported"
        );
        Ok(Response::new(SaveSnapshotResponse {
            last_index: snapshot.meta.last_index.0,
            last_term: snapshot.meta.last_term.0,
            state_hash,
            // Just encoded: the only holder of the bytes, so this moves them.
            data: Arc::try_unwrap(snapshot.data).unwrap_or_else(|shared| (*shared).clone()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::membership::MembershipError;

    /// Every refusal of a membership change as the operator sees it: its gRPC code and
    /// its one line. `chatctl member add` waits on the `LearnerLagging` text.
    #[test]
    fn membership_errors_are_one_line_each() {
        let errors = [
            MembershipError::AlreadyMember(NodeId(2)),
            MembershipError::IdRemoved(NodeId(3)),
            MembershipError::DuplicateAddress {
                address: "10.0.0.2:7001".into(),
                id: NodeId(2),
            },
            MembershipError::UnknownMember(NodeId(42)),
            MembershipError::AlreadyVoter(NodeId(2)),
            MembershipError::LastVoter(NodeId(1)),
            MembershipError::TooManyMembers { max: 16 },
            MembershipError::ReservedId,
            MembershipError::InvalidAddress {
                address: "no port".into(),
                reason: "only printable ASCII without spaces".into(),
            },
            MembershipError::TooManyRemoved { max: 4096 },
            MembershipError::LearnerLagging {
                id: NodeId(6),
                behind_entries: 5000,
                bound: 1024,
            },
            MembershipError::BelowQuorum {
                id: NodeId(3),
                reachable: 1,
                voters: 2,
                quorum: 2,
            },
            MembershipError::ChangeInProgress { index: 812 },
            MembershipError::LeaderNotReady,
            MembershipError::TransferInProgress(NodeId(4)),
        ];
        let lines: Vec<String> = errors
            .iter()
            .map(|error| {
                let status = convert::membership_error(error);
                assert!(!status.message().contains('\n'), "one line");
                format!("{:?}: {}", status.code(), status.message())
            })
            .collect();
        insta::assert_snapshot!(lines.join("\n"));
        let lagging = convert::membership_error(&errors[10]);
        assert!(lagging.message().contains("behind the leader"));
    }

    #[test]
    fn the_admin_proof_is_required() {
        let secret = Secret::new(b"0123456789abcdef0123".to_vec()).expect("long enough");
        let mut auth = AdminAuth {
            secret: secret.clone(),
        };
        let refused = auth.call(Request::new(())).expect_err("no proof");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let mut request = Request::new(());
        let proof = secret.admin_proof().parse().expect("hex is a header value");
        request.metadata_mut().insert(ADMIN_PROOF, proof);
        assert!(auth.call(request).is_ok());
        let other = Secret::new(b"another-secret-of-20b".to_vec()).expect("long enough");
        assert!(!other.verify_admin_proof(&secret.admin_proof()));
        assert!(
            !secret.verify_admin_proof(&secret.peer_proof(0)),
            "domains differ"
        );
    }
}
