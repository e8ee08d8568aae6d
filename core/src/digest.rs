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
//! Item hashes must be equal on every machine and build: SipHash-1-3-128 with a fixed key
//! over bytes written by hand (fixed-width little-endian integers, length-prefixed
//! strings) or by bincode's standard configuration. Never std's `DefaultHasher`, which is
//! randomly keyed.

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

/// SipHash-1-3 with a 128-bit output and a fixed key, streamed over a canonical
/// encoding. SipHash because its output is well mixed (a sum of item hashes needs every
/// output bit to depend on every input byte) and it consumes 8 bytes per round where
/// FNV-1a consumes one: item hashing sits on every applied command. 1-3 rounds as in
/// Rust's std; the key is fixed, not secret, so the hash is the same on every replica.
pub(crate) struct ItemHasher {
    v: [u64; 4],
    /// Bytes written but not yet compressed (fewer than 8), in the low bytes.
    tail: u64,
    tail_len: u32,
    /// How many bytes were written: SipHash folds it (mod 256) into the last block.
    length: u64,
}

impl ItemHasher {
    /// "chat-cor", "e state" in ASCII, little-endian: any fixed value would do.
    const KEY: (u64, u64) = (0x726f_632d_7461_6863, 0x0065_7461_7473_2065);

    pub(crate) fn new(kind: ItemKind) -> ItemHasher {
        let mut hasher = ItemHasher::with_key(Self::KEY.0, Self::KEY.1);
        hasher.bytes(&[kind as u8]);
        hasher
    }

    fn with_key(k0: u64, k1: u64) -> ItemHasher {
        // 0xee: the 128-bit variant's tweak.
        Self::with_key_and_tweak(k0, k1, 0xee)
    }

    fn with_key_and_tweak(k0: u64, k1: u64, tweak: u64) -> ItemHasher {
        ItemHasher {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d ^ tweak,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            tail_len: 0,
            length: 0,
        }
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        self.length = self.length.wrapping_add(bytes.len() as u64);
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut le = [0u8; 8];
            le.copy_from_slice(word);
            self.word(u64::from_le_bytes(le));
        }
        for &byte in words.remainder() {
            self.tail |= u64::from(byte) << (8 * self.tail_len);
            self.tail_len += 1;
            if self.tail_len == 8 {
                self.compress(self.tail);
                self.tail = 0;
                self.tail_len = 0;
            }
        }
    }

    /// Eight more bytes (little-endian `word`), in one compression whatever the tail
    /// holds: items mix odd-length strings with integers, so most words arrive unaligned.
    /// The caller counts them in `length`.
    fn word(&mut self, word: u64) {
        if self.tail_len == 0 {
            return self.compress(word);
        }
        let shift = 8 * self.tail_len;
        self.compress(self.tail | (word << shift));
        self.tail = word >> (64 - shift);
    }

    fn compress(&mut self, word: u64) {
        self.v[3] ^= word;
        self.round();
        self.v[0] ^= word;
    }

    fn round(&mut self) {
        let [v0, v1, v2, v3] = &mut self.v;
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13) ^ *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16) ^ *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21) ^ *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17) ^ *v2;
        *v2 = v2.rotate_left(32);
    }

    pub(crate) fn u64(&mut self, value: u64) -> &mut Self {
        self.length = self.length.wrapping_add(8);
        self.word(value);
        self
    }

    pub(crate) fn u128(&mut self, value: u128) -> &mut Self {
        self.u64(value as u64).u64((value >> 64) as u64)
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
        self.finish_with_rounds(1, 3)
    }

    /// SipHash-c-d finalization, `compression` rounds per block and `finalization` per
    /// output half (the reference vectors are for 2-4). `compress` always runs one round,
    /// so only a 1-round hasher may be fed more than one block before this.
    fn finish_with_rounds(&self, compression: usize, finalization: usize) -> u128 {
        let mut v = self.v;
        let mut state = ItemHasher {
            v,
            tail: 0,
            tail_len: 0,
            length: 0,
        };
        let last = ((self.length & 0xff) << 56) | self.tail;
        state.v[3] ^= last;
        (0..compression).for_each(|_| state.round());
        state.v[0] ^= last;
        state.v[2] ^= 0xee;
        (0..finalization).for_each(|_| state.round());
        v = state.v;
        let low = v[0] ^ v[1] ^ v[2] ^ v[3];
        state.v[1] ^= 0xdd;
        (0..finalization).for_each(|_| state.round());
        v = state.v;
        let high = v[0] ^ v[1] ^ v[2] ^ v[3];
        (u128::from(high) << 64) | u128::from(low)
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

    /// SipHash's reference key, 00 01 .. 0f.
    fn reference_hasher() -> ItemHasher {
        ItemHasher::with_key(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908)
    }

    #[test]
    fn siphash_2_4_128_matches_the_reference_vectors() {
        // From the reference implementation's vectors (vectors_sip128), as bytes: the
        // empty message and the 7-byte message 00 01 .. 06, both within one block, so
        // the number of compression rounds per full block does not enter.
        let expected_empty = u128::from_le_bytes([
            0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55,
            0x02, 0x93,
        ]);
        assert_eq!(reference_hasher().finish_with_rounds(2, 4), expected_empty);
    }

    #[test]
    fn siphash_1_3_matches_python_over_several_blocks() {
        // CPython 3.11 hashes bytes with SipHash-1-3 (64-bit output). With
        // PYTHONHASHSEED=1 its key is these two words (its LCG from seed 1), and
        // `hash(bytes(range(15)))` and `hash(bytes(range(41)))` are, as u64, the values
        // below. This checks compression of full blocks and the tail, which the 128-bit
        // reference vector above (an empty message) does not reach.
        let (k0, k1) = (0xaed6_6ce1_84be_2329, 0xebe9_bbf1_f149_9052);
        for (length, expected) in [(15u8, 0xfa87_985f_39e9_7a53), (41, 0xfe17_eabf_81e4_441f)] {
            let mut hasher = ItemHasher::with_key_and_tweak(k0, k1, 0);
            hasher.bytes(&(0..length).collect::<Vec<u8>>());
            let last = ((hasher.length & 0xff) << 56) | hasher.tail;
            hasher.v[3] ^= last;
            hasher.round();
            hasher.v[0] ^= last;
            hasher.v[2] ^= 0xff;
            (0..3).for_each(|_| hasher.round());
            let v = hasher.v;
            assert_eq!(v[0] ^ v[1] ^ v[2] ^ v[3], expected, "{length} bytes");
        }
    }

    #[test]
    fn streaming_in_pieces_equals_one_write() {
        let message: Vec<u8> = (0..=40).collect();
        let mut whole = reference_hasher();
        whole.bytes(&message);
        for split in [1, 3, 7, 8, 9, 16, 17] {
            let mut pieces = reference_hasher();
            let (first, second) = message.split_at(split);
            for byte in first {
                pieces.bytes(std::slice::from_ref(byte));
            }
            pieces.bytes(second);
            assert_eq!(pieces.finish(), whole.finish(), "split at {split}");
        }
        // Integers are their little-endian bytes, aligned or not.
        for offset in 0..8 {
            let prefix: Vec<u8> = (0..offset).collect();
            let mut as_bytes = reference_hasher();
            as_bytes.bytes(&prefix);
            as_bytes.bytes(&0x0102_0304_0506_0708u64.to_le_bytes());
            as_bytes.bytes(&u128::MAX.wrapping_sub(5).to_le_bytes());
            let mut as_integers = reference_hasher();
            as_integers.bytes(&prefix);
            as_integers.u64(0x0102_0304_0506_0708);
            as_integers.u128(u128::MAX.wrapping_sub(5));
            assert_eq!(as_integers.finish(), as_bytes.finish(), "offset {offset}");
        }
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
