//! The train/val split and nanoGPT-style batches of random contiguous windows.

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::rng::SplitMix64;

/// A token stream split into training (first 90%) and validation (last 10%) parts.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSplits {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl TokenSplits {
    /// Holds out the last `val_fraction` of `tokens` for validation; each part must
    /// have room for at least one window of `block + 1` tokens.
    pub fn new(tokens: &[u32], val_fraction: f64, block: usize) -> Result<Self, DataError> {
        let n_train = ((tokens.len() as f64) * (1.0 - val_fraction)) as usize;
        let (train, val) = tokens.split_at(n_train);
        let needed = block + 1;
        if train.len() < needed || val.len() < needed {
            return Err(DataError::TooSmall {
                tokens: tokens.len(),
                needed: ((needed as f64) / val_fraction.min(1.0 - val_fraction)).ceil() as usize,
                block,
            });
        }
        Ok(Self {
            train: train.to_vec(),
            val: val.to_vec(),
        })
    }
}

/// `batch` windows of `block` inputs and their next-token targets, row-major `[batch, block]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
    pub batch: usize,
    pub block: usize,
}

impl Batch {
    /// Splits the rows into at most `parts` contiguous batches whose sizes differ by at
    /// most one (the first ones are the larger); none is empty. `parts` of 0 counts as 1.
    pub fn split(&self, parts: usize) -> Vec<Batch> {
        row_groups(self.batch, parts)
            .into_iter()
            .map(|rows| {
                let span = rows.start * self.block..rows.end * self.block;
                Batch {
                    inputs: self.inputs[span.clone()].to_vec(),
                    targets: self.targets[span].to_vec(),
                    batch: rows.len(),
                    block: self.block,
                }
            })
            .collect()
    }
}

/// `rows` rows cut into at most `parts` contiguous, non-empty groups whose sizes differ by
/// at most one (the first ones are the larger); `parts` of 0 counts as 1.
pub fn row_groups(rows: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, rows.max(1));
    let (base, extra) = (rows / parts, rows % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let n = base + usize::from(i < extra);
            start += n;
            start - n..start
        })
        .collect()
}

/// Draws windows at offsets `rng.below(len - block)`, one per row, as nanoGPT's
/// `torch.randint(len(data) - block_size, (batch_size,))` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSampler {
    pub rng: SplitMix64,
}

impl BatchSampler {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
        }
    }

    /// The next batch from `tokens` (which holds more than `block` tokens).
    pub fn sample(&mut self, tokens: &[u32], batch: usize, block: usize) -> Batch {
        let span = (tokens.len() - block) as u64;
        let mut inputs = Vec::with_capacity(batch * block);
        let mut targets = Vec::with_capacity(batch * block);
        for _ in 0..batch {
            let at = self.rng.below(span) as usize;
            inputs.extend(tokens[at..at + block].iter().map(|&t| i64::from(t)));
            targets.extend(tokens[at + 1..at + block + 1].iter().map(|&t| i64::from(t)));
        }
        Batch {
            inputs,
            targets,
            batch,
            block,
        }
    }
}
