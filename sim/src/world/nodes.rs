//! Node lifecycle: crash (with what the disk loses), recovery from disk, start.

use super::*;

impl World<'_> {
    pub(super) fn crash(&mut self, id: NodeId) {
        self.stats.crashes += 1;
        self.tracer.digest(&[self.now.0, 6, id.0]);
        self.tracer.line(self.now, || format!("{id} crashes"));
        self.tracer.role(self.now, id, None);
        // What a crashed process had not yet handed to the wire dies with it: each of
        // its messages still in flight is lost with probability one half.
        let in_flight: Vec<(Time, u64)> = self
            .queue
            .iter()
            .filter(|(_, event)| matches!(event, Event::Message { envelope, .. } if envelope.from == id))
            .map(|(&key, _)| key)
            .collect();
        for key in in_flight {
            if self.chaos_rng.random_bool(0.5) {
                self.queue.remove(&key);
            }
        }
        let node = &mut self.nodes[id.0 as usize - 1];
        node.replica = None;
        node.timer = None;
        node.last_role = None;
        node.incarnation += 1;
        node.torn_write_down_us = None;
        node.churn_commit_watch = None;
        if let Some(store) = node.store.take() {
            let mut disk = store.into_disk();
            let report = disk.crash(&mut self.disk_rng);
            self.tracer
                .line(self.now, || format!("{id} disk after crash: {report:?}"));
            node.disk = Some(disk);
        }
    }

    /// Starts a node from its disk, as the real node does; refuses on damage.
    pub(super) fn restart(&mut self, id: NodeId) {
        let index = id.0 as usize - 1;
        if self.nodes[index].failed.is_some() || self.nodes[index].retired {
            return;
        }
        let Some(mut disk) = self.nodes[index].disk.take() else {
            return;
        };
        if let Some(ops) = self.nodes[index].recovery_crash_after_ops.take() {
            // Crash in the middle of recovery: its repairs may be half-done.
            disk.set_fail_after_ops(Some(ops));
            let trial =
                LogStore::open_with(&mut disk, self.scenario.tuning.store_config()).map(|_| ());
            disk.set_fail_after_ops(None);
            if let Err(StorageError::Disk(error)) = trial {
                disk.crash(&mut self.disk_rng);
                self.tracer.line(self.now, || {
                    format!("{id} crashes during recovery ({error})")
                });
                let node = &mut self.nodes[index];
                node.disk = Some(disk);
                node.incarnation += 1;
                let incarnation = node.incarnation;
                self.push(
                    self.now.saturating_add_us(100_000),
                    Event::Restart {
                        node: id,
                        incarnation,
                    },
                );
                return;
            }
        }
        let opened = LogStore::open_with(disk.clone(), self.scenario.tuning.store_config());
        let (store, recovered) = match opened {
            Ok(opened) => opened,
            Err(error @ StorageError::Corrupt { .. }) if self.nodes[index].corrupted => {
                self.tracer
                    .line(self.now, || format!("{id} refuses to start: {error}"));
                self.nodes[index].failed = Some(error.to_string());
                self.nodes[index].disk = Some(disk);
                if self
                    .scenario
                    .faults
                    .contains(crate::faults::FaultKind::Membership)
                    && matches!(self.phase, Phase::Chaos | Phase::Liveness)
                {
                    self.operator_replace_refused(id);
                }
                return;
            }
            Err(error) => {
                self.nodes[index].disk = Some(disk);
                return self.fail(Violation {
                    check: "recovery",
                    detail: format!("{id} cannot recover: {error}"),
                });
            }
        };
        let node = &mut self.nodes[index];
        if node
            .rotted_snapshot
            .as_ref()
            .is_some_and(|rotted| store.snapshot_meta() != Some(rotted))
        {
            // A newer snapshot replaced the rotted file before the crash (its save was
            // committed, then a later step of it failed): nothing damaged is left.
            node.rotted_snapshot = None;
            node.corrupted = false;
            node.corrupted_file = None;
        }
        let discarded = self.nodes[index]
            .corrupted_file
            .as_ref()
            .is_some_and(|file| !store.disk().list().unwrap_or_default().contains(file));
        if self.nodes[index].corrupted && discarded {
            // The damaged file held only what a durable snapshot covers (a compaction the
            // crash interrupted), and recovery removed it unread: nothing was lost.
            self.tracer.line(self.now, || {
                format!("{id} recovery discarded the corrupted file as covered by the snapshot")
            });
            self.nodes[index].corrupted = false;
        } else if self.nodes[index].corrupted {
            return self.fail(Violation {
                check: "recovery",
                detail: format!(
                    "{id} recovered from a disk with injected corruption without noticing"
                ),
            });
        }
        self.start_replica(id, store, recovered);
    }

    pub(super) fn start_replica(
        &mut self,
        id: NodeId,
        store: LogStore<MemDisk>,
        recovered: Recovered,
    ) {
        let index = id.0 as usize - 1;
        // A founder knows the founding voters (and writes them as entry 1 on an empty
        // disk); a node the operator added knows none and waits for the leader.
        let members: Vec<NodeId> = if self.nodes[index].founding {
            (1..=self.scenario.nodes).map(NodeId).collect()
        } else {
            Vec::new()
        };
        let mut config = Config::new(id, members);
        let tuning = &self.scenario.tuning;
        config.election_timeout_us_min = tuning.election_timeout_us_min;
        config.election_timeout_us_max = tuning.election_timeout_us_max();
        if self.sabotage == Some(Sabotage::NoElectionJitter) {
            config.election_timeout_us_max = config.election_timeout_us_min;
        }
        config.heartbeat_interval_us = tuning.heartbeat_interval_us;
        config.append_entries_count_max = tuning.append_entries_count_max;
        config.in_flight_messages_max = tuning.in_flight_messages_max;
        config.snapshot_threshold_entries = tuning.snapshot_threshold_entries;
        config.snapshot_chunk_bytes = tuning.snapshot_chunk_bytes;
        config.snapshot_read_bytes = tuning.snapshot_chunk_bytes;
        if let Some(sessions_max) = tuning.sessions_max {
            config.sessions_max = sessions_max;
        }
        if let Some(sessions_per_user_max) = tuning.sessions_per_user_max {
            config.sessions_per_user_max = sessions_per_user_max;
        }
        if let Some(session_expiry_us) = tuning.session_expiry_us {
            config.session_expiry_us = session_expiry_us;
        }
        if let Some(lag_entries_max) = tuning.promotion_lag_entries_max {
            config.promotion_lag_entries_max = lag_entries_max;
        }
        if let Some(pre_vote) = tuning.pre_vote {
            config.pre_vote = pre_vote;
        }
        if let Some(apply_step) = tuning.apply_entries_per_step_max {
            config.apply_entries_per_step_max = apply_step;
        }
        let node = &mut self.nodes[index];
        config.rng_seed = derive_seed(
            self.scenario.seed,
            Stream::Replicas,
            id.0 * 1_000_003 + node.starts,
        );
        node.starts += 1;
        let local_now = node.local_time(self.now);
        let entries = recovered.entries.len();
        let term = recovered.hard_state.term;
        match Replica::new(config, recovered, local_now) {
            Ok(replica) => {
                node.replica = Some(replica);
                node.store = Some(store);
            }
            Err(error) => {
                node.disk = Some(store.into_disk());
                return self.fail(Violation {
                    check: "recovery",
                    detail: format!("{id} cannot start: {error}"),
                });
            }
        }
        self.safety.node_restarted(id);
        self.tracer
            .digest(&[self.now.0, 9, id.0, term.0, entries as u64]);
        self.tracer.line(self.now, || {
            format!("{id} starts (term {term}, {entries} log entries recovered)")
        });
        self.after_input(id);
    }
}

impl World<'_> {
    /// A replica asked to save a snapshot of its own state: it becomes durable later, in
    /// the background, as on a real node (on a slow disk, as late as its bytes take).
    pub(super) fn start_snapshot_save(&mut self, id: NodeId, image: SnapshotImage) {
        let index = image.meta.last_index.0;
        let delay_us = match self.scenario.disk_cost {
            Some(cost) => cost.busy_us(image.encoded_size_bytes()),
            None => {
                1_000
                    + derive_seed(
                        self.scenario.seed,
                        Stream::SnapshotSaves,
                        id.0 << 32 ^ index,
                    ) % SNAPSHOT_SAVE_US_MAX
            }
        };
        self.tracer.line(self.now, || {
            format!("{id} saving a snapshot through {index} ({delay_us}us)")
        });
        let incarnation = self.node(id).incarnation;
        self.push(
            self.now.saturating_add_us(delay_us),
            Event::SnapshotSaved {
                node: id,
                incarnation,
                image: Box::new(image),
            },
        );
    }

    /// The background save is done: encode the image (virtual time: the encoding costs
    /// none here, as it costs the node's core thread none), write it to the node's disk
    /// (staged, synced, renamed) and hand the bytes to the replica, which then compacts
    /// its log and keeps them for followers. Lost if the node crashed since it asked.
    pub(super) fn snapshot_saved(&mut self, id: NodeId, incarnation: u64, image: SnapshotImage) {
        let node = self.node(id);
        if node.incarnation != incarnation || !node.is_up() {
            return;
        }
        if self.now < node.paused_until {
            // A paused process finishes nothing; it completes when the node resumes.
            let at = node.paused_until;
            self.push(
                at,
                Event::SnapshotSaved {
                    node: id,
                    incarnation,
                    image: Box::new(image),
                },
            );
            return;
        }
        let meta = image.meta.clone();
        self.tracer
            .digest(&[self.now.0, 12, id.0, meta.last_index.0]);
        let Some(store) = self.node_mut(id).store.as_mut() else {
            return;
        };
        // The node's path: encoded straight into the staged file, committed, and read
        // back from the file by the replica when it streams it.
        let saved = store.save_image(&image).and_then(|committed| {
            if committed {
                store.snapshot_source()
            } else {
                Ok(None)
            }
        });
        let source = match saved {
            Ok(source) => source,
            Err(error) => {
                // Fail-stop, as for any write that did not become durable.
                self.tracer.line(self.now, || {
                    format!("{id} snapshot save failed ({error}); crashing")
                });
                return self.crash_for(id, 1_000_000);
            }
        };
        self.tracer.line(self.now, || {
            format!("{id} snapshot through {} durable", meta.last_index)
        });
        let index = meta.last_index.0;
        self.with_replica(id, |replica, now| {
            replica.handle_snapshot_saved(now, meta, source)
        });
        self.maybe_heal_at_snapshot(id, index);
    }
}

/// The longest a snapshot save takes on the simulated disk without a disk cost: long
/// enough for crashes, elections and installs to happen in between.
const SNAPSHOT_SAVE_US_MAX: u64 = 200_000;
