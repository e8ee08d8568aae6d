//! `chatctl`'s operator commands: `member ...`, `transfer-leader`, `snapshot save`. They
//! call the admin API with the admin proof, which needs the cluster secret
//! (`--secret-file`). Like every chatctl command: one line on success, one line on
//! failure (the node's own explanation), nothing a terminal would obey.

use crate::admin::SNAPSHOT_EXPORT_BYTES_MAX;
use crate::auth::Secret;
use crate::backup::Backup;
use crate::client::ClusterClient;
use chat_proto::admin::admin_client::AdminClient;
use chat_proto::admin::change_membership_request::Kind;
use chat_proto::admin::*;
use chat_proto::metadata::ADMIN_PROOF;
use clap::Subcommand;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// How long `member add` (without `--learner`) waits for the new node to catch up
/// before it gives up on promoting it (it stays a learner; `member promote` later).
pub const CATCH_UP_WAIT_DEFAULT_SECS: u64 = 120;
const CATCH_UP_POLL: Duration = Duration::from_millis(250);
/// How long `snapshot save` waits for the leader's copy of its state.
pub const SNAPSHOT_SAVE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Lists the members in force (as the leader sees them): id, address, role.
    List,
    /// Adds a node (new id, started with `chatnode --join ...` and an empty data dir).
    /// It joins as a learner, catches up, and is then promoted to voter; with
    /// `--learner` it stays a learner (promote it later with `member promote`).
    Add {
        #[arg(long)]
        id: u64,
        /// Where the other nodes and clients reach it (its --advertise).
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// Add as a learner only: it receives the log but does not vote.
        #[arg(long)]
        learner: bool,
        /// How long to wait for the new node to catch up before promoting it.
        #[arg(long, value_name = "SECS", default_value_t = CATCH_UP_WAIT_DEFAULT_SECS)]
        catch_up_secs: u64,
    },
    /// Makes a learner a voter. Refused while it lags the leader by more than the
    /// catch-up bound (1,024 entries).
    Promote { id: u64 },
    /// Removes a member for good (its id is never reused). Refused when the voters left
    /// and reachable would not be a quorum. Removing the leader hands leadership over.
    Remove { id: u64 },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Writes a consistent, checksummed copy of the leader's state to FILE (restore it
    /// with `chatnode restore --from FILE`).
    Save { file: PathBuf },
}

/// Reads the cluster secret as the node does (whitespace around it ignored).
pub fn admin_proof(secret_file: Option<&Path>) -> Result<String, String> {
    let path = secret_file.ok_or(
        "operator commands need the cluster secret: --secret-file FILE (or CHAT_SECRET_FILE)",
    )?;
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    let secret = Secret::new(bytes.trim_ascii().to_vec())?;
    Ok(secret.admin_proof())
}

fn request<T>(message: T, proof: &str) -> Request<T> {
    let mut request = Request::new(message);
    // The proof is hex: always a valid header value.
    if let Ok(value) = proof.parse() {
        request.metadata_mut().insert(ADMIN_PROOF, value);
    }
    request
}

fn admin(channel: Channel) -> AdminClient<Channel> {
    AdminClient::new(channel).max_decoding_message_size(SNAPSHOT_EXPORT_BYTES_MAX)
}

fn reason(status: &Status) -> String {
    let message = status.message();
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        message.to_owned()
    }
}

/// What the admin calls answer, printed by the caller.
pub struct Outcome {
    pub json: serde_json::Value,
    pub text: Vec<String>,
}

async fn change(
    client: &mut ClusterClient,
    proof: &str,
    kind: Kind,
    id: u64,
    address: &str,
) -> Result<MembersResponse, Status> {
    let message = ChangeMembershipRequest {
        kind: kind as i32,
        id,
        address: address.to_owned(),
    };
    client
        .call_on(|channel| {
            let request = request(message.clone(), proof);
            async move { admin(channel).change_membership(request).await }
        })
        .await
}

async fn members(client: &mut ClusterClient, proof: &str) -> Result<MembersResponse, Status> {
    // Ask the leader (discovered first), whose configuration is the newest.
    let _ = client.discover().await;
    client
        .call_on(|channel| {
            let request = request(MembersRequest {}, proof);
            async move { admin(channel).members(request).await }
        })
        .await
}

fn members_outcome(response: &MembersResponse, first: Option<String>) -> Outcome {
    let rows: Vec<serde_json::Value> = response
        .members
        .iter()
        .map(|m| json!({ "id": m.id, "address": m.address, "role": m.role }))
        .collect();
    let mut text: Vec<String> = first.into_iter().collect();
    for member in &response.members {
        let leader = if member.id == response.leader_id {
            " (leader)"
        } else {
            ""
        };
        let address = if member.address.is_empty() {
            "(address unknown)"
        } else {
            &member.address
        };
        text.push(format!("n{} {address} {}{leader}", member.id, member.role));
    }
    if !response.removed.is_empty() {
        let removed: Vec<String> = response.removed.iter().map(|id| format!("n{id}")).collect();
        text.push(format!("removed for good: {}", removed.join(" ")));
    }
    Outcome {
        json: json!({ "members": rows, "removed": response.removed, "leader": response.leader_id }),
        text,
    }
}

pub async fn member(
    client: &mut ClusterClient,
    proof: &str,
    command: MemberCommand,
) -> Result<Outcome, String> {
    let fail = |status: Status| reason(&status);
    match command {
        MemberCommand::List => {
            let response = members(client, proof).await.map_err(fail)?;
            Ok(members_outcome(&response, None))
        }
        MemberCommand::Add {
            id,
            addr,
            learner,
            catch_up_secs,
        } => {
            let added = match change(client, proof, Kind::AddLearner, id, &addr).await {
                Ok(added) => added,
                // Already there at this address: an earlier run (or a retry whose first
                // answer was lost) added it. Go on from there, so that running the
                // command again completes it.
                Err(status) if status.code() == Code::FailedPrecondition => {
                    let current = members(client, proof).await.map_err(fail)?;
                    let same = current
                        .members
                        .iter()
                        .any(|m| m.id == id && m.address == addr);
                    if !same {
                        return Err(reason(&status));
                    }
                    current
                }
                Err(status) => return Err(reason(&status)),
            };
            if !learner
                && added
                    .members
                    .iter()
                    .any(|m| m.id == id && m.role == "voter")
            {
                let line = format!("n{id} at {addr} is a voter already");
                return Ok(members_outcome(&added, Some(line)));
            }
            if learner {
                let line = format!("added n{id} at {addr} as a learner");
                return Ok(members_outcome(&added, Some(line)));
            }
            let started = Instant::now();
            let wait = Duration::from_secs(catch_up_secs);
            wait_for_catch_up(client, id, &addr, wait).await?;
            let promoted = promote_when_caught_up(client, proof, id, wait).await?;
            let line = format!(
                "added n{id} at {addr}; it caught up and is a voter ({} ms)",
                started.elapsed().as_millis()
            );
            Ok(members_outcome(&promoted, Some(line)))
        }
        MemberCommand::Promote { id } => {
            let response = change(client, proof, Kind::Promote, id, "")
                .await
                .map_err(fail)?;
            Ok(members_outcome(
                &response,
                Some(format!("promoted n{id} to voter")),
            ))
        }
        MemberCommand::Remove { id } => {
            let response = change(client, proof, Kind::Remove, id, "")
                .await
                .map_err(fail)?;
            Ok(members_outcome(&response, Some(format!("removed n{id}"))))
        }
    }
}

/// Waits until the new node at `address` has applied what the leader had committed
/// when it was added, so that it is a useful voter from the moment it is promoted.
async fn wait_for_catch_up(
    client: &mut ClusterClient,
    id: u64,
    address: &str,
    wait: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    let target = client
        .discover()
        .await
        .map_err(|s| reason(&s))?
        .commit_index;
    loop {
        let applied = client
            .status_of(address)
            .await
            .map(|s| s.last_applied)
            .unwrap_or(0);
        if applied >= target {
            return Ok(());
        }
        if started.elapsed() >= wait {
            return Err(format!(
                "n{id} was added as a learner but has applied {applied} of {target} entries after {} s; \
                 it stays a learner (is it running with --join? promote it later with `member promote {id}`)",
                wait.as_secs()
            ));
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
}

/// Promotes learner `id` as soon as the leader accepts (it refuses while the learner
/// lags, FAILED_PRECONDITION "... behind the leader ..."), for at most `wait`.
async fn promote_when_caught_up(
    client: &mut ClusterClient,
    proof: &str,
    id: u64,
    wait: Duration,
) -> Result<MembersResponse, String> {
    let started = Instant::now();
    loop {
        match change(client, proof, Kind::Promote, id, "").await {
            Ok(response) => return Ok(response),
            // The lag refusal's text is core's `MembershipError::LearnerLagging`
            // (pinned by the insta snapshot of membership errors).
            Err(status)
                if status.code() == Code::FailedPrecondition
                    && status.message().contains("behind the leader")
                    && started.elapsed() < wait =>
            {
                tokio::time::sleep(CATCH_UP_POLL).await;
            }
            Err(status) => {
                return Err(format!(
                    "n{id} was added as a learner but not promoted: {}",
                    reason(&status)
                ))
            }
        }
    }
}

pub async fn transfer_leader(
    client: &mut ClusterClient,
    proof: &str,
    target: Option<u64>,
) -> Result<Outcome, String> {
    let _ = client.discover().await;
    let message = TransferLeaderRequest {
        target: target.unwrap_or(0),
    };
    let done = client
        .call_on(|channel| {
            let request = request(message, proof);
            async move { admin(channel).transfer_leader(request).await }
        })
        .await
        .map_err(|s| reason(&s))?;
    Ok(Outcome {
        json: json!({ "leader": done.leader_id, "elapsed_ms": done.elapsed_ms }),
        text: vec![format!(
            "n{} leads now ({} ms)",
            done.leader_id, done.elapsed_ms
        )],
    })
}

pub async fn snapshot(
    client: &mut ClusterClient,
    proof: &str,
    command: SnapshotCommand,
) -> Result<Outcome, String> {
    let SnapshotCommand::Save { file } = command;
    let _ = client.discover().await;
    let done = client
        .call_on_long(|channel| {
            let mut request = request(SaveSnapshotRequest {}, proof);
            request.set_timeout(SNAPSHOT_SAVE_TIMEOUT);
            async move { admin(channel).save_snapshot(request).await }
        })
        .await
        .map_err(|s| reason(&s))?;
    let backup = Backup {
        last_index: done.last_index,
        last_term: done.last_term,
        state_hash: done.state_hash,
        state_hash_comparable: true,
        data: done.data,
    };
    backup.write_to(&file).map_err(|e| format!("{e:#}"))?;
    Ok(Outcome {
        json: json!({
            "file": file.display().to_string(), "last_index": backup.last_index,
            "last_term": backup.last_term, "state_hash": format!("{:016x}", backup.state_hash),
            "bytes": backup.data.len(),
        }),
        text: vec![format!(
            "saved the state through index {} (term {}, state hash {:016x}, {} bytes) to {}",
            backup.last_index,
            backup.last_term,
            backup.state_hash,
            backup.data.len(),
            file.display()
        )],
    })
}
