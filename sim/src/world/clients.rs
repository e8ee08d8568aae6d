//! The simulated clients: starting operations, sending and resending requests,
//! following leader hints with backoff, and recording outcomes in the history.

use super::*;
use crate::faults::FaultKind;
use crate::history::Abuse;
use crate::scenario::OpPlan;
use crate::workload::{with_session, BACKOFF_US_MAX};
use chat_core::entry::SessionRef;
use chat_core::SessionId;

impl World<'_> {
    pub(super) fn client_wake(&mut self, client: usize, token: u64) {
        if self.clients[client].wake_token != token {
            return;
        }
        if self.clients[client].current.is_some() {
            if !std::mem::take(&mut self.clients[client].backing_off) {
                // The answer did not come in time: try another node.
                let target = self.any_member();
                self.clients[client].target = target;
            }
            self.resend(client);
            return;
        }
        self.start_next_op(client);
    }

    pub(super) fn start_next_op(&mut self, client: usize) {
        if self.phase != Phase::Chaos || self.clients[client].stopped {
            return;
        }
        let users = self.users.clone();
        let c = &mut self.clients[client];
        let (request, kind, abuse) = if c.auth.is_none() {
            let (request, kind) = c.create_account();
            (request, kind, None)
        } else if c.session.is_none() {
            let Some((request, kind)) = c.open_session() else {
                return;
            };
            (request, kind, None)
        } else {
            loop {
                let c = &mut self.clients[client];
                let Some(planned) = c.plan.get(c.next_op).cloned() else {
                    return;
                };
                c.next_op += 1;
                if let Some(found) = c.request_for(&planned.op, &users) {
                    break (found.0, found.1, None);
                }
                if let Some(found) = self.abusive_request(client, &planned.op, &users) {
                    break found;
                }
            }
        };
        let op = self.history.invoke(client, kind, self.now.0);
        self.history.ops[op].abuse = abuse;
        // Only misbehaving clients replay old requests: polite runs keep none. Opening a
        // session is not replayed: every open registers a new one, by design.
        if self.scenario.faults.contains(FaultKind::ClientAbuse)
            && matches!(request, ClientRequest::Write { .. })
            && !matches!(self.history.ops[op].kind, OpKind::OpenSession { .. })
            && !matches!(abuse, Some(Abuse::Replay { .. } | Abuse::Churn))
        {
            self.clients[client].sent.push((request.clone(), op));
        }
        let request_id = self.new_request_id(client);
        self.clients[client].current = Some(InFlight {
            history_op: op,
            request,
            request_id,
            started: self.now,
        });
        self.clients[client].retries = 0;
        self.send_request(client);
    }

    /// The request of a misbehaving plan entry (`client-abuse`), or `None` if there is
    /// nothing to send for it.
    fn abusive_request(
        &mut self,
        client: usize,
        op: &OpPlan,
        users: &[String],
    ) -> Option<(ClientRequest, OpKind, Option<Abuse>)> {
        // The wrapped operation, built as usual but without using up a sequence number.
        let inner = |world: &mut Self, op: &OpPlan| {
            let c = &mut world.clients[client];
            let seq = c.seq;
            let found = c.request_for(op, users);
            c.seq = seq;
            let found = found?;
            Some(found).filter(|(request, _)| matches!(request, ClientRequest::Write { .. }))
        };
        match op {
            OpPlan::FreshSession { op } => {
                let (request, kind) = inner(self, op)?;
                // Far above any log index of a run, so never a session that was opened.
                let made_up: u64 = self.client_rng.random();
                let session = SessionRef {
                    id: SessionId(made_up | 1 << 63),
                    seq: 1,
                };
                Some((
                    with_session(request, session),
                    kind,
                    Some(Abuse::FreshSession),
                ))
            }
            OpPlan::ForeignSession { victim, ahead, op } => {
                let owner = self.clients.get(*victim).filter(|_| *victim != client)?;
                let session = SessionRef {
                    id: owner.session?,
                    seq: (owner.seq + u64::from(*ahead)).max(1),
                };
                let (request, kind) = inner(self, op)?;
                let abuse = Abuse::Foreign { owner: *victim };
                Some((with_session(request, session), kind, Some(abuse)))
            }
            OpPlan::Replay { back } => {
                let sent = &self.clients[client].sent;
                let (request, of) = sent
                    .get(sent.len().checked_sub(1 + back % sent.len().max(1))?)?
                    .clone();
                let kind = self.history.ops[of].kind.clone();
                Some((request, kind, Some(Abuse::Replay { of })))
            }
            OpPlan::SeqJump { delta, op } => {
                let (request, kind) = inner(self, op)?;
                let c = &mut self.clients[client];
                let seq = c.seq.saturating_add_signed(*delta).max(1);
                if *delta > 0 {
                    // A gap: the session carries on from there.
                    c.seq = seq;
                }
                let session = SessionRef {
                    id: c.session?,
                    seq,
                };
                let request = with_session(request, session);
                // Back to a number this client already sent the very same request under:
                // an honest retry, answered with that request's answer, so the history
                // must count it as that operation again, not as a new one (a repeated
                // `ReadMessages` legitimately returns the same messages as unread).
                let earlier = c
                    .sent
                    .iter()
                    .rev()
                    .find_map(|(sent, of)| (*delta <= 0 && *sent == request).then_some(*of));
                if let Some(of) = earlier {
                    let kind = self.history.ops[of].kind.clone();
                    return Some((request, kind, Some(Abuse::Replay { of })));
                }
                Some((request, kind, Some(Abuse::SeqJump)))
            }
            OpPlan::OpenSession => {
                let (request, kind) = self.clients[client].open_session()?;
                Some((request, kind, Some(Abuse::Churn)))
            }
            OpPlan::Mismatch { op } => {
                let c = &self.clients[client];
                // Only right after an acknowledged write, so that its number was applied
                // (or the session lost) and the mismatched request cannot be new.
                let seq = c.seq_acked.filter(|&acked| acked == c.seq)?;
                let id = c.session?;
                // The command the number was answered for: the same command again would
                // be an honest retry, rightly answered, not a mismatch.
                let original = c
                    .sent
                    .iter()
                    .rev()
                    .find_map(|(request, of)| match request {
                        ClientRequest::Write {
                            session: Some(s),
                            command,
                        } if s.id == id
                            && s.seq == seq
                            && matches!(
                                self.history.ops[*of].abuse,
                                None | Some(Abuse::SeqJump)
                            ) =>
                        {
                            Some(command.clone())
                        }
                        _ => None,
                    })?;
                let (request, kind) = inner(self, op)?;
                if matches!(&request, ClientRequest::Write { command, .. } if *command == original)
                {
                    return None;
                }
                let session = SessionRef { id, seq };
                Some((with_session(request, session), kind, Some(Abuse::Mismatch)))
            }
            _ => None,
        }
    }

    /// A node a client tries when it knows no leader: any member of the cluster as the
    /// operator's changes left it (the founding members, unless `membership` changed
    /// them), as a real client's list of addresses would be kept up to date.
    fn any_member(&mut self) -> NodeId {
        let members = self.operator.model.members();
        if members
            .keys()
            .copied()
            .eq((1..=self.scenario.nodes).map(NodeId))
        {
            // The founding members: drawn as before membership changes existed.
            return NodeId(self.client_rng.random_range(1..=self.scenario.nodes));
        }
        let index = self.client_rng.random_range(0..members.len().max(1));
        members.keys().nth(index).copied().unwrap_or(NodeId(1))
    }

    pub(super) fn new_request_id(&mut self, client: usize) -> RequestId {
        self.next_request += 1;
        let request_id = RequestId(self.next_request);
        self.requests.insert(request_id, client);
        request_id
    }

    pub(super) fn resend(&mut self, client: usize) {
        let request_id = self.new_request_id(client);
        let Some(current) = self.clients[client].current.as_mut() else {
            return;
        };
        self.requests.remove(&current.request_id);
        current.request_id = request_id;
        self.clients[client].retries += 1;
        self.send_request(client);
    }

    pub(super) fn send_request(&mut self, client: usize) {
        let c = &mut self.clients[client];
        let Some(current) = c.current.as_ref() else {
            return;
        };
        let (node, request_id, request) = (c.target, current.request_id, current.request.clone());
        self.history.ops[current.history_op].attempts += 1;
        c.wake_token += 1;
        c.backing_off = false;
        let token = c.wake_token;
        self.tracer.line(self.now, || {
            format!("c{client} -> {node} request #{}", request_id.0)
        });
        let at = self.now.saturating_add_us(self.network.latency_us());
        let wait_us = if self.network.is_client_refused(node) {
            // The connection fails after a round trip: the wake-up tries another node.
            2 * (at.0 - self.now.0)
        } else {
            self.push(
                at,
                Event::Request {
                    node,
                    request_id,
                    request,
                },
            );
            REQUEST_TIMEOUT_US
        };
        self.push(
            self.now.saturating_add_us(wait_us),
            Event::ClientWake { client, token },
        );
    }

    pub(super) fn client_reply(
        &mut self,
        client: usize,
        request_id: RequestId,
        outcome: Result<Response, ClientError>,
    ) {
        let is_current = self.clients[client]
            .current
            .as_ref()
            .is_some_and(|c| c.request_id == request_id);
        self.requests.remove(&request_id);
        if !is_current {
            return;
        }
        self.tracer.digest(&[
            self.now.0,
            3,
            client as u64,
            request_id.0,
            u64::from(outcome.is_ok()),
        ]);
        self.tracer.line(self.now, || {
            format!("c{client} <- reply #{} {outcome:?}", request_id.0)
        });
        match &outcome {
            Err(ClientError::NotLeader { leader_hint }) => {
                let target = match leader_hint {
                    Some(hint) => *hint,
                    None => self.any_member(),
                };
                self.clients[client].target = target;
                return self.retry_after_backoff(client);
            }
            Err(ClientError::Busy { .. }) => return self.retry_after_backoff(client),
            _ => {}
        }
        let Some(current) = self.clients[client].current.take() else {
            return;
        };
        self.finish_op(client, current, outcome);
    }

    pub(super) fn retry_after_backoff(&mut self, client: usize) {
        let jitter = self.client_rng.random_range(0..1000);
        let backoff = self.clients[client].backoff_us(jitter);
        let c = &mut self.clients[client];
        c.retries += 1;
        c.backing_off = true;
        c.wake_token += 1;
        let token = c.wake_token;
        // The wake-up finds the request still current and resends it.
        self.push(
            self.now.saturating_add_us(backoff),
            Event::ClientWake { client, token },
        );
    }

    pub(super) fn finish_op(
        &mut self,
        client: usize,
        current: InFlight,
        outcome: Result<Response, ClientError>,
    ) {
        use chat_core::app::CommandOutput;
        self.stats.ops_completed += 1;
        if outcome.is_ok() {
            self.stats.ops_acknowledged += 1;
        }
        let abuse = self.history.ops[current.history_op].abuse;
        // An answer to a request in someone else's session, or to a replay, a made-up
        // session or an abandoned one, says nothing about this client's own state.
        let own = matches!(abuse, None | Some(Abuse::SeqJump));
        let c = &mut self.clients[client];
        let mut open_refused = false;
        match (&self.history.ops[current.history_op].kind, &outcome) {
            _ if !own => {}
            (
                OpKind::CreateAccount { .. },
                Ok(Response::Command(CommandOutput::AccountCreated { user, generation })),
            ) => {
                c.auth = Some(chat_core::app::Auth {
                    user: user.clone(),
                    generation: *generation,
                    token_epoch: 0,
                });
            }
            (OpKind::CreateAccount { .. }, _) => c.stopped = true,
            (
                OpKind::OpenSession { .. },
                Ok(Response::Command(CommandOutput::SessionOpened { session })),
            ) => {
                c.drop_session();
                c.session = Some(*session);
            }
            // A full table: try again later, when idle sessions have expired.
            (OpKind::OpenSession { .. }, _) => open_refused = true,
            (OpKind::Read { .. }, Ok(Response::Command(CommandOutput::Messages(messages)))) => {
                c.read_ids.extend(messages.iter().map(|m| m.id));
            }
            (OpKind::Delete { ids, .. }, Ok(_)) => c.read_ids.retain(|id| !ids.contains(id)),
            _ => {}
        }
        if let (
            true,
            Ok(_),
            ClientRequest::Write {
                session: Some(s), ..
            },
        ) = (own, &outcome, &current.request)
        {
            if c.session == Some(s.id) {
                c.seq_acked = Some(s.seq);
            }
        }
        if self.scenario.faults.contains(FaultKind::ClientAbuse) {
            // Misbehaving clients: churn evicts the client's own sessions and expiry is
            // short; a client refused in its own session opens a new one.
            let refused = matches!(
                outcome,
                Err(ClientError::SessionExpired
                    | ClientError::StaleRequest { .. }
                    | ClientError::RetryMismatch { .. })
            );
            if refused && own {
                self.clients[client].drop_session();
            }
        } else if let Err(ClientError::SessionExpired) = outcome {
            // Sessions here are far below the table's bounds and its expiry: an expired
            // session is a replica answering from state it should not trust.
            self.fail(Violation {
                check: "sessions",
                detail: format!("client c{client} was told its live session expired"),
            });
            self.clients[client].drop_session();
        }
        if let (OpKind::Send { to, .. }, Ok(Response::Command(CommandOutput::Sent { .. }))) =
            (&self.history.ops[current.history_op].kind, &outcome)
        {
            let to = to.clone();
            self.after_acknowledged_send(&to);
        }
        let name = format!("{:?}", self.history.ops[current.history_op].kind);
        let label = match &outcome {
            Ok(_) => "ok".to_string(),
            Err(error) => error.to_string(),
        };
        self.tracer
            .client_op(client, current.started, self.now, &name, &label);
        self.history
            .complete(current.history_op, outcome, self.now.0);
        let think_us = if open_refused {
            BACKOFF_US_MAX
        } else {
            self.clients[client]
                .plan
                .get(self.clients[client].next_op)
                .map_or(0, |p| p.think_us)
        };
        let c = &mut self.clients[client];
        c.wake_token += 1;
        c.backing_off = false;
        let token = c.wake_token;
        self.push(
            self.now.saturating_add_us(think_us),
            Event::ClientWake { client, token },
        );
    }
}
