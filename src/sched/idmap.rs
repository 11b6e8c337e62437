//! Hash maps keyed by the runtime's own ids (ranks, job ids, mailbox and task keys).
//!
//! The standard library's SipHash resists keys chosen by an attacker, at ~20 ns per lookup; these
//! keys are small integers the runtime itself assigns, and the per-task paths look them up
//! several times per task (about 6% of a worker's time in a million-task fan-out). A
//! multiply-rotate hash (the one rustc uses internally) costs one multiplication per word.
//! Maps keyed by anything a client chooses keep the standard hasher.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by runtime ids.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
/// A set of runtime ids.
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// Multiply-rotate hashing of integer words.
#[derive(Default, Clone, Copy)]
pub struct IdHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl IdHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_consecutive_ids_over_buckets() {
        // hashbrown picks the bucket from the low bits and a tag from the top 7: consecutive ids
        // must fill the buckets without collisions and use every tag
        let mut buckets: IdSet<u64> = IdSet::default();
        let mut tags: IdSet<u64> = IdSet::default();
        for id in 0..4096u64 {
            let mut h = IdHasher::default();
            h.write_u64(id);
            buckets.insert(h.finish() & 4095);
            tags.insert(h.finish() >> 57);
        }
        assert_eq!(buckets.len(), 4096);
        assert_eq!(tags.len(), 128);
        let mut m: IdMap<(u32, u64), u64> = IdMap::default();
        for r in 0..64u32 {
            for i in 0..64u64 {
                m.insert((r, i), i);
            }
        }
        assert_eq!(m.len(), 4096);
        assert_eq!(m[&(63, 63)], 63);
    }
}
