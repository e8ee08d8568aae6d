//! Log replication: the leader's pacing (probe, pipelined replicate, snapshot), the
//! follower's consistency check with fast backtracking, heartbeats, and commit.

use super::message::{ConflictHint, Message};
use super::progress::ReplicationState;
use super::replica::{Replica, Role};
use crate::entry::Entry;
use crate::types::{LogIndex, NodeId, Term};

impl Replica {
    /// Called for every message of the current term from the node claiming to lead it.
    /// Returns false if the claim is impossible (we lead this term ourselves).
    pub(super) fn accept_leader(&mut self, from: NodeId) -> bool {
        if self.role == Role::Leader {
            // Two leaders in one term cannot happen with correct peers.
            self.reject();
            return false;
        }
        if self.role != Role::Follower || self.leader_id != Some(from) {
            self.become_follower(self.term, Some(from));
        }
        self.last_leader_contact = Some(self.now);
        self.reset_election_deadline();
        true
    }

    pub(super) fn handle_append_entries(
        &mut self,
        from: NodeId,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) {
        if !self.append_entries_well_formed(prev_log_index, prev_log_term, &entries) {
            return self.reject();
        }
        if !self.accept_leader(from) {
            return;
        }
        let term = self.term;
        // Entries up to the commit index are committed, and so match the leader's: skip
        // them (they may also be compacted away already).
        let (prev_index, entries) = if prev_log_index < self.commit_index {
            let skip = (self.commit_index.0 - prev_log_index.0) as usize;
            (
                self.commit_index,
                entries.into_iter().skip(skip).collect::<Vec<_>>(),
            )
        } else {
            if prev_log_index > self.log.last_index() {
                let hint = ConflictHint {
                    term: None,
                    index: self.log.last_index().next(),
                };
                let message = Message::AppendEntriesResponse {
                    term,
                    success: false,
                    index: prev_log_index,
                    hint: Some(hint),
                };
                return self.send(from, message);
            }
            let local_term = self.log.term_at(prev_log_index);
            if local_term != Some(prev_log_term) {
                let hint = ConflictHint {
                    term: local_term,
                    index: self.log.first_index_of_term_at(prev_log_index),
                };
                let message = Message::AppendEntriesResponse {
                    term,
                    success: false,
                    index: prev_log_index,
                    hint: Some(hint),
                };
                return self.send(from, message);
            }
            (prev_log_index, entries)
        };
        let match_index = LogIndex(prev_index.0 + entries.len() as u64);
        debug_assert!(entries.last().is_none_or(|e| e.index == match_index));
        self.append_from_leader(entries);
        let commit = leader_commit.min(match_index);
        if commit > self.commit_index {
            self.advance_commit_index(commit);
            self.apply_committed();
        }
        self.send(
            from,
            Message::AppendEntriesResponse {
                term,
                success: true,
                index: match_index,
                hint: None,
            },
        );
    }

    /// Checks what any correct leader's AppendEntries satisfies.
    fn append_entries_well_formed(
        &self,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: &[Entry],
    ) -> bool {
        if prev_log_term > self.term
            || (prev_log_index == LogIndex::ZERO && prev_log_term != Term(0))
        {
            return false;
        }
        let mut expected_index = prev_log_index.next();
        let mut min_term = prev_log_term;
        for entry in entries {
            if entry.index != expected_index || entry.term < min_term || entry.term > self.term {
                return false;
            }
            if let crate::entry::EntryPayload::Membership { membership, .. } = &entry.payload {
                if membership.check_well_formed().is_err() {
                    return false;
                }
            }
            expected_index = expected_index.next();
            min_term = entry.term;
        }
        entries.len() <= self.config.append_entries_count_max.max(1) * 4
    }

    /// Appends entries that follow a matching prefix, truncating the first conflict.
    fn append_from_leader(&mut self, entries: Vec<Entry>) {
        let already_held = entries
            .iter()
            .take_while(|e| self.log.term_at(e.index) == Some(e.term))
            .count();
        let new_entries = entries.into_iter().skip(already_held);
        let mut new_entries = new_entries.peekable();
        let Some(first_index) = new_entries.peek().map(|e| e.index) else {
            return;
        };
        if first_index <= self.log.last_index() {
            // Committed entries never conflict with the leader's; only an uncommitted
            // suffix can be replaced.
            assert!(
                first_index > self.commit_index,
                "conflict at committed index {first_index}"
            );
            self.truncate_log_from(first_index);
        }
        let appended_from = self.ready.persist.entries.len();
        for entry in new_entries {
            self.log_time_max = self.log_time_max.max(entry.payload.timestamp());
            self.ready.persist.entries.push(entry.clone());
            self.log.append(entry);
        }
        let appended = std::mem::take(&mut self.ready.persist.entries);
        self.note_appended_memberships(appended[appended_from..].iter());
        self.ready.persist.entries = appended;
    }

    fn truncate_log_from(&mut self, index: LogIndex) {
        self.log.truncate_from(index);
        let persist = &mut self.ready.persist;
        persist.entries.retain(|e| e.index < index);
        persist.truncate_from = Some(persist.truncate_from.map_or(index, |t| t.min(index)));
        self.note_log_truncated(index);
    }

    pub(super) fn handle_append_entries_response(
        &mut self,
        from: NodeId,
        success: bool,
        index: LogIndex,
        hint: Option<ConflictHint>,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.heard(self.now);
        if index > last_index {
            return self.reject();
        }
        if success {
            if matches!(progress.state, ReplicationState::Probe { .. }) {
                progress.acknowledge(index);
                progress.become_replicate();
            } else if progress.acknowledge(index) {
                // Keep pipelining.
            }
            self.maybe_commit();
            if self.transfer.as_ref().is_some_and(|t| t.target == from) {
                return self.continue_transfer();
            }
        } else {
            if index < progress.match_index {
                return; // A stale rejection of something already acknowledged.
            }
            if let ReplicationState::Probe { .. } = progress.state {
                if index.next() != progress.next_index {
                    return; // Not the answer to the probe in flight.
                }
            }
            let next = match hint {
                Some(ConflictHint {
                    term: Some(term),
                    index: hint_index,
                }) => match self.log.last_index_of_term(term) {
                    Some(last_of_term) => last_of_term.next(),
                    None => hint_index,
                },
                Some(ConflictHint {
                    term: None,
                    index: hint_index,
                }) => hint_index,
                None => index,
            };
            let progress = self
                .progress
                .get_mut(&from)
                .expect("present: looked up above");
            progress.next_index = next.min(index).max(progress.match_index.next());
            progress.become_probe();
        }
        self.send_append_entries(from);
    }

    /// Sends what the follower's progress allows: entries in batches, or the snapshot if
    /// it needs compacted entries.
    pub(super) fn send_append_entries(&mut self, to: NodeId) {
        loop {
            let Some(progress) = self.progress.get(&to) else {
                return;
            };
            if matches!(progress.state, ReplicationState::Snapshot { .. }) {
                return self.send_snapshot_chunk(to);
            }
            if !progress.can_send(self.config.in_flight_messages_max) {
                return;
            }
            let is_probe = matches!(progress.state, ReplicationState::Probe { .. });
            let next_index = progress.next_index;
            let prev_log_index = next_index.prev();
            let Some(prev_log_term) = self.log.term_at(prev_log_index) else {
                return self.start_snapshot_transfer(to);
            };
            if !is_probe && next_index > self.log.last_index() {
                return;
            }
            let entries = self.log.entries_from(
                next_index,
                self.config.append_entries_bytes_max,
                self.config.append_entries_count_max,
            );
            let last_sent = entries.last().map_or(prev_log_index, |e| e.index);
            let progress = self
                .progress
                .get_mut(&to)
                .expect("present: looked up above");
            let leader_commit = self.commit_index;
            progress.sent(last_sent, self.now);
            let message = Message::AppendEntries {
                term: self.term,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            };
            self.send(to, message);
            if is_probe {
                return;
            }
        }
    }

    pub(super) fn on_heartbeat_tick(&mut self) {
        let in_flight_timeout_us = 2 * self.config.heartbeat_interval_us;
        for progress in self.progress.values_mut() {
            progress.expire_in_flight(self.now, in_flight_timeout_us);
            progress.resume_probe();
        }
        self.broadcast_heartbeat();
        self.replication_requested = true;
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        self.heartbeat_seq += 1;
        let seq = self.heartbeat_seq;
        for peer in self.peers.clone() {
            let commit = self
                .progress
                .get(&peer)
                .map_or(LogIndex::ZERO, |p| p.match_index.min(self.commit_index));
            self.send(
                peer,
                Message::Heartbeat {
                    term: self.term,
                    commit,
                    seq,
                },
            );
        }
        // A single-member cluster confirms its reads alone.
        self.confirm_reads();
    }

    pub(super) fn handle_heartbeat(&mut self, from: NodeId, commit: LogIndex, seq: u64) {
        if !self.accept_leader(from) {
            return;
        }
        // The leader caps `commit` at what it knows we hold, so this is safe as long as
        // our log still has it.
        let commit = commit.min(self.log.last_index());
        if commit > self.commit_index {
            self.advance_commit_index(commit);
            self.apply_committed();
        }
        let message = Message::HeartbeatResponse {
            term: self.term,
            seq,
            last_log_index: self.log.last_index(),
        };
        self.send(from, message);
    }

    pub(super) fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        seq: u64,
        last_log_index: LogIndex,
    ) {
        if self.role != Role::Leader || seq > self.heartbeat_seq {
            return;
        }
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.heard(self.now);
        progress.heartbeat_seq_acked = progress.heartbeat_seq_acked.max(seq);
        if last_log_index < last_index || progress.match_index < last_index {
            if matches!(progress.state, ReplicationState::Probe { .. })
                && last_log_index < progress.next_index.prev()
            {
                // The follower's log ends before our guess: probe right after its end
                // instead of spending a rejection to learn it.
                progress.next_index = last_log_index.next().max(progress.match_index.next());
            }
            progress.resume_probe();
            self.replication_requested = true;
        }
        self.confirm_reads();
    }

    /// Advances the commit index to the highest index stored on a quorum, provided it is
    /// of the current term (Raft §5.4.2: counting replicas of an older term's entry is how
    /// the Figure 8 anomaly commits an entry that is later overwritten).
    pub(super) fn maybe_commit(&mut self) {
        // The leader counts only its own entries that are durable: those not handed to
        // the shell yet may die with it, and a lone voter would otherwise commit (and
        // tell its learners) entries its crash then loses.
        let own_durable = self
            .ready
            .persist
            .entries
            .first()
            .map_or(self.log.last_index(), |first| LogIndex(first.index.0 - 1));
        let Some(quorum_index) = self.quorum_value(own_durable, |p| p.match_index) else {
            return;
        };
        if quorum_index > self.commit_index && self.log.term_at(quorum_index) == Some(self.term) {
            self.advance_commit_index(quorum_index);
            self.apply_committed();
            self.on_commit_advanced();
        }
    }

    /// The one place the commit index moves (a snapshot install aside, which moves it to
    /// the snapshot's last index): it only grows, and never past the last entry held.
    pub(super) fn advance_commit_index(&mut self, to: LogIndex) {
        assert!(
            to >= self.commit_index,
            "commit index went back from {} to {to}",
            self.commit_index
        );
        assert!(
            to <= self.log.last_index(),
            "commit index {to} beyond the last entry {}",
            self.log.last_index()
        );
        self.commit_index = to;
    }
}
