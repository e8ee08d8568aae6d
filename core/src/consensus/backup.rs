//! A copy of the applied state for an operator's backup (`chatctl snapshot save`). Kept
//! apart from `snapshot.rs` (the replica's own snapshots and their installation): it
//! changes nothing, and the shell decides when the state is recent enough to be worth
//! copying (the node confirms leadership with a linearizable read first).

use super::replica::Replica;
use crate::entry::SnapshotMeta;
use crate::machine::SnapshotImage;

impl Replica {
    /// The applied state through the last applied index, as a copy-on-write image (a
    /// pointer per account and session, like the replica's own snapshots): the shell
    /// encodes it off the core thread ([`SnapshotImage::encode`]); its hash is
    /// `image.state.state_hash()`. `None` only before anything was applied (no term is
    /// known for index 0 of a log that starts there, and there is nothing to back up).
    pub fn export_image(&self) -> Option<SnapshotImage> {
        let last_index = self.last_applied;
        let last_term = self.log.term_at(last_index).filter(|_| last_index.0 > 0)?;
        Some(SnapshotImage {
            meta: SnapshotMeta {
                last_index,
                last_term,
            },
            state: self.machine.clone(),
        })
    }
}
