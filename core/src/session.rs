//! Exactly-once client sessions, registered in the log (Raft thesis §6.3).
//!
//! A client opens a session with an `OpenSession` command: the log assigns its id (the
//! index of that entry) and binds it to the authenticated account (name and generation)
//! that opened it. The client then numbers its writes in the session from 1, one
//! outstanding at a time. The table remembers, per session, the last applied sequence
//! number, a digest of its command and its response, so that a retry is answered and not
//! applied again.
//!
//! What the table decides about a request, and why:
//! - an **unknown** session (never opened, expired, or evicted) is refused, never applied:
//!   its earlier requests may have been applied, and nothing remembers which;
//! - a session answers **only its owner**: a request under someone else's session is
//!   refused without touching it (no stored answer leaks, no sequence number moves);
//! - a **retry** (the last applied sequence number) must carry the same command as the
//!   original, checked by digest; a different command under it is refused;
//! - requests refused before the log (a bad token, an empty body) never reach the table,
//!   so they neither consume a sequence number nor damage the session.
//!
//! Bounds: at most `sessions_per_user_max` sessions per account name (opening one more
//! evicts that user's least recently active session, never another user's), and at most
//! `sessions_max` in all (opening one more is refused with `TooManySessions` until
//! sessions expire; again no other user's session is evicted). Sessions idle for longer
//! than `expiry_us` of log time expire. The table is part of the replicated state: it
//! changes only by applying the log, so every replica agrees on it.

use crate::app::{AppError, Command, CommandOutput};
use crate::digest::{Digest, ItemHasher, ItemKind};
use crate::entry::SessionRef;
use crate::machine::fnv1a64;
use crate::types::{SessionId, Time};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The account a session is bound to: a name and the generation (log index of the
/// account's creation), so that a session dies with its account even if the name is
/// taken again.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionOwner {
    pub user: String,
    pub generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    owner: SessionOwner,
    /// 0 until the first request is applied.
    last_seq: u64,
    /// Digest of the command applied at `last_seq` ([`command_digest`]).
    last_digest: u64,
    last_response: Option<Result<CommandOutput, AppError>>,
    last_active: Time,
    /// This session's item hash ([`session_hash`]) as of its last change, so that
    /// recording a response hashes only the new one: a stored `ReadMessages` answer can
    /// hold many messages. Not serialized; decoding recomputes it
    /// ([`SessionTableImage`]), and a check recomputes from the fields, never from this.
    #[serde(skip)]
    hash: u128,
}

/// What the table says about a request before it is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionCheck {
    /// The next request of the session: apply it.
    Apply,
    /// Already applied with this very command: here is the stored response.
    Duplicate(Result<CommandOutput, AppError>),
    /// Older than the last applied request: its response is gone. A correct client never
    /// sends this; it can only come from a very delayed duplicate.
    Stale { last_seq: u64 },
    /// The session is unknown: never opened, expired, or evicted.
    Expired,
    /// The session belongs to another account.
    NotOwned,
    /// The sequence number was applied with a different command.
    RetryMismatch { seq: u64 },
}

/// Why a session could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenRefused {
    /// The table holds `sessions_max` sessions, none of them the opener's to evict.
    TableFull,
}

/// The table. `digest` is the incremental hash of the sessions (see [`crate::digest`]),
/// kept by every mutation; like `ChatState`'s, it is rebuilt on decoding
/// ([`SessionTableImage`]) rather than trusted from a snapshot. The two indexes are
/// derived from `sessions` and are not hashed.
///
/// Each session sits behind an `Arc` and changes through `Arc::make_mut`, so cloning the
/// table for a snapshot copies no stored response (a `ReadMessages` answer can hold many
/// messages); see [`crate::app::ChatState`] for the same scheme.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SessionTableImage")]
pub struct SessionTable {
    sessions: BTreeMap<SessionId, Arc<Session>>,
    /// Every session ordered by last activity, for expiry.
    by_activity: BTreeSet<(Time, SessionId)>,
    /// Each account name's sessions ordered by last activity, for the per-user bound.
    by_user: BTreeMap<String, BTreeSet<(Time, SessionId)>>,
    sessions_max: usize,
    sessions_per_user_max: usize,
    expiry_us: u64,
    #[serde(skip)]
    digest: Digest,
}

/// What a snapshot holds of a [`SessionTable`]: its fields in the same order, without
/// the digest. Every decoding of a `SessionTable` goes through it.
#[derive(Deserialize)]
struct SessionTableImage {
    sessions: BTreeMap<SessionId, Arc<Session>>,
    by_activity: BTreeSet<(Time, SessionId)>,
    by_user: BTreeMap<String, BTreeSet<(Time, SessionId)>>,
    sessions_max: usize,
    sessions_per_user_max: usize,
    expiry_us: u64,
}

impl From<SessionTableImage> for SessionTable {
    fn from(image: SessionTableImage) -> SessionTable {
        let mut sessions = image.sessions;
        for (&id, session) in &mut sessions {
            // Just decoded, so not shared: this copies nothing.
            let session = Arc::make_mut(session);
            session.hash = session_hash(id, session);
        }
        let mut table = SessionTable {
            sessions,
            by_activity: image.by_activity,
            by_user: image.by_user,
            sessions_max: image.sessions_max,
            sessions_per_user_max: image.sessions_per_user_max,
            expiry_us: image.expiry_us,
            digest: Digest::default(),
        };
        table.digest = table.recompute_digest();
        table
    }
}

/// The item hash of a session: every field, the stored response in bincode's encoding
/// (as long as the response, which the command that made it already built).
fn session_hash(id: SessionId, session: &Session) -> u128 {
    ItemHasher::new(ItemKind::Session)
        .u64(id.0)
        .str(&session.owner.user)
        .u64(session.owner.generation)
        .u64(session.last_seq)
        .u64(session.last_digest)
        .u64(session.last_active.0)
        .encoded(&session.last_response)
        .finish()
}

/// A digest of a command, stored with its response so that a retry carrying another
/// command under the same sequence number is recognized. FNV-1a over the canonical
/// encoding: deterministic on every replica. Not a defence against a client forging
/// collisions, which could only confuse that client's own session.
pub fn command_digest(command: &Command) -> u64 {
    // Encoding plain data into a Vec cannot fail.
    let bytes = bincode::serde::encode_to_vec(command, bincode::config::standard())
        .expect("in-memory encoding cannot fail");
    fnv1a64(&bytes)
}

impl SessionTable {
    pub fn new(sessions_max: usize, sessions_per_user_max: usize, expiry_us: u64) -> SessionTable {
        assert!(sessions_max > 0 && sessions_per_user_max > 0);
        SessionTable {
            sessions: BTreeMap::new(),
            by_activity: BTreeSet::new(),
            by_user: BTreeMap::new(),
            sessions_max,
            sessions_per_user_max,
            expiry_us,
            digest: Digest::default(),
        }
    }

    /// The table's part of the state hash, in O(1): the sessions' digest and the bounds.
    pub(crate) fn digest_value(&self) -> u128 {
        ItemHasher::new(ItemKind::SessionTable)
            .u128(self.digest.value())
            .u64(self.sessions_max as u64)
            .u64(self.sessions_per_user_max as u64)
            .u64(self.expiry_us)
            .finish()
    }

    /// The sessions' digest computed from scratch. Linear.
    fn recompute_digest(&self) -> Digest {
        let mut digest = Digest::default();
        for (&id, session) in &self.sessions {
            digest.add(session_hash(id, session));
        }
        digest
    }

    /// Whether the incremental digest equals a recomputation from scratch. Linear.
    pub fn check_digest(&self) -> Result<(), String> {
        let recomputed = self.recompute_digest();
        if recomputed != self.digest {
            return Err(format!(
                "session digest {:032x} but the sessions sum to {:032x}",
                self.digest.value(),
                recomputed.value()
            ));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// How many sessions `user` holds.
    pub fn sessions_of(&self, user: &str) -> usize {
        self.by_user.get(user).map_or(0, BTreeSet::len)
    }

    /// Judges a request of `owner` in `session` carrying a command with `digest`.
    pub fn check(&self, session: SessionRef, owner: &SessionOwner, digest: u64) -> SessionCheck {
        let Some(s) = self.sessions.get(&session.id) else {
            return SessionCheck::Expired;
        };
        if s.owner != *owner {
            return SessionCheck::NotOwned;
        }
        match session.seq {
            seq if seq > s.last_seq => SessionCheck::Apply,
            seq if seq == s.last_seq => match &s.last_response {
                Some(response) if s.last_digest == digest => {
                    SessionCheck::Duplicate(response.clone())
                }
                _ => SessionCheck::RetryMismatch { seq },
            },
            _ => SessionCheck::Stale {
                last_seq: s.last_seq,
            },
        }
    }

    /// Registers session `id` for `owner` at log time `now`, evicting the owner's least
    /// recently active session if it holds `sessions_per_user_max` already.
    pub fn open(
        &mut self,
        id: SessionId,
        owner: SessionOwner,
        now: Time,
    ) -> Result<(), OpenRefused> {
        debug_assert!(
            !self.sessions.contains_key(&id),
            "session {id} opened twice: ids are log indexes"
        );
        if self.sessions_of(&owner.user) >= self.sessions_per_user_max {
            let oldest = self
                .by_user
                .get(&owner.user)
                .and_then(|sessions| sessions.first().copied());
            if let Some((_, evicted)) = oldest {
                self.remove(evicted);
            }
        } else if self.sessions.len() >= self.sessions_max {
            return Err(OpenRefused::TableFull);
        }
        self.by_activity.insert((now, id));
        self.by_user
            .entry(owner.user.clone())
            .or_default()
            .insert((now, id));
        let mut session = Session {
            owner,
            last_seq: 0,
            last_digest: 0,
            last_response: None,
            last_active: now,
            hash: 0,
        };
        session.hash = session_hash(id, &session);
        self.digest.add(session.hash);
        self.sessions.insert(id, Arc::new(session));
        self.check_bounds();
        Ok(())
    }

    /// Records the response of an applied request at log time `now`. The request must
    /// have been judged `Apply` by [`SessionTable::check`].
    pub fn record(
        &mut self,
        session: SessionRef,
        digest: u64,
        response: Result<CommandOutput, AppError>,
        now: Time,
    ) {
        debug_assert!(
            self.sessions.contains_key(&session.id),
            "recorded a request of unknown session {}",
            session.id
        );
        let Some(s) = self.sessions.get_mut(&session.id) else {
            return;
        };
        // Copies the session only if a snapshot still shares it.
        let s = Arc::make_mut(s);
        debug_assert!(
            session.seq > s.last_seq,
            "recorded a request not judged Apply"
        );
        let previous = (s.last_active, session.id);
        s.last_seq = session.seq;
        s.last_digest = digest;
        s.last_response = Some(response);
        s.last_active = now;
        let old_hash = s.hash;
        s.hash = session_hash(session.id, s);
        self.digest.replace(old_hash, s.hash);
        let user = s.owner.user.clone();
        self.by_activity.remove(&previous);
        self.by_activity.insert((now, session.id));
        if let Some(sessions) = self.by_user.get_mut(&user) {
            sessions.remove(&previous);
            sessions.insert((now, session.id));
        }
        self.check_bounds();
    }

    /// Forgets every session idle for longer than the expiry, as of log time `now`.
    pub fn expire(&mut self, now: Time) {
        while let Some(&(last_active, id)) = self.by_activity.first() {
            if now.saturating_since_us(last_active) <= self.expiry_us {
                break;
            }
            self.remove(id);
        }
    }

    fn remove(&mut self, id: SessionId) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        self.digest.remove(session.hash);
        let key = (session.last_active, id);
        self.by_activity.remove(&key);
        if let Some(sessions) = self.by_user.get_mut(&session.owner.user) {
            sessions.remove(&key);
            if sessions.is_empty() {
                self.by_user.remove(&session.owner.user);
            }
        }
    }

    /// The indexes agree with the table and the bounds hold. Constant time: counts only.
    fn check_bounds(&self) {
        debug_assert_eq!(self.sessions.len(), self.by_activity.len());
        debug_assert!(self.sessions.len() <= self.sessions_max);
    }

    /// Full consistency of the three indexes and the digest (linear; for tests).
    pub fn check_consistency(&self) -> Result<(), String> {
        let mut counted = 0;
        for (user, sessions) in &self.by_user {
            if sessions.is_empty() || sessions.len() > self.sessions_per_user_max {
                return Err(format!("{user} holds {} sessions", sessions.len()));
            }
            for &(time, id) in sessions {
                let s = self
                    .sessions
                    .get(&id)
                    .ok_or_else(|| format!("{user}'s session {id} is not in the table"))?;
                if s.owner.user != *user || s.last_active != time {
                    return Err(format!("session {id} is indexed under the wrong key"));
                }
                if !self.by_activity.contains(&(time, id)) {
                    return Err(format!("session {id} is missing from the activity index"));
                }
                counted += 1;
            }
        }
        if counted != self.sessions.len() || counted != self.by_activity.len() {
            return Err(format!(
                "{} sessions, {} by activity, {counted} by user",
                self.sessions.len(),
                self.by_activity.len()
            ));
        }
        if counted > self.sessions_max {
            return Err(format!(
                "{counted} sessions exceed the bound {}",
                self.sessions_max
            ));
        }
        self.check_digest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(user: &str) -> SessionOwner {
        SessionOwner {
            user: user.to_owned(),
            generation: 1,
        }
    }

    fn at(id: u64, seq: u64) -> SessionRef {
        SessionRef {
            id: SessionId(id),
            seq,
        }
    }

    fn sent(id: u64) -> Result<CommandOutput, AppError> {
        Ok(CommandOutput::Sent {
            id: crate::app::MessageId(id),
            timestamp: Time(id),
        })
    }

    #[test]
    fn retry_returns_stored_response_and_old_is_stale() {
        let mut table = SessionTable::new(8, 4, 1_000);
        let alice = owner("alice");
        assert_eq!(table.check(at(1, 1), &alice, 7), SessionCheck::Expired);
        table.open(SessionId(1), alice.clone(), Time(0)).unwrap();
        assert_eq!(table.check(at(1, 1), &alice, 7), SessionCheck::Apply);
        table.record(at(1, 1), 7, sent(10), Time(0));
        assert_eq!(
            table.check(at(1, 1), &alice, 7),
            SessionCheck::Duplicate(sent(10))
        );
        assert_eq!(
            table.check(at(1, 1), &alice, 8),
            SessionCheck::RetryMismatch { seq: 1 },
            "another command under an answered number is not answered"
        );
        // A gap is allowed: nothing in between was applied.
        assert_eq!(table.check(at(1, 3), &alice, 9), SessionCheck::Apply);
        table.record(at(1, 3), 9, sent(11), Time(1));
        assert_eq!(
            table.check(at(1, 1), &alice, 7),
            SessionCheck::Stale { last_seq: 3 }
        );
        assert_eq!(table.check(at(2, 1), &alice, 7), SessionCheck::Expired);
        table.check_consistency().unwrap();
    }

    #[test]
    fn a_session_answers_only_its_owner() {
        let mut table = SessionTable::new(8, 4, 1_000);
        table.open(SessionId(1), owner("alice"), Time(0)).unwrap();
        table.record(at(1, 1), 7, sent(10), Time(0));
        assert_eq!(
            table.check(at(1, 1), &owner("bob"), 7),
            SessionCheck::NotOwned
        );
        assert_eq!(
            table.check(at(1, 2), &owner("bob"), 7),
            SessionCheck::NotOwned
        );
        let reborn = SessionOwner {
            user: "alice".to_owned(),
            generation: 2,
        };
        assert_eq!(
            table.check(at(1, 1), &reborn, 7),
            SessionCheck::NotOwned,
            "an account created again under the same name is another owner"
        );
    }

    #[test]
    fn eviction_is_per_user_and_the_table_refuses_when_full() {
        let mut table = SessionTable::new(4, 2, 1_000);
        table.open(SessionId(1), owner("alice"), Time(1)).unwrap();
        table.open(SessionId(2), owner("bob"), Time(2)).unwrap();
        table.open(SessionId(3), owner("bob"), Time(3)).unwrap();
        // Bob's third session evicts bob's oldest, not alice's older one.
        table.open(SessionId(4), owner("bob"), Time(4)).unwrap();
        assert_eq!(
            table.check(at(1, 1), &owner("alice"), 0),
            SessionCheck::Apply
        );
        assert_eq!(
            table.check(at(2, 1), &owner("bob"), 0),
            SessionCheck::Expired
        );
        assert_eq!(table.sessions_of("bob"), 2);
        table.open(SessionId(5), owner("carol"), Time(5)).unwrap();
        assert_eq!(
            table.open(SessionId(6), owner("dave"), Time(6)),
            Err(OpenRefused::TableFull),
            "a full table evicts nobody else's session"
        );
        // A user at their own bound may still rotate within it.
        table.open(SessionId(7), owner("bob"), Time(7)).unwrap();
        assert_eq!(table.len(), 4);
        table.check_consistency().unwrap();
    }

    #[test]
    fn expiry_is_by_log_time() {
        let mut table = SessionTable::new(8, 4, 100);
        for n in 1..=3 {
            table.open(SessionId(n), owner("alice"), Time(n)).unwrap();
        }
        table.record(at(1, 1), 0, sent(1), Time(50));
        table.expire(Time(103));
        assert_eq!(table.len(), 2, "session 2 idle since 2 expired at 103");
        assert_eq!(
            table.check(at(2, 1), &owner("alice"), 0),
            SessionCheck::Expired
        );
        table.expire(Time(151));
        assert!(table.is_empty());
        assert_eq!(table.sessions_of("alice"), 0);
        table.check_consistency().unwrap();
    }
}
