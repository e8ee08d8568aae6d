//! The linearizability search itself, independent of any model: Wing & Gong's
//! backtracking with Lowe's memoization, as in Porcupine's `checkSingle`.
//!
//! The history is a doubly linked list of call and return events in time order. The
//! search walks it from the front: at a call it tries to linearize that operation now
//! (the model accepts its recorded outcome in the current state and the pair (set of
//! linearized operations, model state) was never reached before), lifts it out of the
//! list and starts again from the front; at a return of an operation not yet
//! linearized it has gone too far, and backtracks. An operation with an unknown outcome
//! has no return event (its completion is at +infinity): it may be linearized anywhere
//! after its call, or never. The walk falling off the end of the list therefore means
//! every operation with a known outcome is linearized: success.

use std::collections::HashSet; // determinism: ok (membership tests only, never iterated)
use std::hash::BuildHasherDefault;

/// A model of the state one partition of operations acts on. `apply` either applies an
/// operation whose recorded outcome is possible in the current state and returns true,
/// or changes nothing and returns false.
pub(super) trait Model {
    /// Enough to restore the state as it was before an `apply`.
    type Mark: Copy;
    fn mark(&self) -> Self::Mark;
    fn undo(&mut self, mark: Self::Mark);
    fn apply(&mut self, op: usize) -> bool;
    /// A 128-bit digest of the state: two states with equal digests are taken as equal
    /// by the memo (a collision is about 2^-64 likely over a whole search).
    fn fingerprint(&self) -> u128;
}

/// When an operation was invoked and completed, as sortable keys: `time_us * 4 + rank`,
/// with calls before returns at equal times (concurrent, the permissive reading), except
/// that a call made at the very moment the same client's previous operation completed
/// sorts after that return (a client runs one operation at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Timing {
    pub call_key: u64,
    /// `None`: the outcome is unknown, the operation completes at +infinity.
    pub return_key: Option<u64>,
}

pub(super) const RANK_CALL: u64 = 0;
pub(super) const RANK_RETURN: u64 = 1;
pub(super) const RANK_CALL_AFTER_OWN_RETURN: u64 = 2;

pub(super) fn time_key(time_us: u64, rank: u64) -> u64 {
    time_us.saturating_mul(4).saturating_add(rank)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SearchResult {
    Linearizable,
    NotLinearizable,
    /// The step budget ran out first.
    Exhausted,
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// The event list: node 0 is the head sentinel, the others are calls and returns.
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
    op: Vec<usize>,
    is_return: Vec<bool>,
    /// For a call, its return node (NIL when the outcome is unknown).
    matching_return: Vec<usize>,
}

impl EventList {
    fn new(timings: &[Timing]) -> EventList {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * timings.len());
        for (op, timing) in timings.iter().enumerate() {
            events.push((timing.call_key, false, op));
            if let Some(return_key) = timing.return_key {
                debug_assert!(return_key > timing.call_key);
                events.push((return_key, true, op));
            }
        }
        events.sort_unstable();
        let count = events.len() + 1;
        let mut list = EventList {
            next: (1..=count)
                .map(|n| if n == count { NIL } else { n })
                .collect(),
            prev: (0..count).map(|n| n.wrapping_sub(1)).collect(),
            op: vec![NIL; count],
            is_return: vec![false; count],
            matching_return: vec![NIL; count],
        };
        let mut call_node = vec![NIL; timings.len()];
        for (index, &(_, is_return, op)) in events.iter().enumerate() {
            let node = index + 1;
            list.op[node] = op;
            list.is_return[node] = is_return;
            if is_return {
                list.matching_return[call_node[op]] = node;
            } else {
                call_node[op] = node;
            }
        }
        list.prev[HEAD] = NIL;
        list
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }

    /// Removes a call and its return (dancing links: the nodes keep their neighbours).
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        let ret = self.matching_return[call];
        if ret != NIL {
            self.unlink(ret);
        }
    }

    /// Puts back what `lift` removed, in the reverse order.
    fn unlift(&mut self, call: usize) {
        let ret = self.matching_return[call];
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(call);
    }
}

/// A deterministic hasher for the memo: its set is only probed, never iterated, but a
/// fixed hasher keeps even the memory layout the same from run to run.
type MemoHasher = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// Searches for a linearization of `timings.len()` operations (numbered as in
/// `timings`) against `model`, spending at most `steps_max` steps (one step = one event
/// visited). Adds the steps taken to `steps`.
pub(super) fn search<M: Model>(
    model: &mut M,
    timings: &[Timing],
    steps_max: u64,
    steps: &mut u64,
) -> SearchResult {
    let mut list = EventList::new(timings);
    let mut linearized = vec![0u64; timings.len().div_ceil(64)];
    let mut memo: HashSet<(Vec<u64>, u128), MemoHasher> = HashSet::default(); // determinism: ok (fixed-key hasher; only insert/contains, no iteration reaches an output)
    let mut stack: Vec<(usize, M::Mark)> = Vec::new();
    let mut spent: u64 = 0;
    let mut entry = list.next[HEAD];
    let result = loop {
        if entry == NIL {
            break SearchResult::Linearizable;
        }
        spent += 1;
        if spent > steps_max {
            break SearchResult::Exhausted;
        }
        let op = list.op[entry];
        let (word, bit) = (op / 64, 1u64 << (op % 64));
        if list.is_return[entry] {
            // An operation returned before it could be linearized: undo the last choice.
            let Some((call, mark)) = stack.pop() else {
                break SearchResult::NotLinearizable;
            };
            let popped = list.op[call];
            linearized[popped / 64] &= !(1u64 << (popped % 64));
            model.undo(mark);
            list.unlift(call);
            entry = list.next[call];
            continue;
        }
        let mark = model.mark();
        if model.apply(op) {
            linearized[word] |= bit;
            if memo.insert((linearized.clone(), model.fingerprint())) {
                stack.push((entry, mark));
                list.lift(entry);
                entry = list.next[HEAD];
                continue;
            }
            linearized[word] &= !bit;
            model.undo(mark);
        }
        entry = list.next[entry];
    };
    *steps += spent.min(steps_max);
    result
}

/// SplitMix64's finalizer: a cheap, well-mixed 64-bit hash of a 64-bit value.
pub(super) fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
