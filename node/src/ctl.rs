//! `chatctl`, the command-line client. Talks to any node, follows the leader, retries
//! with an exactly-once session. Exit 0 on success; otherwise one line on stderr and
//! exit 1 (2 for bad usage). This is its `main`; the binary is a one-line wrapper, so
//! that the cluster tests can build their own copy.

use crate::client::ClusterClient;
use crate::ctl_admin::{self, MemberCommand, SnapshotCommand};
use crate::terminal;
use chat_proto::chat::*;
use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use tonic::transport::{Certificate, ClientTlsConfig};
use tonic::Status;

#[derive(Parser, Debug)]
#[command(
    name = "chatctl",
    bin_name = "chatctl",
    version,
    about = "Client of the replicated chat cluster",
    after_help = "The password comes from CHAT_PASSWORD or a prompt, never from the command \
                  line; a token in CHAT_TOKEN (from `login`) may stand in for it. Operator \
                  commands (member, transfer-leader, snapshot) need the cluster secret \
                  (--secret-file); see OPERATIONS.md for the runbooks."
)]
struct Cli {
    /// Any node(s) of the cluster: ADDR[,ADDR...]; the rest is discovered.
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',', required = true)]
    cluster: Vec<String>,
    /// Print one JSON document per result (for `listen`, one per line).
    #[arg(long)]
    json: bool,
    /// PEM CA certificate: talk TLS and verify the nodes with it.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The cluster secret, for operator commands (member, transfer-leader, snapshot).
    /// Default: $CHAT_SECRET_FILE.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Creates an account.
    Register {
        #[arg(long)]
        user: String,
    },
    /// Logs in and prints a token (usable as CHAT_TOKEN).
    Login {
        #[arg(long)]
        user: String,
    },
    /// Ends every session of the account: all its tokens stop working.
    Logout {
        #[arg(long)]
        user: String,
    },
    /// Sends TEXT to another user.
    Send {
        #[arg(long)]
        user: String,
        #[arg(long)]
        to: String,
        text: String,
    },
    /// Reads unread messages, oldest first, and marks them read.
    Read {
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Lists accounts matching a glob pattern (`*`, `?`); only for a logged-in user.
    List {
        /// Who asks (the password or CHAT_TOKEN proves it).
        #[arg(long)]
        user: String,
        #[arg(default_value = "*")]
        pattern: String,
        #[arg(long, default_value_t = 0)]
        page: u32,
    },
    /// Deletes messages from your inbox, by id.
    DeleteMessages {
        #[arg(long)]
        user: String,
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Deletes your account and inbox.
    DeleteAccount {
        #[arg(long)]
        user: String,
    },
    /// Streams messages sent to you, live, until stopped.
    Listen {
        #[arg(long)]
        user: String,
        /// Also show stored messages with an id above this one.
        #[arg(long, value_name = "ID")]
        after: Option<u64>,
    },
    /// Shows every member: role, term, leader, commit index.
    Status,
    /// Membership: list, add, promote, remove (operator; needs --secret-file).
    #[command(subcommand)]
    Member(MemberCommand),
    /// Hands leadership to node N, or to the most up-to-date voter (operator; needs
    /// --secret-file). Writes pause for the handover only (well under an election
    /// timeout).
    TransferLeader {
        /// The voter to lead next (default: the most up-to-date one).
        target: Option<u64>,
    },
    /// Backups (operator; needs --secret-file).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the async runtime: {error}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    // One line, whatever the server said, and nothing a terminal would obey.
    eprintln!("chatctl: {}", terminal::escape(message));
    ExitCode::FAILURE
}

fn reason(status: Status) -> String {
    let message = status.message();
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        message.to_owned()
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let tls = match &cli.ca {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        }
        None => None,
    };
    let mut client = ClusterClient::new(cli.cluster.clone(), tls);
    let json = cli.json;
    let secret_file = cli
        .secret_file
        .clone()
        .or_else(|| std::env::var_os("CHAT_SECRET_FILE").map(PathBuf::from));
    match cli.command {
        Command::Register { user } => {
            let password = password()?;
            let request = RegisterRequest {
                registration_id: ClusterClient::registration_id(),
                user,
                password,
            };
            let done = client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.register(request).await }
                })
                .await
                .map_err(reason)?;
            print(
                json,
                json!({ "user": done.user }),
                &format!("registered {}", done.user),
            );
        }
        Command::Login { user } => {
            let done = login(&mut client, &user).await?;
            let value = json!({
                "token": done.token,
                "unread_count": done.unread_count,
                "expires_at_us": done.expires_at_us,
            });
            print(json, value, &done.token);
        }
        Command::Logout { user } => {
            let auth = credentials(&mut client, &user).await?;
            let request = LogoutRequest {
                session: Some(client.session(&auth).await.map_err(reason)?),
                auth: Some(auth),
            };
            client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.logout(request).await }
                })
                .await
                .map_err(reason)?;
            print(
                json,
                json!({ "logged_out": user }),
                &format!("logged out {user}"),
            );
        }
        Command::Send { user, to, text } => {
            let auth = credentials(&mut client, &user).await?;
            let request = SendRequest {
                session: Some(client.session(&auth).await.map_err(reason)?),
                auth: Some(auth),
                to,
                body: text,
            };
            let done = client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.send(request).await }
                })
                .await
                .map_err(reason)?;
            let value = json!({ "id": done.id, "timestamp_us": done.timestamp_us });
            print(json, value, &format!("sent message {}", done.id));
        }
        Command::Read { user, limit } => {
            let auth = credentials(&mut client, &user).await?;
            let request = ReadRequest {
                session: Some(client.session(&auth).await.map_err(reason)?),
                auth: Some(auth),
                limit,
            };
            let done = client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.read(request).await }
                })
                .await
                .map_err(reason)?;
            if json {
                let messages: Vec<_> = done.messages.iter().map(message_json).collect();
                say_json(&json!({ "messages": messages }));
            } else if done.messages.is_empty() {
                say("no unread messages");
            } else {
                for message in &done.messages {
                    say(&message_line(message));
                }
            }
        }
        Command::List {
            user,
            pattern,
            page,
        } => {
            let auth = credentials(&mut client, &user).await?;
            let request = ListRequest {
                pattern,
                page,
                auth: Some(auth),
            };
            let done = client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.list(request).await }
                })
                .await
                .map_err(reason)?;
            if json {
                let value = json!({
                    "names": done.names, "page": done.page,
                    "total": done.total, "has_more": done.has_more,
                });
                say_json(&value);
            } else {
                for name in &done.names {
                    say(name);
                }
                let more = if done.has_more {
                    "; more on the next page"
                } else {
                    ""
                };
                say(&format!(
                    "({} matching, page {}{more})",
                    done.total, done.page
                ));
            }
        }
        Command::DeleteMessages { user, ids } => {
            let auth = credentials(&mut client, &user).await?;
            let request = DeleteMessagesRequest {
                session: Some(client.session(&auth).await.map_err(reason)?),
                auth: Some(auth),
                ids,
            };
            let done = client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.delete_messages(request).await }
                })
                .await
                .map_err(reason)?;
            let text = format!("deleted {} messages", done.deleted);
            print(json, json!({ "deleted": done.deleted }), &text);
        }
        Command::DeleteAccount { user } => {
            let auth = credentials(&mut client, &user).await?;
            let request = DeleteAccountRequest {
                session: Some(client.session(&auth).await.map_err(reason)?),
                auth: Some(auth),
            };
            client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.delete_account(request).await }
                })
                .await
                .map_err(reason)?;
            let text = format!("deleted account {user}");
            print(json, json!({ "deleted_account": user }), &text);
        }
        Command::Listen { user, after } => {
            let auth = credentials(&mut client, &user).await?;
            // Learn every member so the stream can move when its node dies.
            client.discover().await.map_err(reason)?;
            // Without --after, only messages that arrive from now on: start after the
            // newest stored one.
            let after = after.unwrap_or(u64::MAX);
            let after = if after == u64::MAX {
                newest_id(&mut client, &auth).await?
            } else {
                after
            };
            client
                .listen(auth, after, |message| {
                    if json {
                        say_json(&message_json(&message));
                    } else {
                        say(&message_line(&message));
                    }
                    true
                })
                .await
                .map_err(reason)?;
        }
        Command::Status => status(&mut client, json).await?,
        Command::Member(command) => {
            let proof = ctl_admin::admin_proof(secret_file.as_deref())?;
            let outcome = ctl_admin::member(&mut client, &proof, command).await?;
            print_outcome(json, &outcome);
        }
        Command::TransferLeader { target } => {
            let proof = ctl_admin::admin_proof(secret_file.as_deref())?;
            let outcome = ctl_admin::transfer_leader(&mut client, &proof, target).await?;
            print_outcome(json, &outcome);
        }
        Command::Snapshot(command) => {
            let proof = ctl_admin::admin_proof(secret_file.as_deref())?;
            let outcome = ctl_admin::snapshot(&mut client, &proof, command).await?;
            print_outcome(json, &outcome);
        }
    }
    Ok(())
}

/// Every line chatctl prints goes through `say` or `say_json`: what the cluster sends
/// (bodies, names, addresses) was chosen by someone else, so it is escaped for the
/// terminal (see `terminal`).
fn say(text: &str) {
    println!("{}", terminal::escape(text));
}

fn print_outcome(json: bool, outcome: &ctl_admin::Outcome) {
    if json {
        say_json(&outcome.json);
    } else {
        for line in &outcome.text {
            say(line);
        }
    }
}

fn say_json(value: &serde_json::Value) {
    println!("{}", terminal::escape_json(&value.to_string()));
}

fn print(json: bool, value: serde_json::Value, text: &str) {
    if json {
        say_json(&value);
    } else {
        say(text);
    }
}

fn password() -> Result<String, String> {
    if let Ok(password) = std::env::var("CHAT_PASSWORD") {
        return Ok(password);
    }
    rpassword::prompt_password("password: ")
        .map_err(|e| format!("no password: set CHAT_PASSWORD or run in a terminal ({e})"))
}

async fn login(client: &mut ClusterClient, user: &str) -> Result<LoginResponse, String> {
    let request = LoginRequest {
        user: user.to_owned(),
        password: password()?,
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.login(request).await }
        })
        .await
        .map_err(reason)
}

/// CHAT_TOKEN if set, else a fresh login with the password.
async fn credentials(client: &mut ClusterClient, user: &str) -> Result<Credentials, String> {
    let token = match std::env::var("CHAT_TOKEN") {
        Ok(token) if !token.is_empty() => token,
        _ => login(client, user).await?.token,
    };
    Ok(Credentials {
        user: user.to_owned(),
        token,
    })
}

/// The id of the newest stored message, read without waiting: a live-only listener
/// starts after it.
async fn newest_id(client: &mut ClusterClient, auth: &Credentials) -> Result<u64, String> {
    let mut newest = 0;
    let probe_budget = std::mem::replace(&mut client.retry_budget, std::time::Duration::ZERO);
    let result = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        client.listen(auth.clone(), 0, |message| {
            newest = message.id;
            true
        }),
    )
    .await;
    client.retry_budget = probe_budget;
    match result {
        Ok(Err(status)) if !crate::client::retryable(&status) => Err(reason(status)),
        _ => Ok(newest),
    }
}

fn message_json(message: &ChatMessage) -> serde_json::Value {
    json!({
        "id": message.id,
        "from": message.sender,
        "sender_deleted": message.sender_deleted,
        "to": message.recipient,
        "body": message.body,
        "timestamp_us": message.timestamp_us,
        "read": message.read,
    })
}

fn message_line(message: &ChatMessage) -> String {
    let deleted = if message.sender_deleted {
        " (deleted)"
    } else {
        ""
    };
    format!(
        "#{} from {}{deleted}: {}",
        message.id, message.sender, message.body
    )
}

async fn status(client: &mut ClusterClient, json: bool) -> Result<(), String> {
    let first = client.discover().await.map_err(reason)?;
    let mut rows = Vec::new();
    for member in &first.members {
        let row = match client.status_of(&member.address).await {
            Ok(s) => json!({
                "id": s.id, "address": member.address, "role": s.role, "term": s.term,
                "leader": s.leader_id, "commit_index": s.commit_index,
                "last_applied": s.last_applied, "last_log_index": s.last_log_index,
                "state_hash": format!("{:016x}", s.state_hash),
            }),
            Err(status) => json!({
                "id": member.id, "address": member.address, "error": reason(status),
            }),
        };
        rows.push(row);
    }
    if json {
        say_json(&json!({ "nodes": rows }));
        return Ok(());
    }
    for row in &rows {
        if let Some(error) = row.get("error") {
            say(&format!(
                "n{} {} unreachable: {}",
                row["id"],
                row["address"].as_str().unwrap_or(""),
                error.as_str().unwrap_or("")
            ));
        } else {
            say(&format!(
                "n{} {} {} term {} leader n{} commit {} applied {} hash {}",
                row["id"],
                row["address"].as_str().unwrap_or(""),
                row["role"].as_str().unwrap_or(""),
                row["term"],
                row["leader"],
                row["commit_index"],
                row["last_applied"],
                row["state_hash"].as_str().unwrap_or(""),
            ));
        }
    }
    Ok(())
}
