//! SplitMix64, the batch sampler's generator.
//!
//! It is chosen for being fully specified by a few lines of arithmetic on one `u64`, so the
//! PyTorch reference in `benches/reference/` draws exactly the same batches, and its whole
//! state goes into a checkpoint as one number.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    pub state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`), by modulo; the bias is below `n / 2^64`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
