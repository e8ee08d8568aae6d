//! Live delivery, checked: some clients also listen to their own inbox, as `chatctl
//! listen` does against a real node (`node/src/listen.rs`). A listener is attached to one
//! node; it waits until that node has applied its cursor (and the account), catches up with
//! a local `MessagesAfter` read, then takes the node's deliveries as they are applied.
//! When its node crashes (or was never up) it moves to another node and resumes from its
//! cursor. Listening is pure observation: it sends nothing and draws no randomness, so
//! it changes no run.
//!
//! Checked (`delivery`): every message a listener receives has an id above the last one
//! it received (exactly once, in order), it was addressed to the listener's user, and at
//! the end every message in the user's final inbox was received (no gap across failovers).

use super::*;
use chat_core::app::{limits, MessageId, MessageView};

pub(super) struct Listener {
    /// The client whose inbox this is.
    pub client: usize,
    /// The node it listens on, and that node's incarnation when it attached.
    attached: Option<(NodeId, u64)>,
    /// Snapshots that node had installed when the listener caught up: an install
    /// replaces applied state without deliveries, so the listener must read it again.
    snapshots_installed: u64,
    caught_up: bool,
    /// The id of the last message received (the cursor a reconnect resumes from).
    last: MessageId,
    pub received: Vec<MessageId>,
    pub reconnects: u64,
}

impl Listener {
    pub fn new(client: usize) -> Listener {
        Listener {
            client,
            attached: None,
            snapshots_installed: 0,
            caught_up: false,
            last: MessageId(0),
            received: Vec::new(),
            reconnects: 0,
        }
    }
}

/// Which clients listen: every other one, so that listeners and plain clients mix.
pub(super) fn listening_clients(clients: usize) -> Vec<usize> {
    (0..clients).step_by(2).collect()
}

impl World<'_> {
    /// After node `id` handled an input: listeners whose node is gone move here, and any
    /// listener of this node that is not caught up tries to.
    pub(super) fn poll_listeners(&mut self, id: NodeId) {
        for index in 0..self.listeners.len() {
            let attached = self.listeners[index].attached;
            let alive = attached.is_some_and(|(node, incarnation)| {
                self.node(node).is_up() && self.node(node).incarnation == incarnation
            });
            if !alive {
                let listener = &mut self.listeners[index];
                listener.attached = Some((id, self.nodes[id.0 as usize - 1].incarnation));
                listener.caught_up = false;
                listener.reconnects += u64::from(attached.is_some());
            }
            let installed = self.nodes[id.0 as usize - 1]
                .replica
                .as_ref()
                .map_or(0, |r| r.metrics().snapshots_installed);
            let listener = &mut self.listeners[index];
            if listener.attached.map(|(node, _)| node) == Some(id)
                && listener.caught_up
                && installed != listener.snapshots_installed
            {
                listener.caught_up = false;
            }
            if self.listeners[index].attached.map(|(node, _)| node) == Some(id)
                && !self.listeners[index].caught_up
            {
                self.catch_up(index, id);
            }
        }
    }

    /// Reads what the listener missed from node `id`'s applied state, once that node has
    /// applied the listener's cursor and the account's creation.
    fn catch_up(&mut self, index: usize, id: NodeId) {
        let client = self.listeners[index].client;
        let Some(auth) = self.clients[client].auth.clone() else {
            return;
        };
        let Some(replica) = self.nodes[id.0 as usize - 1].replica.as_ref() else {
            return;
        };
        let cursor = self.listeners[index].last;
        if replica.last_applied().0 < cursor.0.max(auth.generation) {
            return;
        }
        let mut after = cursor;
        let mut missed: Vec<MessageView> = Vec::new();
        loop {
            let query = Query::MessagesAfter {
                auth: auth.clone(),
                after,
                limit: limits::READ_LIMIT_MAX,
            };
            match replica.chat().query(&query) {
                Ok(QueryOutput::Messages(page)) => {
                    let full = page.len() as u32 == limits::READ_LIMIT_MAX;
                    let Some(last) = page.last() else { break };
                    after = last.id;
                    missed.extend(page);
                    if !full {
                        break;
                    }
                }
                // The account is gone or the token dead on this replica: nothing to read,
                // the stream would end; the end-of-run check accounts for it.
                _ => break,
            }
        }
        self.listeners[index].caught_up = true;
        self.listeners[index].snapshots_installed = replica.metrics().snapshots_installed;
        for message in missed {
            self.receive(index, &message);
        }
    }

    /// Node `id` applied entries that deliver `deliveries`: forward them to its listeners.
    pub(super) fn deliver_to_listeners(&mut self, id: NodeId, deliveries: &[Delivery]) {
        for index in 0..self.listeners.len() {
            let listener = &self.listeners[index];
            if !listener.caught_up || listener.attached.map(|(node, _)| node) != Some(id) {
                continue;
            }
            let user = &self.clients[listener.client].user;
            let mine: Vec<MessageView> = deliveries
                .iter()
                .filter(|d| &d.message.recipient == user)
                .map(|d| d.message.clone())
                .collect();
            for message in mine {
                self.receive(index, &message);
            }
        }
    }

    fn receive(&mut self, index: usize, message: &MessageView) {
        let listener = &mut self.listeners[index];
        let user = &self.clients[listener.client].user;
        if &message.recipient != user {
            let detail = format!(
                "listener of {user} received message {} addressed to {}",
                message.id.0, message.recipient
            );
            return self.fail(Violation {
                check: "delivery",
                detail,
            });
        }
        if message.id <= listener.last {
            let detail = format!(
                "listener of {user} received message {} after message {}: a repeat or out of order (attached to {:?})",
                message.id.0, listener.last.0, listener.attached.map(|(node, _)| node)
            );
            return self.fail(Violation {
                check: "delivery",
                detail,
            });
        }
        listener.last = message.id;
        listener.received.push(message.id);
        self.stats.messages_listened += 1;
    }

    /// At the end: every listener catches up on the leader, then must hold every message
    /// of its user's final inbox.
    pub(super) fn check_listeners(&mut self, leader: NodeId, state: &FinalState) {
        for index in 0..self.listeners.len() {
            if self.listeners[index].attached.map(|(node, _)| node) != Some(leader) {
                let incarnation = self.node(leader).incarnation;
                let listener = &mut self.listeners[index];
                listener.attached = Some((leader, incarnation));
                listener.caught_up = false;
                listener.reconnects += 1;
            }
            if !self.listeners[index].caught_up {
                self.catch_up(index, leader);
            }
            if self.failure.is_some() {
                return;
            }
            let listener = &self.listeners[index];
            let user = &self.clients[listener.client].user;
            let Some(inbox) = state.inboxes.get(user) else {
                continue;
            };
            let received: BTreeSet<MessageId> = listener.received.iter().copied().collect();
            if let Some(missing) = inbox.iter().find(|m| !received.contains(&m.id)) {
                let detail = format!(
                    "listener of {user} never received message {} (in the final inbox) across {} reconnects",
                    missing.id.0, listener.reconnects
                );
                return self.fail(Violation {
                    check: "delivery",
                    detail,
                });
            }
        }
    }
}
