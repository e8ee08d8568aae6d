//! The wire format of the chat cluster, generated from `proto/*.proto` at build time.
//!
//! - [`chat`]: the typed client API (`chat.v1.Chat`), including the server stream of live
//!   messages and the cluster status call.
//! - [`peer`]: the replica-to-replica API (`chat.peer.v1.Peer`), whose messages carry
//!   core's own bincode encoding in `bytes`: only the node knows how to decode them.
//!
//! - [`admin`]: the operator API (`chat.admin.v1.Admin`): membership, leadership
//!   transfer, snapshot export; every call carries the admin proof.
//! - [`codec`]: prost's codec, except that undecodable bytes are INVALID_ARGUMENT.
//!
//! Conversions between these types and core's live in `chat-node`, never in core.

#![allow(clippy::all, clippy::pedantic)]

pub mod codec;

pub mod chat {
    tonic::include_proto!("chat.v1");
}

pub mod peer {
    tonic::include_proto!("chat.peer.v1");
}

pub mod admin {
    tonic::include_proto!("chat.admin.v1");
}

/// Metadata keys shared by the server and its clients.
pub mod metadata {
    /// On UNAVAILABLE: the address of the replica believed to lead, when known.
    pub const LEADER_ADDR: &str = "x-chat-leader-addr";
    /// On UNAVAILABLE: the id of the replica believed to lead, when known.
    pub const LEADER_ID: &str = "x-chat-leader-id";
    /// On peer calls: the sender's node id.
    pub const PEER_ID: &str = "x-chat-peer-id";
    /// On peer calls: proof of cluster membership (an HMAC of the sender id with the
    /// cluster secret), so the secret itself never travels.
    pub const PEER_PROOF: &str = "x-chat-peer-proof";
    /// On peer calls: the address the sender is reached at (its `advertise`), so that a
    /// node can answer a member whose address is not in its log or configuration (a
    /// joining node answering the leader, founders whose addresses the log leaves out).
    pub const PEER_ADDR: &str = "x-chat-peer-addr";
    /// On peer calls from a node whose log holds its founding entry: that entry's voters
    /// ("1,2,3"), so that founders given different member lists refuse each other.
    pub const PEER_FOUNDERS: &str = "x-chat-founders";
    /// On admin calls: proof that the caller holds the cluster secret (an HMAC).
    pub const ADMIN_PROOF: &str = "x-chat-admin-proof";
}
