//! The incremental state hash: a digest of the replicated state that costs O(1) to read
//! and O(changed data) to keep up to date.
//!
//! The state is a set of items (an account, a stored message, a session). Each item has
//! a 128-bit hash of a canonical encoding of its content, including its key, so an item
//! moved to another key is another item. A [`Digest`] is the wrapping sum of the hashes
//! of the items present: addition commutes, so the digest depends on the set of items
//! and not on the order in which they were added, and a mutation subtracts the item's
//! old hash and adds its new one. Sums are not secure against an adversary who chooses
//! items to collide; they only have to tell apart replicas that diverged by accident.
//!
//! Item hashes must be equal on every machine and build: XXH3-128 with its default secret over
//! bytes written by hand (fixed-width little-endian integers, length-prefixed strings)
//! or by bincode's standard configuration. Never std's `DefaultHasher`, which is
//! randomly keyed.

use xxhash_rust::xxh3::Xxh3Default;

/// A wrapping sum of item hashes. Zero for the empty set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Digest(u128);

impl Digest {
    pub(crate) fn add(&mut self, item: u128) {
        self.0 = self.0.wrapping_add(item);
    }

    pub(crate) fn remove(&mut self, item: u128) {
        self.0 = self.0.wrapping_sub(item);
    }

    /// An item changed from hash `old` to hash `new`.
    pub(crate) fn replace(&mut self, old: u128, new: u128) {
        self.remove(old);
        self.add(new);
    }

    pub(crate) fn value(self) -> u128 {
        self.0
    }
}

/// What an item hash starts with, so that two kinds of item with equal fields never hash
/// alike. Values are part of the pinned hash: never renumber them.
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub(crate) enum ItemKind {
    Account = 1,
    Message = 2,
    Session = 3,
    /// The read-time combination of [`crate::app::ChatState`]'s digest and counters.
    ChatState = 4,
    /// The read-time combination of a [`crate::session::SessionTable`].
    SessionTable = 5,
    /// The read-time combination of [`crate::machine::MachineState`].
    MachineState = 6,
}

/// XXH3 with a 128-bit output and its default secret (the `xxhash-rust` crate), streamed over
/// a canonical encoding. Item hashing sits on every applied command and on every
/// message of a snapshot decoded at restart (the digest is rebuilt from the items, see
/// `ChatState`), so its speed is restart time: XXH3 hashes a 300-byte message several
/// times faster than the hand-written SipHash-1-3 used before. Its output is well mixed
/// (a sum of item hashes needs every output bit to depend on every input byte); the
/// secret is fixed and public, so the hash is the same on every replica.
pub(crate) struct ItemHasher {
    state: Xxh3Default,
}

impl ItemHasher {
    pub(crate) fn new(kind: ItemKind) -> ItemHasher {
        let mut hasher = ItemHasher {
            // The default secret (seed 0): a seeded one is derived anew for every
            // hasher, which cost more than hashing a message.
            state: Xxh3Default::new(),
        };
        hasher.bytes(&[kind as u8]);
        hasher
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        self.state.update(bytes);
    }

    pub(crate) fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes(&value.to_le_bytes());
        self
    }

    pub(crate) fn u128(&mut self, value: u128) -> &mut Self {
        self.bytes(&value.to_le_bytes());
        self
    }

    pub(crate) fn bool(&mut self, value: bool) -> &mut Self {
        self.bytes(&[u8::from(value)]);
        self
    }

    /// Length first, so that ("ab", "c") and ("a", "bc") differ.
    pub(crate) fn str(&mut self, value: &str) -> &mut Self {
        self.u64(value.len() as u64);
        self.bytes(value.as_bytes());
        self
    }

    /// A serde value in bincode's standard encoding, streamed without a buffer.
    pub(crate) fn encoded<T: serde::Serialize>(&mut self, value: &T) -> &mut Self {
        // Encoding fails only for serde shapes bincode cannot express (sequences of
        // unknown length); derived types always report their lengths, and this writer
        // never fails.
        bincode::serde::encode_into_writer(value, &mut *self, bincode::config::standard())
            .expect("derived serde types always encode");
        self
    }

    pub(crate) fn finish(&self) -> u128 {
        self.state.digest128()
    }
}

impl bincode::enc::write::Writer for ItemHasher {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.bytes(bytes);
        Ok(())
    }
}

/// The 64-bit form of a 128-bit digest that shells display and compare.
pub(crate) fn fold64(value: u128) -> u64 {
    (value as u64) ^ ((value >> 64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::xxh3_128;

    #[test]
    fn streaming_in_pieces_equals_xxh3_of_the_whole_encoding() {
        // The item hash is XXH3-128 of the canonical bytes, however they were fed: the
        // kind byte, then integers as their little-endian bytes, strings after their
        // length.
        let mut expected = vec![ItemKind::Message as u8];
        expected.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(b"abc");
        expected.extend_from_slice(&u128::MAX.wrapping_sub(5).to_le_bytes());
        expected.push(1);
        let streamed = ItemHasher::new(ItemKind::Message)
            .u64(0x0102_0304_0506_0708)
            .str("abc")
            .u128(u128::MAX.wrapping_sub(5))
            .bool(true)
            .finish();
        assert_eq!(streamed, xxh3_128(&expected));
        // Long enough to cross XXH3's internal buffer, in uneven pieces.
        let long: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut pieces = ItemHasher::new(ItemKind::Account);
        for piece in long.chunks(7) {
            pieces.bytes(piece);
        }
        let mut whole = vec![ItemKind::Account as u8];
        whole.extend_from_slice(&long);
        assert_eq!(pieces.finish(), xxh3_128(&whole));
    }

    #[test]
    fn the_sum_is_independent_of_order_and_undone_by_removal() {
        let items: Vec<u128> = (0..5u64)
            .map(|n| ItemHasher::new(ItemKind::Message).u64(n).finish())
            .collect();
        let mut forward = Digest::default();
        items.iter().for_each(|&item| forward.add(item));
        let mut backward = Digest::default();
        items.iter().rev().for_each(|&item| backward.add(item));
        assert_eq!(forward, backward);
        assert_ne!(forward, Digest::default());
        items.iter().for_each(|&item| forward.remove(item));
        assert_eq!(forward, Digest::default());
    }

    #[test]
    fn kinds_and_string_boundaries_are_told_apart() {
        let hash = |kind, a: &str, b: &str| ItemHasher::new(kind).str(a).str(b).finish();
        assert_ne!(
            hash(ItemKind::Account, "ab", "c"),
            hash(ItemKind::Account, "a", "bc")
        );
        assert_ne!(
            hash(ItemKind::Account, "a", "b"),
            hash(ItemKind::Message, "a", "b")
        );
    }
}
