//! Mask modifiers: which keys a query may see, as composable predicates.
//!
//! A [`MaskMod`] answers `keep(batch, head, q_idx, kv_idx)`. Indices are absolute: key
//! `kv_idx` is the column of the key sequence, and query row `i` of a `seq_q`-row block
//! has `q_idx = i + seq_kv - seq_q`, so a block appended after cached positions sees the
//! same mask as the full sequence would.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};

/// A user predicate `(batch, head, q_idx, kv_idx) -> keep`.
pub type MaskFn = dyn Fn(usize, usize, usize, usize) -> bool + Send + Sync;

/// How a `[q_block, kv_block]` tile of the score matrix is covered by a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileKind {
    /// Every entry is masked: the tile is skipped.
    Empty,
    /// Some entries are masked: the tile needs an element mask.
    Partial,
    /// No entry is masked: the tile runs without a mask.
    Full,
}

impl TileKind {
    fn and(self, other: Self) -> Self {
        match (self, other) {
            (TileKind::Empty, _) | (_, TileKind::Empty) => TileKind::Empty,
            (TileKind::Full, TileKind::Full) => TileKind::Full,
            _ => TileKind::Partial,
        }
    }

    fn or(self, other: Self) -> Self {
        match (self, other) {
            (TileKind::Full, _) | (_, TileKind::Full) => TileKind::Full,
            (TileKind::Empty, TileKind::Empty) => TileKind::Empty,
            _ => TileKind::Partial,
        }
    }
}

/// Which keys each query may attend to. Compose with [`MaskMod::and`] and [`MaskMod::or`].
#[derive(Clone)]
pub enum MaskMod {
    /// Every key is visible (bidirectional attention).
    Full,
    /// `kv_idx <= q_idx`.
    Causal,
    /// Causal and at most `window` keys back, the query's own included:
    /// `kv_idx <= q_idx && q_idx - kv_idx < window` (Mistral's sliding window).
    SlidingWindow(usize),
    /// The first `prefix_len` keys are visible to every query, the rest causally
    /// (prefix-LM: `kv_idx < prefix_len || kv_idx <= q_idx`).
    PrefixLm(usize),
    /// Packed sequences: a query sees only keys of its own document. `ids[batch][pos]` is
    /// the document of position `pos`; combine with [`MaskMod::Causal`] for packed LM
    /// training.
    Document(Arc<Vec<Vec<u32>>>),
    /// Both masks keep the key.
    And(Box<MaskMod>, Box<MaskMod>),
    /// Either mask keeps the key.
    Or(Box<MaskMod>, Box<MaskMod>),
    /// A user predicate; tiles are classified by evaluating it on every entry.
    Custom(Arc<MaskFn>),
    /// Sequence `b`'s keys start at column `offsets[b]` (left padding, for rows of
    /// different lengths in one batch): the columns before are hidden and `inner` sees
    /// the sequence's own indices, `inner.keep(b, h, q_idx - offset, kv_idx - offset)`.
    RowOffset {
        inner: Box<MaskMod>,
        offsets: Arc<Vec<usize>>,
    },
}

impl fmt::Debug for MaskMod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskMod::Full => write!(f, "Full"),
            MaskMod::Causal => write!(f, "Causal"),
            MaskMod::SlidingWindow(w) => write!(f, "SlidingWindow({w})"),
            MaskMod::PrefixLm(p) => write!(f, "PrefixLm({p})"),
            MaskMod::Document(ids) => write!(f, "Document({} sequences)", ids.len()),
            MaskMod::And(a, b) => write!(f, "And({a:?}, {b:?})"),
            MaskMod::Or(a, b) => write!(f, "Or({a:?}, {b:?})"),
            MaskMod::Custom(_) => write!(f, "Custom"),
            MaskMod::RowOffset { inner, offsets } => {
                write!(f, "RowOffset({inner:?}, {} sequences)", offsets.len())
            }
        }
    }
}

impl MaskMod {
    /// Document masking from per-position document ids, `[batch][seq_kv]`.
    pub fn document(ids: Vec<Vec<u32>>) -> Self {
        MaskMod::Document(Arc::new(ids))
    }

    /// A user predicate `(batch, head, q_idx, kv_idx) -> keep`.
    pub fn custom(f: impl Fn(usize, usize, usize, usize) -> bool + Send + Sync + 'static) -> Self {
        MaskMod::Custom(Arc::new(f))
    }

    /// Keeps a key only where both masks keep it.
    pub fn and(self, other: MaskMod) -> Self {
        MaskMod::And(Box::new(self), Box::new(other))
    }

    /// Keeps a key where either mask keeps it.
    pub fn or(self, other: MaskMod) -> Self {
        MaskMod::Or(Box::new(self), Box::new(other))
    }

    /// Whether query `q_idx` of sequence `batch`, head `head`, may see key `kv_idx`.
    pub fn keep(&self, batch: usize, head: usize, q_idx: usize, kv_idx: usize) -> bool {
        match self {
            MaskMod::Full => true,
            MaskMod::Causal => kv_idx <= q_idx,
            MaskMod::SlidingWindow(w) => kv_idx <= q_idx && q_idx - kv_idx < *w,
            MaskMod::PrefixLm(p) => kv_idx < *p || kv_idx <= q_idx,
            MaskMod::Document(ids) => ids[batch][q_idx] == ids[batch][kv_idx],
            MaskMod::And(a, b) => {
                a.keep(batch, head, q_idx, kv_idx) && b.keep(batch, head, q_idx, kv_idx)
            }
            MaskMod::Or(a, b) => {
                a.keep(batch, head, q_idx, kv_idx) || b.keep(batch, head, q_idx, kv_idx)
            }
            MaskMod::Custom(f) => f(batch, head, q_idx, kv_idx),
            MaskMod::RowOffset { inner, offsets } => {
                let off = offsets[batch];
                kv_idx >= off && q_idx >= off && inner.keep(batch, head, q_idx - off, kv_idx - off)
            }
        }
    }

    /// `inner` for sequences whose keys start at columns `offsets[b]`; see
    /// [`MaskMod::RowOffset`].
    pub fn row_offset(inner: MaskMod, offsets: Vec<usize>) -> Self {
        MaskMod::RowOffset {
            inner: Box::new(inner),
            offsets: Arc::new(offsets),
        }
    }

    /// Classifies the tile `q × kv` (absolute index ranges, both non-empty) for one
    /// sequence and head. Built-in masks are classified exactly, in closed form;
    /// documents from the id sets; custom predicates entry by entry. `And`/`Or` combine
    /// their parts' kinds: never wrongly `Empty` or `Full`, but a tile that only the
    /// combination empties or fills is reported `Partial` (it is then masked per entry).
    pub fn tile(&self, batch: usize, head: usize, q: Range<usize>, kv: Range<usize>) -> TileKind {
        let (q_min, q_max, kv_min, kv_max) = (q.start, q.end - 1, kv.start, kv.end - 1);
        let kind = |full: bool, empty: bool| {
            if empty {
                TileKind::Empty
            } else if full {
                TileKind::Full
            } else {
                TileKind::Partial
            }
        };
        match self {
            MaskMod::Full => TileKind::Full,
            MaskMod::Causal => kind(kv_max <= q_min, kv_min > q_max),
            MaskMod::SlidingWindow(w) => kind(
                kv_max <= q_min && q_max - kv_min < *w,
                kv_min > q_max || q_min.saturating_sub(kv_max) >= *w,
            ),
            MaskMod::PrefixLm(p) => kind(
                kv_max < *p || kv_max <= q_min,
                kv_min >= *p && kv_min > q_max,
            ),
            MaskMod::Document(ids) => {
                let ids = &ids[batch];
                let q_ids: HashSet<u32> = ids[q].iter().copied().collect();
                let kv_ids: HashSet<u32> = ids[kv].iter().copied().collect();
                let single = q_ids.len() == 1 && kv_ids.len() == 1;
                kind(single && q_ids == kv_ids, q_ids.is_disjoint(&kv_ids))
            }
            MaskMod::And(a, b) => a
                .tile(batch, head, q.clone(), kv.clone())
                .and(b.tile(batch, head, q, kv)),
            MaskMod::Or(a, b) => a
                .tile(batch, head, q.clone(), kv.clone())
                .or(b.tile(batch, head, q, kv)),
            MaskMod::Custom(f) => {
                let kept = q
                    .clone()
                    .flat_map(|i| kv.clone().map(move |j| (i, j)))
                    .filter(|&(i, j)| f(batch, head, i, j))
                    .count();
                kind(kept == q.len() * kv.len(), kept == 0)
            }
            MaskMod::RowOffset { inner, offsets } => {
                let off = offsets[batch];
                if kv_max < off || q_max < off {
                    return TileKind::Empty;
                }
                let own = inner.tile(
                    batch,
                    head,
                    q_min.max(off) - off..q_max + 1 - off,
                    kv_min.max(off) - off..kv_max + 1 - off,
                );
                // Columns (or rows) before the offset are hidden: the tile is partial.
                match own {
                    TileKind::Full if kv_min < off || q_min < off => TileKind::Partial,
                    own => own,
                }
            }
        }
    }

    /// Whether the mask can differ between sequences of a batch.
    pub fn varies_with_batch(&self) -> bool {
        match self {
            MaskMod::Document(_) | MaskMod::Custom(_) | MaskMod::RowOffset { .. } => true,
            MaskMod::And(a, b) | MaskMod::Or(a, b) => {
                a.varies_with_batch() || b.varies_with_batch()
            }
            _ => false,
        }
    }

    /// Whether the mask can differ between heads.
    pub fn varies_with_head(&self) -> bool {
        match self {
            MaskMod::Custom(_) => true,
            MaskMod::And(a, b) | MaskMod::Or(a, b) => a.varies_with_head() || b.varies_with_head(),
            MaskMod::RowOffset { inner, .. } => inner.varies_with_head(),
            _ => false,
        }
    }

    /// Checks that the mask can be evaluated for `batch` sequences of `seq_kv` keys.
    pub fn check(&self, batch: usize, seq_kv: usize) -> Result<(), String> {
        match self {
            MaskMod::SlidingWindow(0) => Err("sliding window must be at least 1".into()),
            MaskMod::Document(ids) => {
                if ids.len() < batch {
                    return Err(format!(
                        "document ids cover {} sequences, the batch has {batch}",
                        ids.len()
                    ));
                }
                match ids.iter().take(batch).position(|row| row.len() < seq_kv) {
                    Some(b) => Err(format!(
                        "document ids of sequence {b} cover {} positions, attention reads {seq_kv}",
                        ids[b].len()
                    )),
                    None => Ok(()),
                }
            }
            MaskMod::And(a, b) | MaskMod::Or(a, b) => {
                a.check(batch, seq_kv).and_then(|()| b.check(batch, seq_kv))
            }
            MaskMod::RowOffset { inner, offsets } => {
                if offsets.len() < batch {
                    return Err(format!(
                        "row offsets cover {} sequences, the batch has {batch}",
                        offsets.len()
                    ));
                }
                // The longest sequence (the smallest offset) reads the most positions.
                let least = offsets.iter().take(batch).min().copied().unwrap_or(0);
                inner.check(batch, seq_kv.saturating_sub(least))
            }
            _ => Ok(()),
        }
    }

    /// The element mask of a tile in burn's convention (`true` = hidden).
    ///
    /// - `batches`, `heads`: how many sequences and heads to evaluate (1 when the mask
    ///   does not vary along that axis)
    /// - returns `[batches, heads, q.len(), kv.len()]`
    pub fn hidden<B: Backend>(
        &self,
        batches: usize,
        heads: usize,
        q: Range<usize>,
        kv: Range<usize>,
        device: &B::Device,
    ) -> Tensor<B, 4, Bool> {
        let shape = [batches, heads, q.len(), kv.len()];
        let mut values = Vec::with_capacity(shape.iter().product());
        for b in 0..batches {
            for h in 0..heads {
                for i in q.clone() {
                    values.extend(kv.clone().map(|j| !self.keep(b, h, i, j)));
                }
            }
        }
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}
