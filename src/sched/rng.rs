//! The seeded generator of placement tie-breaks: SplitMix64 (`rand_xoshiro`).
//!
//! Scheduling decisions must be reproducible from a seed so a simulated cluster replays exactly;
//! nothing here needs cryptographic quality. The simulation uses the same generator.

use rand_xoshiro::rand_core::{Rng as _, SeedableRng};
use rand_xoshiro::SplitMix64;

#[derive(Clone, Debug)]
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::from_seed(
            (seed ^ 0x9E37_79B9_7F4A_7C15).to_le_bytes(),
        ))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform enough in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}
