//! The in-memory replication log: the entries after the last snapshot. Storage keeps the
//! durable copy; this is the replica's view, always a contiguous run of indices.

use crate::entry::{Entry, SnapshotMeta};
use crate::types::{LogIndex, Term};

/// Entries a compaction set aside that one step frees (see [`RaftLog::free_retired_step`]).
/// Freeing an entry costs a few scattered frees (its command's strings and body), about
/// 0.3 us when it is long out of the cache: 2,048 of them are under a millisecond.
pub const RETIRED_ENTRIES_FREED_PER_STEP: usize = 2_048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error("log entry {found} follows snapshot/previous index {expected_prev}")]
    NotContiguous {
        expected_prev: LogIndex,
        found: LogIndex,
    },
    #[error("log entry {index} has term {term}, lower than its predecessor's {prev_term}")]
    TermDecreases {
        index: LogIndex,
        term: Term,
        prev_term: Term,
    },
}

#[derive(Clone, Debug)]
pub struct RaftLog {
    /// Everything up to and including this position lives only in the snapshot.
    snapshot: SnapshotMeta,
    /// `entries[i].index == snapshot.last_index + 1 + i`.
    entries: Vec<Entry>,
    /// `entries_end_bytes[i]`: the estimated size ([`Entry::size_bytes_estimate`]) of
    /// every entry ever appended up to and including `entries[i]`, counted from an
    /// arbitrary origin; `base_bytes` is the same count at the snapshot point. So the
    /// bytes of any prefix of the log cost a subtraction: what snapshots bound the
    /// in-memory log by.
    entries_end_bytes: Vec<u64>,
    base_bytes: u64,
    /// Entries a snapshot now covers, out of the log but not yet freed. A snapshot every
    /// 65,536 entries or more meant freeing that many at once, 20-45 ms in one step
    /// (measured on the node at 400k messages) during which the replica answered nobody;
    /// they are freed a bounded number per step instead ([`Self::free_retired_step`]).
    /// Each `Vec` is one compaction's prefix.
    retired: Vec<Vec<Entry>>,
}

impl RaftLog {
    pub fn new(snapshot: SnapshotMeta, entries: Vec<Entry>) -> Result<RaftLog, LogError> {
        let mut prev_index = snapshot.last_index;
        let mut prev_term = snapshot.last_term;
        for entry in &entries {
            if entry.index != prev_index.next() {
                return Err(LogError::NotContiguous {
                    expected_prev: prev_index,
                    found: entry.index,
                });
            }
            if entry.term < prev_term {
                return Err(LogError::TermDecreases {
                    index: entry.index,
                    term: entry.term,
                    prev_term,
                });
            }
            prev_index = entry.index;
            prev_term = entry.term;
        }
        let entries_end_bytes = entries
            .iter()
            .scan(0u64, |end, e| {
                *end += e.size_bytes_estimate() as u64;
                Some(*end)
            })
            .collect();
        Ok(RaftLog {
            snapshot,
            entries,
            entries_end_bytes,
            base_bytes: 0,
            retired: Vec::new(),
        })
    }

    /// The estimated bytes of the entries held after the snapshot up to and including
    /// `index` (all of them if `index` is past the end).
    pub fn entries_bytes_through(&self, index: LogIndex) -> u64 {
        if index <= self.snapshot.last_index || self.entries.is_empty() {
            return 0;
        }
        let offset =
            ((index.0 - self.snapshot.last_index.0 - 1) as usize).min(self.entries.len() - 1);
        self.entries_end_bytes[offset] - self.base_bytes
    }

    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// The first index held as an entry (not only in the snapshot).
    pub fn first_index(&self) -> LogIndex {
        self.snapshot.last_index.next()
    }

    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.snapshot.last_index.0 + self.entries.len() as u64)
    }

    pub fn last_term(&self) -> Term {
        self.entries
            .last()
            .map_or(self.snapshot.last_term, |e| e.term)
    }

    /// The term of the entry at `index`, if known: the snapshot's last position counts,
    /// anything compacted before it does not.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot.last_index {
            return Some(self.snapshot.last_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.snapshot.last_index {
            return None;
        }
        let offset = (index.0 - self.snapshot.last_index.0 - 1) as usize;
        self.entries.get(offset)
    }

    /// Entries from `start`, at least one if any exist, bounded by an estimated size.
    pub fn entries_from(&self, start: LogIndex, bytes_max: usize, count_max: usize) -> Vec<Entry> {
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut index = start;
        while let Some(entry) = self.entry(index) {
            let size = entry.size_bytes_estimate();
            if !batch.is_empty() && (batch_bytes + size > bytes_max || batch.len() >= count_max) {
                break;
            }
            batch_bytes += size;
            batch.push(entry.clone());
            index = index.next();
        }
        batch
    }

    pub fn append(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index().next(),
            "log append must be contiguous"
        );
        debug_assert!(entry.term >= self.last_term());
        let end = self
            .entries_end_bytes
            .last()
            .copied()
            .unwrap_or(self.base_bytes);
        self.entries_end_bytes
            .push(end + entry.size_bytes_estimate() as u64);
        self.entries.push(entry);
    }

    /// Drops every entry at or after `index`.
    pub fn truncate_from(&mut self, index: LogIndex) {
        assert!(
            index > self.snapshot.last_index,
            "cannot truncate into the snapshot"
        );
        let keep = (index.0 - self.snapshot.last_index.0 - 1) as usize;
        self.entries.truncate(keep);
        self.entries_end_bytes.truncate(keep);
    }

    /// Moves the snapshot point forward to `meta`, keeping the entries after it if they
    /// continue it, and dropping everything otherwise. Returns whether the suffix was kept.
    pub fn compact_to(&mut self, meta: SnapshotMeta) -> bool {
        assert!(
            meta.last_index >= self.snapshot.last_index,
            "snapshots only move forward"
        );
        let keeps_suffix = self.term_at(meta.last_index) == Some(meta.last_term);
        if keeps_suffix {
            let drop = (meta.last_index.0 - self.snapshot.last_index.0) as usize;
            if drop > 0 {
                self.base_bytes = self.entries_end_bytes[drop - 1];
            }
            // The suffix is copied (entries applied while the snapshot was saved); the
            // prefix keeps its allocation and is freed later.
            let suffix = self.entries.split_off(drop);
            let prefix = std::mem::replace(&mut self.entries, suffix);
            self.retire(prefix);
            self.entries_end_bytes.drain(..drop);
        } else {
            let all = std::mem::take(&mut self.entries);
            self.retire(all);
            self.entries_end_bytes.clear();
            self.base_bytes = 0;
        }
        self.snapshot = meta;
        keeps_suffix
    }

    fn retire(&mut self, entries: Vec<Entry>) {
        if !entries.is_empty() {
            self.retired.push(entries);
        }
    }

    /// Frees up to [`RETIRED_ENTRIES_FREED_PER_STEP`] of the entries compactions set
    /// aside for each compaction still waiting, newest first. The replica calls it on
    /// every `poll_ready`, so a compaction's cost is spread over the calls after it
    /// instead of stopping one; if compactions come faster than that frees them, the
    /// budget grows with the batches waiting, so what is set aside stays bounded.
    pub fn free_retired_step(&mut self) {
        let mut budget = RETIRED_ENTRIES_FREED_PER_STEP.saturating_mul(self.retired.len());
        while budget > 0 {
            let Some(batch) = self.retired.last_mut() else {
                return;
            };
            let freed = budget.min(batch.len());
            batch.truncate(batch.len() - freed);
            budget -= freed;
            if batch.is_empty() {
                self.retired.pop();
            }
        }
    }

    /// Entries set aside by compactions and not yet freed.
    pub fn retired_len(&self) -> usize {
        self.retired.iter().map(Vec::len).sum()
    }

    /// For a conflict hint: the first index of the run of entries that share the term at
    /// `index`, not looking before the snapshot.
    pub fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term_at(index) else {
            return index;
        };
        let mut first = index;
        while first > self.first_index() && self.term_at(first.prev()) == Some(term) {
            first = first.prev();
        }
        first
    }

    /// The last index holding an entry of `term`, if this log has any.
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        if let Some(entry) = self.entries.iter().rev().find(|e| e.term <= term) {
            return (entry.term == term).then_some(entry.index);
        }
        (self.snapshot.last_term == term).then_some(self.snapshot.last_index)
    }

    /// Raft's election restriction: is a log ending at (`last_index`, `last_term`) at
    /// least as up to date as this one?
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::EntryPayload;
    use crate::types::Time;

    fn noop(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Noop { timestamp: Time(0) },
        }
    }

    #[test]
    fn a_compacted_prefix_is_freed_a_bounded_number_per_step() {
        let base = SnapshotMeta {
            last_index: LogIndex::ZERO,
            last_term: Term(0),
        };
        let count = RETIRED_ENTRIES_FREED_PER_STEP as u64 * 2 + 10;
        let mut log = RaftLog::new(base, (1..=count).map(|i| noop(i, 1)).collect()).expect("valid");
        let kept = log.compact_to(SnapshotMeta {
            last_index: LogIndex(count - 5),
            last_term: Term(1),
        });
        assert!(kept);
        // The log is the suffix at once; the prefix waits to be freed.
        assert_eq!(log.first_index(), LogIndex(count - 4));
        assert_eq!(
            log.entry(LogIndex(count)).map(|e| e.index),
            Some(LogIndex(count))
        );
        assert_eq!(log.retired_len(), (count - 5) as usize);
        log.free_retired_step();
        let left = (count - 5) as usize - RETIRED_ENTRIES_FREED_PER_STEP;
        assert_eq!(log.retired_len(), left);
        // A second compaction (here one that drops the suffix too) adds its own batch,
        // and with two batches waiting a step frees twice as many.
        assert!(!log.compact_to(SnapshotMeta {
            last_index: LogIndex(count + 100),
            last_term: Term(3),
        }));
        assert_eq!(log.retired_len(), left + 5);
        log.free_retired_step();
        assert_eq!(
            log.retired_len(),
            (left + 5).saturating_sub(2 * RETIRED_ENTRIES_FREED_PER_STEP)
        );
        log.free_retired_step();
        assert_eq!(log.retired_len(), 0);
        log.free_retired_step();
        assert_eq!(log.retired_len(), 0);
    }

    #[test]
    fn prefix_bytes_follow_appends_truncations_and_compactions() {
        let size = noop(1, 1).size_bytes_estimate() as u64;
        let base = SnapshotMeta {
            last_index: LogIndex::ZERO,
            last_term: Term(0),
        };
        let mut log = RaftLog::new(base, (1..=3).map(|i| noop(i, 1)).collect()).expect("valid");
        assert_eq!(log.entries_bytes_through(LogIndex(2)), 2 * size);
        assert_eq!(log.entries_bytes_through(LogIndex(99)), 3 * size);
        log.append(noop(4, 1));
        log.truncate_from(LogIndex(3));
        assert_eq!(log.entries_bytes_through(LogIndex(99)), 2 * size);
        log.append(noop(3, 2));
        let kept = log.compact_to(SnapshotMeta {
            last_index: LogIndex(2),
            last_term: Term(1),
        });
        assert!(kept);
        assert_eq!(log.entries_bytes_through(LogIndex(2)), 0);
        assert_eq!(log.entries_bytes_through(LogIndex(3)), size);
        assert!(!log.compact_to(SnapshotMeta {
            last_index: LogIndex(9),
            last_term: Term(3),
        }));
        assert_eq!(log.entries_bytes_through(LogIndex(99)), 0);
        log.append(noop(10, 3));
        assert_eq!(log.entries_bytes_through(LogIndex(10)), size);
    }
}
