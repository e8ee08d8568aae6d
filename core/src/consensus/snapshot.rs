//! Snapshots: taking one when the log grows, streaming it in chunks to a follower that
//! needs compacted entries, and installing one received.

use super::message::Message;
use super::progress::ReplicationState;
use super::replica::{IncomingChunk, IncomingSnapshot, Replica, Role};
use crate::entry::{Snapshot, SnapshotMeta};
use crate::machine::{MachineState, SnapshotImage};
use crate::snapshot_source::{snapshot_checksum, SnapshotSource};
use crate::types::{LogIndex, NodeId};
use rand::Rng;
use std::sync::Arc;

/// The snapshot the shell is saving for this replica: what it was asked for, so that the
/// report can be matched and its bytes checked.
#[derive(Debug)]
pub(super) struct SnapshotSaving {
    pub(super) meta: SnapshotMeta,
    /// The image's state hash, to check the bytes the shell reports against.
    state_hash: u64,
}

/// Debug builds decode a reported snapshot up to this size to check that it is the image
/// the replica handed out: a shell that reported other bytes would have followers install
/// a state this replica never had. Larger ones are not checked, since decoding is linear
/// and the point of encoding off the core thread is not to pay that on it.
const SNAPSHOT_CHECK_BYTES_MAX: u64 = 1 << 20;

impl Replica {
    /// Asks the shell to save a snapshot once enough applied entries follow the last
    /// one. The log is compacted only when the shell reports it durable
    /// ([`Replica::handle_snapshot_saved`]): until then a crash must find every entry the
    /// snapshot would cover. One save at a time.
    ///
    /// The shell gets an image, a copy-on-write clone of the state (a pointer per account
    /// and session), and encodes it on its own thread: the core thread never pays for the
    /// size of the state here.
    pub(super) fn maybe_snapshot(&mut self) {
        if self.snapshot_saving.is_some() {
            return;
        }
        if self.last_applied < self.commit_index {
            // Catching up a step at a time (`apply_entries_per_step_max`): one snapshot
            // once caught up, not one per threshold crossed on the way, each a save of
            // the whole state.
            return;
        }
        if !self.snapshot_due() {
            return;
        }
        let Some(last_term) = self.log.term_at(self.last_applied) else {
            return;
        };
        let meta = SnapshotMeta {
            last_index: self.last_applied,
            last_term,
        };
        self.snapshot_refresh_requested = false;
        self.snapshot_saving = Some(SnapshotSaving {
            meta: meta.clone(),
            state_hash: self.machine.state_hash(),
        });
        self.ready.snapshot_to_save = Some(SnapshotImage {
            meta,
            state: self.machine.clone(),
        });
    }

    /// Enough applied entries, or enough of their bytes, follow the last snapshot.
    fn snapshot_due(&self) -> bool {
        let since_entries = self.last_applied.0 - self.log.snapshot_meta().last_index.0;
        if since_entries == 0 {
            return false;
        }
        if self.snapshot_refresh_requested {
            return true;
        }
        // The drawn threshold's jitter, applied to the byte bound too.
        let threshold_bytes = u128::from(self.config.snapshot_threshold_bytes)
            * u128::from(self.snapshot_threshold_entries)
            / u128::from(self.config.snapshot_threshold_entries.max(1));
        since_entries >= self.snapshot_threshold_entries
            || u128::from(self.log.entries_bytes_through(self.last_applied)) >= threshold_bytes
    }

    pub(super) fn on_snapshot_saved(&mut self, meta: SnapshotMeta, source: Option<SnapshotSource>) {
        let meta = &meta;
        let saving = self.snapshot_saving.take_if(|s| s.meta == *meta);
        // Anything else is a shell bug: a report of a save never asked for, or of one
        // asked for before a restart (the shell must drop those).
        debug_assert!(
            saving.is_some(),
            "reported saved {meta:?}, not the save in progress"
        );
        let Some(saving) = saving else {
            return;
        };
        let Some(source) = source else {
            assert!(
                meta.last_index <= self.log.snapshot_meta().last_index,
                "the shell declined the save of {meta:?}, which no snapshot held covers"
            );
            return;
        };
        assert_eq!(
            &source.meta, meta,
            "the shell reported another snapshot's source as the one saved"
        );
        if cfg!(debug_assertions) && source.len_bytes <= SNAPSHOT_CHECK_BYTES_MAX {
            let bytes = source.read_all();
            let decoded_hash = bytes
                .as_deref()
                .map_err(Clone::clone)
                .and_then(MachineState::decode)
                .map(|m| m.state_hash());
            assert_eq!(
                decoded_hash,
                Ok(saving.state_hash),
                "the shell reported bytes that are not the image of {meta:?}"
            );
            let checksum = bytes.map(|bytes| snapshot_checksum(meta, &bytes));
            assert_eq!(
                checksum,
                Ok(source.checksum),
                "the shell reported a checksum that is not that of {meta:?}"
            );
        }
        if meta.last_index <= self.log.snapshot_meta().last_index {
            // A snapshot from the leader was installed meanwhile; it covers this one.
            return;
        }
        let kept_suffix = self.log.compact_to(meta.clone());
        debug_assert!(
            kept_suffix,
            "applied entries stay in the log until compacted"
        );
        self.snapshot = Some(source);
        self.metrics.snapshots_taken += 1;
        self.draw_snapshot_threshold();
        // Applied entries may have passed the next threshold while it was saved.
        self.maybe_snapshot();
    }

    /// Draws the next snapshot threshold, uniformly from the configured one to half again
    /// as much (both included), from this replica's own seeded stream. A snapshot encodes and writes the
    /// whole state (on the shell's thread, but with the disk and the CPU the replica
    /// shares); at one shared threshold every replica did so at the same applied
    /// index, so a whole cluster stalled at once. With a threshold per replica, drawn
    /// anew after each snapshot, the stalls spread out, and the cluster still has a
    /// quorum that is not snapshotting. The threshold never falls below the configured
    /// one, so the log grows by at most half again.
    pub(super) fn draw_snapshot_threshold(&mut self) {
        let base = self.config.snapshot_threshold_entries;
        let spread = base / 2;
        self.snapshot_threshold_entries =
            base.saturating_add(self.snapshot_rng.random_range(0..=spread));
    }

    /// Records a new snapshot for storage: entries it covers need not be written, and
    /// any truncation must not reach below it.
    fn set_persist_snapshot(&mut self, snapshot: Snapshot) {
        let last_index = snapshot.meta.last_index;
        let persist = &mut self.ready.persist;
        persist.entries.retain(|e| e.index > last_index);
        if let Some(truncate_from) = persist.truncate_from.as_mut() {
            *truncate_from = (*truncate_from).max(last_index.next());
        }
        // The bytes stay shared with the persist (and in memory) until the shell attaches
        // the file it writes them to (`Replica::attach_snapshot_source`).
        self.snapshot = Some(SnapshotSource::in_memory(&snapshot));
        persist.snapshot = Some(snapshot);
    }

    pub(super) fn start_snapshot_transfer(&mut self, to: NodeId) {
        let last_index = self.log.snapshot_meta().last_index;
        debug_assert!(self.snapshot.is_some(), "a compacted log has a snapshot");
        if let Some(progress) = self.progress.get_mut(&to) {
            progress.state = ReplicationState::Snapshot {
                last_index,
                next_offset: 0,
                in_flight: false,
            };
            progress.in_flight.clear();
        }
        self.send_snapshot_chunk(to);
    }

    pub(super) fn send_snapshot_chunk(&mut self, to: NodeId) {
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        let Some(progress) = self.progress.get_mut(&to) else {
            return;
        };
        let ReplicationState::Snapshot {
            last_index,
            next_offset,
            in_flight,
        } = &mut progress.state
        else {
            return;
        };
        if *in_flight {
            return;
        }
        if *last_index != snapshot.meta.last_index {
            // A newer snapshot replaced the one being sent: start over with it.
            *last_index = snapshot.meta.last_index;
            *next_offset = 0;
        }
        let total_bytes = snapshot.len_bytes;
        let start = (*next_offset).min(total_bytes);
        let end = start
            .saturating_add(self.config.snapshot_chunk_bytes as u64)
            .min(total_bytes);
        // At most `snapshot_chunk_bytes`, a usize.
        let mut data = vec![0; (end - start) as usize];
        if snapshot.read_at(start, &mut data).is_err() {
            // The shell's file could not be read (the shell logs why, in its disk): not
            // in flight, so the next heartbeat round tries again.
            self.metrics.snapshot_read_errors += 1;
            return;
        }
        *in_flight = true;
        let message = Message::InstallSnapshot {
            term: self.term,
            meta: snapshot.meta.clone(),
            total_bytes,
            checksum: snapshot.checksum,
            offset: start,
            data,
            done: end == total_bytes,
        };
        self.metrics.snapshot_chunks_sent += 1;
        self.send(to, message);
    }

    pub(super) fn handle_install_snapshot(&mut self, from: NodeId, chunk: IncomingChunk) {
        let IncomingChunk {
            meta,
            total_bytes,
            checksum,
            offset,
            data,
            done,
        } = chunk;
        let end = offset.checked_add(data.len() as u64);
        let well_formed = meta.last_index > LogIndex::ZERO
            && meta.last_term <= self.term
            && total_bytes <= self.config.snapshot_bytes_max
            && end.is_some_and(|end| end <= total_bytes && done == (end == total_bytes));
        if !well_formed {
            return self.reject();
        }
        if !self.accept_leader(from) {
            return;
        }
        let term = self.term;
        let last_index = meta.last_index;
        if last_index <= self.commit_index {
            // We already hold everything it contains.
            self.incoming_snapshot = None;
            let message = Message::InstallSnapshotResponse {
                term,
                last_index: self.commit_index,
                next_offset: total_bytes,
                installed: true,
                refused: false,
            };
            return self.send(from, message);
        }
        if offset == 0 {
            self.incoming_snapshot = Some(IncomingSnapshot {
                meta: meta.clone(),
                total_bytes,
                checksum,
                // Exactly the size announced (at most `snapshot_bytes_max`, checked
                // above): the buffer becomes the installed snapshot's shared bytes, kept
                // until the next one, so it must not carry the spare capacity of growth.
                data: Vec::with_capacity(total_bytes as usize),
            });
        }
        let expected_offset = match &self.incoming_snapshot {
            Some(incoming)
                if incoming.meta == meta
                    && incoming.total_bytes == total_bytes
                    && incoming.checksum == checksum =>
            {
                incoming.data.len() as u64
            }
            _ => 0,
        };
        if offset != expected_offset {
            let message = Message::InstallSnapshotResponse {
                term,
                last_index,
                next_offset: expected_offset,
                installed: false,
                refused: false,
            };
            return self.send(from, message);
        }
        let Some(incoming) = self.incoming_snapshot.as_mut() else {
            return;
        };
        incoming.data.extend_from_slice(&data);
        if !done {
            let next_offset = incoming.data.len() as u64;
            return self.send(
                from,
                Message::InstallSnapshotResponse {
                    term,
                    last_index,
                    next_offset,
                    installed: false,
                    refused: false,
                },
            );
        }
        let Some(incoming) = self.incoming_snapshot.take() else {
            return;
        };
        // Bytes that do not match the sender's checksum (its file rotted, or a bug) are
        // never installed; the leader starts over from offset 0.
        let intact = snapshot_checksum(&incoming.meta, &incoming.data) == incoming.checksum;
        let decoded = intact
            .then(|| MachineState::decode(&incoming.data).ok())
            .flatten();
        let Some(machine) = decoded else {
            self.metrics.snapshots_refused += 1;
            self.reject();
            return self.send(
                from,
                Message::InstallSnapshotResponse {
                    term,
                    last_index,
                    next_offset: 0,
                    installed: false,
                    refused: true,
                },
            );
        };
        self.install_snapshot(
            Snapshot {
                meta: incoming.meta,
                // The received bytes become the shared copy, not copied.
                data: Arc::new(incoming.data),
            },
            machine,
        );
        self.send(
            from,
            Message::InstallSnapshotResponse {
                term,
                last_index,
                next_offset: total_bytes,
                installed: true,
                refused: false,
            },
        );
    }

    fn install_snapshot(&mut self, snapshot: Snapshot, machine: MachineState) {
        let meta = snapshot.meta.clone();
        let kept_suffix = self.log.compact_to(meta.clone());
        self.set_persist_snapshot(snapshot);
        if !kept_suffix {
            let persist = &mut self.ready.persist;
            persist.entries.clear();
            persist.truncate_from = Some(meta.last_index.next());
        }
        self.machine = machine;
        // Committed writes still waiting for their apply (kept across a step-down) are
        // covered by the snapshot: their outcome is in its session table, not known
        // here. A retry of the same session request gets it.
        let still_pending = self.pending_writes.split_off(&meta.last_index.next());
        let covered = std::mem::replace(&mut self.pending_writes, still_pending);
        for (_, request_id) in covered.into_values() {
            let error = self.not_leader();
            self.reply_err(request_id, error);
        }
        self.log_time_max = self.log_time_max.max(self.machine.log_time);
        self.advance_commit_index(meta.last_index);
        self.last_applied = meta.last_index;
        self.note_snapshot_installed(meta.last_index, kept_suffix);
        self.metrics.snapshots_installed += 1;
    }

    pub(super) fn handle_install_snapshot_response(
        &mut self,
        from: NodeId,
        last_index: LogIndex,
        next_offset: u64,
        installed: bool,
        refused: bool,
    ) {
        if self.role != Role::Leader {
            return;
        }
        if refused && self.snapshot.as_ref().map(|s| s.meta.last_index) == Some(last_index) {
            // The follower got every byte and they did not match: the bytes went bad on
            // the wire or in this leader's file, which a resend would only repeat. A fresh
            // snapshot replaces the file (at the next applied entry: see `snapshot_due`).
            self.metrics.snapshot_refusals_received += 1;
            self.snapshot_refresh_requested = true;
            self.maybe_snapshot();
        }
        let log_last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.heard(self.now);
        if installed {
            if last_index > log_last_index {
                return self.reject();
            }
            progress.acknowledge(last_index);
            if matches!(progress.state, ReplicationState::Snapshot { .. }) {
                progress.next_index = progress.match_index.next();
                progress.become_probe();
            }
            self.maybe_commit();
            return self.send_append_entries(from);
        }
        if let ReplicationState::Snapshot {
            last_index: sending,
            next_offset: offset,
            in_flight,
        } = &mut progress.state
        {
            if *sending == last_index {
                *offset = next_offset;
                *in_flight = false;
                self.send_snapshot_chunk(from);
            }
        }
    }
}
