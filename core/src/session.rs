//! Exactly-once client sessions. A client numbers its requests within a session (a UUID
//! it chose); the table remembers the last response of each session so a retry is
//! answered, not applied again. It is part of the replicated state: it changes only by
//! applying the log, and expires by log time, so every replica agrees on it.
//!
//! A client has at most one request outstanding per session: it sends `seq + 1` only after
//! it has the answer to `seq`.

use crate::app::{AppError, CommandOutput};
use crate::entry::SessionRef;
use crate::types::{ClientId, Time};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    last_seq: u64,
    last_response: Result<CommandOutput, AppError>,
    last_active: Time,
}

/// What the table says about a request before it is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionCheck {
    /// The next request of the session (or the first of a new one): apply it.
    Apply,
    /// Already applied: here is the stored response.
    Duplicate(Result<CommandOutput, AppError>),
    /// Older than the last applied request: its response is gone. A correct client never
    /// sends this; it can only come from a very delayed duplicate.
    Stale { last_seq: u64 },
    /// The session is unknown and this is not its first request: it expired or was
    /// evicted, and applying the request might apply it twice.
    Expired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTable {
    sessions: BTreeMap<ClientId, Session>,
    /// Sessions ordered by last activity, for expiry and eviction.
    by_activity: BTreeSet<(Time, ClientId)>,
    sessions_max: usize,
    expiry_us: u64,
}

impl SessionTable {
    pub fn new(sessions_max: usize, expiry_us: u64) -> SessionTable {
        assert!(sessions_max > 0);
        SessionTable {
            sessions: BTreeMap::new(),
            by_activity: BTreeSet::new(),
            sessions_max,
            expiry_us,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn check(&self, session: SessionRef) -> SessionCheck {
        match self.sessions.get(&session.client) {
            None if session.seq <= 1 => SessionCheck::Apply,
            None => SessionCheck::Expired,
            Some(s) if session.seq == s.last_seq + 1 => SessionCheck::Apply,
            Some(s) if session.seq == s.last_seq => {
                SessionCheck::Duplicate(s.last_response.clone())
            }
            Some(s) if session.seq < s.last_seq => SessionCheck::Stale {
                last_seq: s.last_seq,
            },
            // A gap means the client skipped numbers; treating it as the next request is
            // safe because nothing in between was ever applied.
            Some(_) => SessionCheck::Apply,
        }
    }

    /// Records the response of an applied request at log time `now`.
    pub fn record(
        &mut self,
        session: SessionRef,
        response: Result<CommandOutput, AppError>,
        now: Time,
    ) {
        if let Some(old) = self.sessions.get(&session.client) {
            debug_assert!(session.seq > old.last_seq);
            self.by_activity.remove(&(old.last_active, session.client));
        } else if self.sessions.len() >= self.sessions_max {
            self.evict_least_recently_active();
        }
        self.sessions.insert(
            session.client,
            Session {
                last_seq: session.seq,
                last_response: response,
                last_active: now,
            },
        );
        self.by_activity.insert((now, session.client));
        debug_assert_eq!(self.sessions.len(), self.by_activity.len());
        debug_assert!(self.sessions.len() <= self.sessions_max);
    }

    /// Forgets every session idle for longer than the expiry, as of log time `now`.
    pub fn expire(&mut self, now: Time) {
        while let Some(&(last_active, client)) = self.by_activity.first() {
            if now.saturating_since_us(last_active) <= self.expiry_us {
                break;
            }
            self.by_activity.pop_first();
            self.sessions.remove(&client);
        }
    }

    fn evict_least_recently_active(&mut self) {
        if let Some((_, client)) = self.by_activity.pop_first() {
            self.sessions.remove(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(n: u128) -> ClientId {
        ClientId(uuid::Uuid::from_u128(n))
    }

    fn sent(id: u64) -> Result<CommandOutput, AppError> {
        Ok(CommandOutput::Sent {
            id: crate::app::MessageId(id),
            timestamp: Time(id),
        })
    }

    #[test]
    fn retry_returns_stored_response_and_old_is_stale() {
        let mut table = SessionTable::new(8, 1_000);
        let s1 = SessionRef {
            client: client(1),
            seq: 1,
        };
        assert_eq!(table.check(s1), SessionCheck::Apply);
        table.record(s1, sent(10), Time(0));
        assert_eq!(table.check(s1), SessionCheck::Duplicate(sent(10)));
        let s2 = SessionRef {
            client: client(1),
            seq: 2,
        };
        assert_eq!(table.check(s2), SessionCheck::Apply);
        table.record(s2, sent(11), Time(1));
        assert_eq!(table.check(s1), SessionCheck::Stale { last_seq: 2 });
        assert_eq!(
            table.check(SessionRef {
                client: client(2),
                seq: 5
            }),
            SessionCheck::Expired
        );
    }

    #[test]
    fn expiry_is_by_log_time_and_bounded_by_count() {
        let mut table = SessionTable::new(2, 100);
        for n in 1..=3 {
            table.record(
                SessionRef {
                    client: client(n),
                    seq: 1,
                },
                sent(n as u64),
                Time(n as u64),
            );
        }
        assert_eq!(
            table.len(),
            2,
            "the least recently active session is evicted"
        );
        assert_eq!(
            table.check(SessionRef {
                client: client(1),
                seq: 2
            }),
            SessionCheck::Expired
        );
        table.expire(Time(103));
        assert_eq!(table.len(), 1);
        table.expire(Time(104));
        assert!(table.is_empty());
    }
}
