//! A copy of the applied state for an operator's backup (`chatctl snapshot save`). Kept
//! apart from `snapshot.rs` (the replica's own snapshots and their installation): it
//! changes nothing, and the shell decides when the state is recent enough to be worth
//! copying (the node confirms leadership with a linearizable read first).

use super::replica::Replica;
use crate::entry::{Snapshot, SnapshotMeta};

impl Replica {
    /// The applied state as a snapshot through the last applied index, and its state
    /// hash. `None` only before anything was applied (no term is known for index 0 of a
    /// log that starts there, and there is nothing to back up).
    pub fn export_snapshot(&self) -> Option<(Snapshot, u64)> {
        let last_index = self.last_applied;
        let last_term = self.log.term_at(last_index).filter(|_| last_index.0 > 0)?;
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                last_index,
                last_term,
            },
            data: self.machine.encode(),
        };
        Some((snapshot, self.machine.state_hash()))
    }
}
