//! MurmurHash3 x86_32 over byte slices, and the flagd bucketing built on it.
//!
//! Why our own hash rather than the `murmur3` crate: that crate reads through `io::Read`, which
//! measured 58 ns for 40 bytes on the reference machine against about 16 ns for this slice-based
//! loop, and `fractional` hashes on every evaluation. This version can also hash `flagKey` and
//! `targetingKey` as two slices, as if concatenated, without building the concatenation (which
//! would allocate). The `murmur3` crate stays as the reference: a proptest checks that both agree
//! on arbitrary inputs and arbitrary split points.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix_block(hash: u32, block: u32) -> u32 {
    let k = block.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (hash ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn mix_tail(hash: u32, tail: &[u8]) -> u32 {
    debug_assert!(tail.len() < 4);
    if tail.is_empty() {
        return hash;
    }
    mix_tail_word(hash, little_endian_word(tail, &[]))
}

#[inline(always)]
fn finish(mut hash: u32, len: usize) -> u32 {
    // The reference implementation mixes in the length modulo 2^32.
    hash ^= len as u32;
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

#[inline(always)]
fn mix_blocks(mut hash: u32, bytes: &[u8]) -> (u32, &[u8]) {
    let mut chunks = bytes.chunks_exact(4);
    for chunk in &mut chunks {
        hash = mix_block(
            hash,
            u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
        );
    }
    (hash, chunks.remainder())
}

/// MurmurHash3 x86_32 of `bytes` with `seed`.
pub fn murmur3_x86_32(bytes: &[u8], seed: u32) -> u32 {
    let (hash, tail) = mix_blocks(seed, bytes);
    finish(mix_tail(hash, tail), bytes.len())
}

/// MurmurHash3 x86_32 (seed 0) of the concatenation `first ++ second`, without concatenating.
pub fn murmur3_x86_32_concat(first: &[u8], second: &[u8]) -> u32 {
    MurmurPrefix::new(first).hash_with(second)
}

/// The murmur3 state after hashing a fixed prefix (a flag key): computed once per flag at
/// compile time, so evaluation only hashes the prefix's last partial block and the suffix
/// (the targeting key).
///
/// Blocks are read in place; the one block that straddles prefix and suffix is assembled in a
/// register. (Copying both into a stack buffer measured slower: re-reading freshly `memcpy`'d
/// bytes as words stalls on store forwarding.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MurmurPrefix {
    hash: u32,
    /// The prefix's trailing bytes that do not fill a block, little-endian.
    tail: u32,
    tail_len: usize,
    len: usize,
}

impl MurmurPrefix {
    /// The state after `prefix`.
    pub fn new(prefix: &[u8]) -> Self {
        let (hash, tail) = mix_blocks(0, prefix);
        MurmurPrefix {
            hash,
            tail: little_endian_word(tail, &[]),
            tail_len: tail.len(),
            len: prefix.len(),
        }
    }

    /// MurmurHash3 x86_32 (seed 0) of `prefix ++ suffix`.
    #[inline]
    pub fn hash_with(&self, suffix: &[u8]) -> u32 {
        let total = self.len + suffix.len();
        let mut hash = self.hash;
        let mut rest = suffix;
        if self.tail_len > 0 {
            let take = (4 - self.tail_len).min(suffix.len());
            let mut word = self.tail;
            for (i, byte) in suffix[..take].iter().enumerate() {
                word |= u32::from(*byte) << (8 * (self.tail_len + i));
            }
            if self.tail_len + take < 4 {
                // Everything left is shorter than a block: it is the tail.
                return finish(mix_tail_word(hash, word), total);
            }
            hash = mix_block(hash, word);
            rest = &suffix[take..];
        }
        let (hash, tail) = mix_blocks(hash, rest);
        finish(mix_tail(hash, tail), total)
    }
}

/// The bytes of `a` then `b` (at most four in all) as a little-endian word.
#[inline(always)]
fn little_endian_word(a: &[u8], b: &[u8]) -> u32 {
    let mut word = 0u32;
    for (i, byte) in a.iter().chain(b).enumerate() {
        word |= u32::from(*byte) << (8 * i);
    }
    word
}

#[inline(always)]
fn mix_tail_word(hash: u32, word: u32) -> u32 {
    hash ^ word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

/// flagd's bucket for a hash: `hash * total_weight >> 32`, a value in `0..total_weight`.
///
/// Mapping by multiplication (not modulo) keeps the buckets contiguous in hash space, which is
/// what makes "on-first" rollouts monotonic: raising the first bucket's weight only ever moves
/// its upper edge outwards.
#[inline]
pub fn bucket(hash: u32, total_weight: u32) -> u32 {
    // Lossless: the product of two u32 values fits u64 and the shift leaves < total_weight.
    ((u64::from(hash) * u64::from(total_weight)) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(bytes: &[u8]) -> u32 {
        murmur3::murmur3_32(&mut std::io::Cursor::new(bytes), 0).unwrap()
    }

    #[test]
    fn flagd_known_hashes() {
        // From flagd's fractional tests: inputs chosen to hit the extremes of the hash range.
        let cases: [(&str, u32); 5] = [
            ("ejOoVL", 0),
            ("bY9fO-", 1),
            ("SI7p-", 2_147_483_647),
            ("6LvT0", 2_147_483_648),
            ("ceQdGm", 4_294_967_295),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur3_x86_32(input.as_bytes(), 0),
                expected,
                "hash of {input:?}"
            );
            assert_eq!(
                reference(input.as_bytes()),
                expected,
                "reference hash of {input:?}"
            );
        }
    }

    #[test]
    fn buckets_at_the_extremes() {
        assert_eq!(bucket(0, 100), 0);
        assert_eq!(bucket(u32::MAX, 100), 99);
        assert_eq!(bucket(u32::MAX, 10_000), 9_999);
        assert_eq!(bucket(2_147_483_648, 2), 1);
        assert_eq!(bucket(2_147_483_647, 2), 0);
    }

    proptest! {
        #[test]
        fn agrees_with_the_murmur3_crate(bytes in proptest::collection::vec(any::<u8>(), 0..80), seed in any::<u32>()) {
            let expected = murmur3::murmur3_32(&mut std::io::Cursor::new(&bytes), seed).unwrap();
            prop_assert_eq!(murmur3_x86_32(&bytes, seed), expected);
        }

        #[test]
        fn concat_agrees_at_every_split(bytes in proptest::collection::vec(any::<u8>(), 0..300), split in 0usize..301) {
            let split = split.min(bytes.len());
            let (first, second) = bytes.split_at(split);
            prop_assert_eq!(murmur3_x86_32_concat(first, second), reference(&bytes));
        }
    }
}
