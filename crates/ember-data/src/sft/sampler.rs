//! Seeded shuffles of fine-tuning data: the train/validation split of examples, and the
//! order rows are drawn in, epoch by epoch.
//!
//! Every permutation is Fisher–Yates driven by [`SplitMix64`]: for `i` from `n - 1` down
//! to 1, swap `i` with `below(i + 1)`, starting from the identity.

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;

/// Draws training rows epoch by epoch, each epoch a fresh seeded permutation
/// (Fisher–Yates with `SplitMix64`), resumable from its cursor.
///
/// Epoch `e`'s permutation of `rows` rows is driven by `SplitMix64::new(h)` with
/// `h = mix(mix(seed) ^ e)`, where `mix(x)` is the first output of `SplitMix64::new(x)`.
/// What [`Self::next`] draws depends only on `(seed, cursor, rows)`, so a run resumed from
/// a saved sampler draws the same rows as one never interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowSampler {
    /// The seed every epoch's permutation derives from.
    pub seed: u64,
    /// Rows drawn so far, all epochs.
    pub cursor: u64,
    /// `false`: every epoch draws the rows in their order (`data.shuffle = false`).
    #[serde(default = "shuffled")]
    pub shuffle: bool,
}

fn shuffled() -> bool {
    true
}

impl RowSampler {
    /// A sampler at the start of epoch 0.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            cursor: 0,
            shuffle: true,
        }
    }

    /// A sampler that draws rows in order, epoch after epoch.
    pub fn in_order() -> Self {
        Self {
            seed: 0,
            cursor: 0,
            shuffle: false,
        }
    }

    /// The next `batch` row ids out of `rows` (wrapping into the next epoch as needed),
    /// advancing the cursor. With `rows == 0` there is nothing to draw: the result is
    /// empty and the cursor stays.
    pub fn next(&mut self, rows: usize, batch: usize) -> Vec<usize> {
        if rows == 0 {
            return Vec::new();
        }
        let n = rows as u64;
        let mut out = Vec::with_capacity(batch);
        let mut current: Option<(u64, Vec<usize>)> = None;
        for _ in 0..batch {
            let (epoch, at) = (self.cursor / n, (self.cursor % n) as usize);
            if current.as_ref().is_none_or(|(e, _)| *e != epoch) {
                current = Some((epoch, self.permutation(epoch, rows)));
            }
            if let Some((_, order)) = &current {
                out.push(order[at]);
            }
            self.cursor += 1;
        }
        out
    }

    /// The epoch the cursor is in (0 when `rows == 0`).
    pub fn epoch(&self, rows: usize) -> u64 {
        self.cursor.checked_div(rows as u64).unwrap_or(0)
    }

    /// The order of `rows` rows in `epoch`.
    pub fn permutation(&self, epoch: u64, rows: usize) -> Vec<usize> {
        if !self.shuffle {
            return (0..rows).collect();
        }
        let mix = |x: u64| SplitMix64::new(x).next_u64();
        permutation(rows, &mut SplitMix64::new(mix(mix(self.seed) ^ epoch)))
    }
}

/// `0..n` shuffled by Fisher–Yates with `rng`.
fn permutation(n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// `examples` shuffled by `seed` (Fisher–Yates with `SplitMix64::new(seed)`) and split:
/// the last `val_fraction` (rounded down; at least 1 when `val_fraction > 0` and there are
/// ≥2 examples; never all of them when there are ≥2) for validation, the rest for
/// training. A `val_fraction` outside `0..=1` (or NaN) is clamped into it (NaN as 0).
///
/// `seed` of `None` keeps the file's order (the last examples are held out).
pub fn split_examples<T: Clone>(
    examples: &[T],
    val_fraction: f64,
    seed: Option<u64>,
) -> (Vec<T>, Vec<T>) {
    let n = examples.len();
    let fraction = if val_fraction.is_nan() {
        0.0
    } else {
        val_fraction.clamp(0.0, 1.0)
    };
    let mut n_val = ((n as f64) * fraction).floor() as usize;
    if fraction > 0.0 && n >= 2 {
        n_val = n_val.clamp(1, n - 1);
    }
    let order = match seed {
        Some(seed) => permutation(n, &mut SplitMix64::new(seed)),
        None => (0..n).collect(),
    };
    let (train, val) = order.split_at(n - n_val.min(n));
    let pick = |ids: &[usize]| ids.iter().map(|&i| examples[i].clone()).collect();
    (pick(train), pick(val))
}
