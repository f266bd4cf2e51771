//! The train/val split and nanoGPT-style batches of random contiguous windows.

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::rng::SplitMix64;

/// A token stream split into training (first 90%) and validation (last 10%) parts.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSplits {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    /// Where each document starts in `train` (ascending, the first at 0).
    pub train_documents: Vec<usize>,
    /// Where each document starts in `val`; a document the split cuts starts `val` at 0.
    pub val_documents: Vec<usize>,
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
            train_documents: vec![0],
            val_documents: vec![0],
        })
    }

    /// [`Self::new`] for a stream of documents starting at `starts` (ascending offsets
    /// into `tokens`, see [`crate::TokenCache::documents`]).
    pub fn with_documents(
        tokens: &[u32],
        starts: &[usize],
        val_fraction: f64,
        block: usize,
    ) -> Result<Self, DataError> {
        let mut splits = Self::new(tokens, val_fraction, block)?;
        let n_train = splits.train.len();
        splits.train_documents = std::iter::once(0)
            .chain(starts.iter().copied().filter(|&s| s > 0 && s < n_train))
            .collect();
        splits.val_documents = std::iter::once(0)
            .chain(
                starts
                    .iter()
                    .filter(|&&s| s > n_train)
                    .map(|&s| s - n_train),
            )
            .collect();
        Ok(splits)
    }
}

/// `batch` windows of `block` inputs and their next-token targets, row-major `[batch, block]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub inputs: Vec<i64>,
    /// [`crate::sft::IGNORE`] where a packed row's target is the next document's first
    /// token.
    pub targets: Vec<i64>,
    pub batch: usize,
    pub block: usize,
    /// Packed rows ([`BatchSampler::sample_packed`]): the document index of every
    /// position within its row (0, 1, … in row order), `[batch, block]`.
    pub documents: Option<Vec<u32>>,
    /// Packed rows: every position's place within its document, restarting at 0 at each
    /// document (and at the row's start), `[batch, block]`.
    pub positions: Option<Vec<u32>>,
    /// Paired rows ([`crate::pairs::PairSet::sample`]): each row's token count, the rest
    /// of the row being padding; rows `[0, batch/2)` are anchors and row `batch/2 + i`
    /// is anchor `i`'s positive, `[batch]`.
    pub lengths: Option<Vec<u32>>,
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
                    targets: self.targets[span.clone()].to_vec(),
                    batch: rows.len(),
                    block: self.block,
                    documents: self.documents.as_ref().map(|d| d[span.clone()].to_vec()),
                    positions: self.positions.as_ref().map(|p| p[span].to_vec()),
                    lengths: self.lengths.as_ref().map(|l| l[rows].to_vec()),
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
            documents: None,
            positions: None,
            lengths: None,
        }
    }

    /// [`Self::sample`] over a stream of documents starting at `starts` (the same windows
    /// for the same generator state), as packed rows: every position carries its
    /// document's index within the row and its place within that document, and the
    /// target of a document's last position (the next document's first token) is
    /// [`crate::sft::IGNORE`].
    pub fn sample_packed(
        &mut self,
        tokens: &[u32],
        starts: &[usize],
        batch: usize,
        block: usize,
    ) -> Batch {
        let span = (tokens.len() - block) as u64;
        let mut out = Batch {
            inputs: Vec::with_capacity(batch * block),
            targets: Vec::with_capacity(batch * block),
            batch,
            block,
            documents: Some(Vec::with_capacity(batch * block)),
            positions: Some(Vec::with_capacity(batch * block)),
            lengths: None,
        };
        let document_of = |t: usize| starts.partition_point(|&s| s <= t).saturating_sub(1);
        for _ in 0..batch {
            let at = self.rng.below(span) as usize;
            let first = document_of(at);
            for t in at..at + block {
                let doc = document_of(t);
                let doc_start = starts.get(doc).copied().unwrap_or(0).max(at);
                out.inputs.push(i64::from(tokens[t]));
                let next_is_new = starts.get(doc + 1) == Some(&(t + 1));
                out.targets.push(if next_is_new {
                    crate::sft::IGNORE
                } else {
                    i64::from(tokens[t + 1])
                });
                if let (Some(d), Some(p)) = (&mut out.documents, &mut out.positions) {
                    d.push((doc - first) as u32);
                    p.push((t - doc_start) as u32);
                }
            }
        }
        out
    }
}

/// The fraction of positions that train nothing when documents of `lengths` tokens are
/// laid one per row of `block` positions and padded (a document longer than a row fills
/// several): the waste packing removes.
pub fn padded_waste(lengths: &[usize], block: usize) -> f64 {
    let block = block.max(1);
    let (mut used, mut total) = (0usize, 0usize);
    for &len in lengths {
        let pairs = len.saturating_sub(1);
        used += pairs;
        total += pairs.div_ceil(block).max(1) * block;
    }
    if total == 0 {
        0.0
    } else {
        1.0 - used as f64 / total as f64
    }
}

/// The fraction of a packed batch's positions whose target is ignored (document
/// boundaries): the waste that packing keeps.
pub fn packed_waste(batch: &Batch) -> f64 {
    let ignored = batch
        .targets
        .iter()
        .filter(|&&t| t == crate::sft::IGNORE)
        .count();
    ignored as f64 / batch.targets.len().max(1) as f64
}
