//! Encoded examples laid into rows of `block` (input, target) positions.
//!
//! An example of `n` tokens gives `n - 1` pairs: input `tokens[j]`, target `tokens[j + 1]`,
//! trained iff `trained[j + 1]`. Truncation keeps the first `block` pairs. With packing,
//! examples go greedily, in order, into the current row while their pairs fit, else into a
//! new row (no example is split across rows); without it each example has its own row.
//! Rows are padded to `block`. Since pairs never cross examples, the target after an
//! example's last input is its own last token, never the next example's first.

use crate::error::DataError;
use crate::sft::encode::Encoded;

/// The id that marks a target the loss ignores.
pub const IGNORE: i64 = -100;

/// Rows of `block` positions ready for training.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedRows {
    /// Positions per row.
    pub block: usize,
    /// `[rows * block]` input ids (padding: `pad_id`).
    pub inputs: Vec<u32>,
    /// `[rows * block]` next-token targets, `IGNORE` where the loss does not apply (prompt
    /// tokens, padding, the boundary between two packed examples).
    pub targets: Vec<i64>,
    /// `[rows * block]` document index of each position within its row (0, 1, 2, ... in
    /// row order; padding gets one id past the last document) — for a document mask so no
    /// example attends to another.
    pub documents: Vec<u32>,
    /// Examples cut to fit `block` (and kept).
    pub truncated: usize,
    /// Examples left out because they have no trained target within the pairs kept
    /// (truncation left them none).
    pub dropped: usize,
    /// Positions whose target is trained.
    pub trained_targets: usize,
}

/// How to lay examples into rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackOptions {
    /// Positions per row (at least 1).
    pub block: usize,
    /// Several examples per row when they fit; otherwise one example per row.
    pub pack: bool,
    /// Input id of padding positions.
    pub pad_id: u32,
    /// When false, an example longer than `block + 1` tokens is an error naming its line
    /// and length instead of being truncated.
    pub truncate: bool,
}

/// Lays `examples` into rows (see the module docs). No examples (or none left) give zero
/// rows; a block of 0 and, without truncation, an example longer than `block + 1` tokens
/// are errors.
pub fn pack(examples: &[Encoded], options: &PackOptions) -> Result<PackedRows, DataError> {
    let block = options.block;
    if block == 0 {
        return Err(DataError::ZeroBlock);
    }
    let mut rows = PackedRows {
        block,
        inputs: Vec::new(),
        targets: Vec::new(),
        documents: Vec::new(),
        truncated: 0,
        dropped: 0,
        trained_targets: 0,
    };
    // Positions used in the current (last) row and documents in it; `None`: no open row.
    let mut open: Option<(usize, u32)> = None;
    for example in examples {
        let all_pairs = example.tokens.len().saturating_sub(1);
        if all_pairs > block && !options.truncate {
            return Err(DataError::ExampleTooLong {
                line: example.line,
                tokens: example.tokens.len(),
                block,
            });
        }
        let pairs = all_pairs.min(block);
        let is_trained = |j: usize| example.trained.get(j + 1).copied().unwrap_or(false);
        let trained = (0..pairs).filter(|&j| is_trained(j)).count();
        if trained == 0 {
            rows.dropped += 1;
            continue;
        }
        if pairs < all_pairs {
            rows.truncated += 1;
        }
        let document = match open {
            Some((used, docs)) if options.pack && used + pairs <= block => {
                open = Some((used + pairs, docs + 1));
                docs
            }
            _ => {
                rows.pad_row(open, options.pad_id);
                open = Some((pairs, 1));
                0
            }
        };
        for j in 0..pairs {
            rows.inputs.push(example.tokens[j]);
            rows.targets.push(if is_trained(j) {
                i64::from(example.tokens[j + 1])
            } else {
                IGNORE
            });
            rows.documents.push(document);
        }
        rows.trained_targets += trained;
    }
    rows.pad_row(open, options.pad_id);
    Ok(rows)
}

impl PackedRows {
    /// Fills the open row (`used` positions, `docs` documents) with padding.
    fn pad_row(&mut self, open: Option<(usize, u32)>, pad_id: u32) {
        if let Some((used, docs)) = open {
            for _ in used..self.block {
                self.inputs.push(pad_id);
                self.targets.push(IGNORE);
                self.documents.push(docs);
            }
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.inputs.len().checked_div(self.block).unwrap_or(0)
    }

    /// Copies rows `ids` into a batch: (inputs, targets, documents), each
    /// `[ids.len() * block]`. Panics if an id is not below [`Self::rows`].
    pub fn gather(&self, ids: &[usize]) -> (Vec<u32>, Vec<i64>, Vec<u32>) {
        let n = ids.len() * self.block;
        let (mut inputs, mut targets, mut documents) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for &id in ids {
            let span = id * self.block..(id + 1) * self.block;
            inputs.extend_from_slice(&self.inputs[span.clone()]);
            targets.extend_from_slice(&self.targets[span.clone()]);
            documents.extend_from_slice(&self.documents[span]);
        }
        (inputs, targets, documents)
    }

    /// Targets the loss covers in these rows. Panics if an id is not below [`Self::rows`].
    pub fn trained_in(&self, ids: &[usize]) -> usize {
        ids.iter()
            .map(|&id| {
                self.targets[id * self.block..(id + 1) * self.block]
                    .iter()
                    .filter(|&&t| t != IGNORE)
                    .count()
            })
            .sum()
    }
}
