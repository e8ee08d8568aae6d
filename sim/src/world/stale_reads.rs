//! The stale-read window (part of `leader-isolation`): a leader cut off from its peers
//! keeps believing it leads until its check-quorum fires, while the others elect a
//! successor that commits writes. A leader that served a linearizable read in that window
//! without a quorum round would answer from a state the successor has moved past.
//!
//! The plain split rarely shows it: every client still reaches the old leader, so their
//! writes hang there for a whole request timeout (longer than the window) and nothing is
//! committed by the successor that a read could miss. So, for half of the splits that
//! cut a leader from its peers (a coin of its own stream, so no other choice moves), the
//! partition also falls between the clients and the old leader, as a real one would
//! between the clients and a rack:
//! - the clients' connections to it fail at once (`Network::refuse_clients`): a request
//!   in flight there, or sent there later by a stale hint, fails after a round trip and
//!   the client tries another node, so clients find the successor within the window;
//! - each user has a second device that stayed on the old leader's side: when a send to
//!   that user is acknowledged during the window, the device peeks at the inbox through
//!   the old leader at once (a linearizable read of the largest size, so the new message
//!   would be in it). It is the reader right after a successor's commit that a stale
//!   leader fails. It sends nothing else, retries nothing, and is judged by the same
//!   checkers as any client (its operations are in the history under their own client
//!   numbers, after the real clients').

use super::*;
use chat_core::app::limits::READ_LIMIT_MAX;
use chat_core::app::MessageId;
use chat_core::ReadConsistency;

/// The index in `World::requests` that routes a reply to a second device.
pub(super) const SECOND_DEVICE: usize = usize::MAX - 1;

/// A window in force: the old leader and the partition that cut it off.
#[derive(Clone, Copy, Debug)]
pub(super) struct StaleWindow {
    leader: NodeId,
    partition: u64,
}

#[derive(Default)]
pub(super) struct SecondDevices {
    pub(super) window: Option<StaleWindow>,
    /// The peeks in flight: request → (history operation, user index).
    in_flight: BTreeMap<RequestId, (usize, usize)>,
    /// Users whose device is waiting for an answer (one read at a time per device).
    busy: BTreeSet<usize>,
}

impl World<'_> {
    /// Called as a split cuts `leader` off from its peers (partition `partition`): maybe
    /// opens a stale-read window over it, and says whether it did.
    pub(super) fn maybe_open_stale_window(&mut self, leader: NodeId, partition: u64) -> bool {
        if !self.stale_rng.random_bool(0.5) {
            return false;
        }
        self.tracer.line(self.now, || {
            format!("FAULT stale-read window: clients lose {leader}, second devices keep it")
        });
        self.network.refuse_clients(partition, leader);
        self.second_devices.window = Some(StaleWindow { leader, partition });
        // Requests in flight there: their connections break, and the clients move on.
        for client in 0..self.clients.len() {
            let c = &mut self.clients[client];
            if c.target != leader || c.current.is_none() || c.backing_off {
                continue;
            }
            c.wake_token += 1;
            let token = c.wake_token;
            let at = self.now.saturating_add_us(self.network.latency_us());
            self.push(at, Event::ClientWake { client, token });
        }
        true
    }

    /// Partition `partition` healed (`None`: every partition, at the end of chaos): the
    /// window it carried, if any, closes, and devices still waiting give up (their reads
    /// stay without an answer, which proves nothing).
    pub(super) fn close_stale_window(&mut self, partition: Option<u64>) {
        let Some(window) = self.second_devices.window else {
            return;
        };
        if partition.is_some_and(|p| p != window.partition) {
            return;
        }
        self.second_devices.window = None;
        for request_id in std::mem::take(&mut self.second_devices.in_flight).into_keys() {
            self.requests.remove(&request_id);
        }
        self.second_devices.busy.clear();
    }

    /// A send to `to` was acknowledged: during a window, `to`'s second device hears of
    /// it (a notification's transit later) and peeks.
    pub(super) fn after_acknowledged_send(&mut self, to: &str) {
        if self.second_devices.window.is_none() {
            return;
        }
        let Some(user) = self.users.iter().position(|u| u == to) else {
            return;
        };
        let at = self.now.saturating_add_us(self.network.latency_us());
        self.push(at, Event::SecondDevicePeek { user });
    }

    /// `user`'s second device peeks at the inbox through the old leader, unless the
    /// window closed or the device is still waiting for its last peek. Called strictly
    /// after the acknowledgement that prompted it, so the peek must see that message.
    pub(super) fn second_device_peek(&mut self, user: usize) {
        let Some(window) = self.second_devices.window else {
            return;
        };
        let Some(auth) = self.clients[user].auth.clone() else {
            return;
        };
        if self.phase != Phase::Chaos || !self.second_devices.busy.insert(user) {
            return;
        }
        let to = self.clients[user].user.clone();
        let query = Query::MessagesAfter {
            auth,
            after: MessageId(0),
            limit: READ_LIMIT_MAX,
        };
        let kind = OpKind::Peek {
            user: to.clone(),
            limit: READ_LIMIT_MAX,
        };
        let device = self.clients.len() + user;
        let op = self.history.invoke(device, kind, self.now.0);
        self.history.ops[op].attempts = 1;
        let request_id = self.new_request_id(SECOND_DEVICE);
        self.second_devices.in_flight.insert(request_id, (op, user));
        let node = window.leader;
        self.tracer.line(self.now, || {
            format!(
                "c{device} (second device of {to}) -> {node} peek #{}",
                request_id.0
            )
        });
        let at = self.now.saturating_add_us(self.network.latency_us());
        let request = ClientRequest::Read {
            query,
            consistency: ReadConsistency::Linearizable,
        };
        self.push(
            at,
            Event::Request {
                node,
                request_id,
                request,
            },
        );
    }

    pub(super) fn second_device_reply(
        &mut self,
        request_id: RequestId,
        outcome: Result<Response, ClientError>,
    ) {
        self.requests.remove(&request_id);
        let Some((op, user)) = self.second_devices.in_flight.remove(&request_id) else {
            return;
        };
        self.second_devices.busy.remove(&user);
        self.tracer.digest(&[
            self.now.0,
            9,
            user as u64,
            request_id.0,
            u64::from(outcome.is_ok()),
        ]);
        self.tracer.line(self.now, || {
            format!(
                "second device of c{user} <- reply #{} {outcome:?}",
                request_id.0
            )
        });
        self.history.complete(op, outcome, self.now.0);
    }
}
