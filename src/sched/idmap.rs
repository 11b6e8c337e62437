//! Hash maps keyed by the runtime's own ids (ranks, job ids, mailbox and task keys).
//!
//! The standard library's SipHash resists keys chosen by an attacker, at ~20 ns per lookup; these
//! keys are small integers the runtime itself assigns, and the per-task paths look them up
//! several times per task (about 6% of a worker's time in a million-task fan-out). A
//! multiply-rotate hash (rustc's own, from the `rustc-hash` crate) costs one multiplication per
//! word.
//! Maps keyed by anything a client chooses keep the standard hasher.

use rustc_hash::FxHasher;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

/// A map keyed by runtime ids.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
/// A set of runtime ids.
pub type IdSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;

/// The hasher of [`IdMap`] and [`IdSet`].
pub type IdHasher = FxHasher;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hasher;

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
