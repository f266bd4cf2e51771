//! The key/value cache attention reads and writes through.
//!
//! The layers only see the [`KvCache`] trait: each row of the batch is a sequence with its
//! own length, and attention reads a [`KvView`], keys and values in blocks plus a block
//! table per row. [`ContiguousKvCache`] keeps one block per row; a paged cache keeps a
//! pool of fixed-size blocks and hands its pool and tables over as they are, with no copy
//! back into one tensor. `truncate`, `fork` and `reorder` are what speculative decoding,
//! sampling several continuations and beam search need.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// What attention reads for one layer: every row's keys and values, this pass's included.
#[derive(Debug, Clone)]
pub struct KvView<B: Backend> {
    /// `[n_blocks, n_kv_heads, block_size, head_dim]`
    pub keys: Tensor<B, 4>,
    /// `[n_blocks, n_kv_heads, block_size, head_dim]`
    pub values: Tensor<B, 4>,
    /// Row `r`'s positions `0..lengths[r]` lie, in order, in the blocks `block_table[r]`.
    pub block_table: Vec<Vec<usize>>,
    /// Positions per row.
    pub lengths: Vec<usize>,
}

impl<B: Backend> KvView<B> {
    /// A view of `[rows, n_kv_heads, len, head_dim]` tensors in which every row is full.
    pub fn dense(keys: Tensor<B, 4>, values: Tensor<B, 4>) -> Self {
        let [rows, _, len, _] = keys.dims();
        Self {
            keys,
            values,
            block_table: (0..rows).map(|r| vec![r]).collect(),
            lengths: vec![len; rows],
        }
    }

    /// Whether block `r` is row `r`, full: the tensors are `[rows, n_kv_heads, len,
    /// head_dim]` as attention wants them.
    pub fn is_dense(&self) -> bool {
        let [n_blocks, _, block_size, _] = self.keys.dims();
        n_blocks == self.block_table.len()
            && self
                .block_table
                .iter()
                .enumerate()
                .all(|(r, blocks)| blocks.as_slice() == [r])
            && self.lengths.iter().all(|&len| len == block_size)
    }

    /// Row `r`'s keys and values, `[1, n_kv_heads, lengths[r], head_dim]` each, read
    /// through its block table.
    pub fn row(&self, r: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [_, n_kv, block_size, head_dim] = self.keys.dims();
        let blocks = &self.block_table[r];
        let len = self.lengths[r];
        let read = |t: &Tensor<B, 4>| {
            let picked = if blocks.len() == 1 {
                t.clone().narrow(0, blocks[0], 1)
            } else {
                let ids: Vec<i64> = blocks.iter().map(|&b| b as i64).collect();
                let ids = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(ids, [blocks.len()]),
                    &t.device(),
                );
                t.clone().select(0, ids)
            };
            // `[n, n_kv, block, d]` → `[1, n_kv, n · block, d]`, cut to the row's length.
            picked
                .swap_dims(0, 1)
                .reshape([1, n_kv, blocks.len() * block_size, head_dim])
                .narrow(2, 0, len)
        };
        (read(&self.keys), read(&self.values))
    }
}

/// Storage for the keys and values of past positions: one sequence per batch row, each
/// with its own length.
pub trait KvCache<B: Backend> {
    /// Positions stored per row before the current forward pass (empty before the first).
    fn lengths(&self) -> Vec<usize>;

    /// The longest row's length.
    fn len(&self) -> usize {
        self.lengths().into_iter().max().unwrap_or(0)
    }

    /// `true` when nothing is cached yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends this pass's keys and values for `layer` after each row's cached positions
    /// and returns what attention reads. The pass ends with the last layer's append.
    ///
    /// - `k`, `v`: `[rows, n_kv_heads, new, head_dim]`
    fn append(&mut self, layer: usize, k: Tensor<B, 4>, v: Tensor<B, 4>) -> KvView<B>;

    /// Keeps the first `len` positions of `row` (rejected draft tokens, a rewind).
    fn truncate(&mut self, row: usize, len: usize);

    /// Adds a row holding a copy of `row`'s positions and returns its index.
    fn fork(&mut self, row: usize) -> usize;

    /// Rearranges the rows: new row `i` is old row `order[i]` (rows may repeat or go; an
    /// empty `order` leaves no rows).
    fn reorder(&mut self, order: &[usize]);
}

/// A cache that keeps each layer's keys and values as `[rows, n_kv_heads, capacity,
/// head_dim]` tensors, row `r`'s positions at `0..lengths[r]`.
#[derive(Debug, Clone)]
pub struct ContiguousKvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    lengths: Vec<usize>,
}

impl<B: Backend> ContiguousKvCache<B> {
    /// An empty cache for a model with `n_layers` layers; the first pass sets the rows.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            lengths: Vec::new(),
        }
    }

    /// Layer `layer`'s stored keys and values, `[rows, n_kv_heads, capacity, head_dim]`
    /// each (rows shorter than the capacity end in unused positions).
    pub fn layer(&self, layer: usize) -> Option<(&Tensor<B, 4>, &Tensor<B, 4>)> {
        self.layers
            .get(layer)
            .and_then(|slot| slot.as_ref().map(|(k, v)| (k, v)))
    }

    /// Forgets every cached position and row.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|slot| *slot = None);
        self.lengths.clear();
    }

    fn map_layers(&mut self, f: impl Fn(Tensor<B, 4>) -> Tensor<B, 4>) {
        for slot in self.layers.iter_mut() {
            if let Some((k, v)) = slot.take() {
                *slot = Some((f(k), f(v)));
            }
        }
    }
}

impl<B: Backend> KvCache<B> for ContiguousKvCache<B> {
    fn lengths(&self) -> Vec<usize> {
        self.lengths.clone()
    }

    fn append(&mut self, layer: usize, k: Tensor<B, 4>, v: Tensor<B, 4>) -> KvView<B> {
        let [rows, _, new, _] = k.dims();
        if self.lengths.is_empty() {
            self.lengths = vec![0; rows];
        }
        assert_eq!(
            rows,
            self.lengths.len(),
            "KvCache::append: {rows} rows for a cache of {}",
            self.lengths.len()
        );
        let lengths = &self.lengths;
        let uniform = lengths.iter().all(|&l| l == lengths[0]);
        let (k, v) = match self.layers[layer].take() {
            None if uniform && lengths[0] == 0 => (k, v),
            Some((pk, pv)) if uniform && pk.dims()[2] == lengths[0] => {
                (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2))
            }
            stored => {
                // Rows of different lengths: write each row's new positions after its own.
                let need = lengths.iter().max().copied().unwrap_or(0) + new;
                let [_, n_kv, _, head_dim] = k.dims();
                let device = k.device();
                let grow = |t: Option<Tensor<B, 4>>| {
                    let have = t.as_ref().map_or(0, |t| t.dims()[2]);
                    let pad = need.saturating_sub(have);
                    let zeros = Tensor::zeros([rows, n_kv, pad, head_dim], &device);
                    match t {
                        Some(t) if pad == 0 => t,
                        Some(t) => Tensor::cat(vec![t, zeros], 2),
                        None => zeros,
                    }
                };
                let (pk, pv) = stored.map_or((None, None), |(k, v)| (Some(k), Some(v)));
                let (mut sk, mut sv) = (grow(pk), grow(pv));
                for (r, &len) in lengths.iter().enumerate() {
                    let at = [r..r + 1, 0..n_kv, len..len + new, 0..head_dim];
                    sk = sk.slice_assign(at.clone(), k.clone().narrow(0, r, 1));
                    sv = sv.slice_assign(at, v.clone().narrow(0, r, 1));
                }
                (sk, sv)
            }
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        let capacity = k.dims()[2];
        let view = KvView {
            keys: k,
            values: v,
            block_table: (0..rows).map(|r| vec![r]).collect(),
            lengths: self.lengths.iter().map(|&l| l + new).collect(),
        };
        debug_assert!(view.lengths.iter().all(|&l| l <= capacity));
        // The last layer's append completes a forward pass.
        if layer + 1 == self.layers.len() {
            self.lengths = view.lengths.clone();
        }
        view
    }

    fn truncate(&mut self, row: usize, len: usize) {
        let length = &mut self.lengths[row];
        *length = (*length).min(len);
        // Rows of one length again: keep them as one dense block each (the fast path),
        // or nothing at all when every row is empty.
        let first = self.lengths[0];
        if first == 0 && self.lengths.iter().all(|&l| l == 0) {
            self.layers.iter_mut().for_each(|slot| *slot = None);
        } else if self.lengths.iter().all(|&l| l == first) {
            self.map_layers(|t| t.narrow(2, 0, first));
        }
    }

    fn fork(&mut self, row: usize) -> usize {
        assert!(row < self.lengths.len(), "KvCache::fork: no row {row}");
        self.map_layers(|t| {
            let copy = t.clone().narrow(0, row, 1);
            Tensor::cat(vec![t, copy], 0)
        });
        self.lengths.push(self.lengths[row]);
        self.lengths.len() - 1
    }

    fn reorder(&mut self, order: &[usize]) {
        if order.is_empty() {
            return self.clear();
        }
        let rows = self.lengths.len();
        assert!(
            order.iter().all(|&r| r < rows),
            "KvCache::reorder: a row outside 0..{rows}"
        );
        self.map_layers(|t| {
            let ids: Vec<i64> = order.iter().map(|&r| r as i64).collect();
            let ids =
                Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [order.len()]), &t.device());
            t.select(0, ids)
        });
        self.lengths = order.iter().map(|&r| self.lengths[r]).collect();
    }
}
