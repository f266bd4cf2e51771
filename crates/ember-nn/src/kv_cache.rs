//! The key/value cache abstraction attention reads and writes through.
//!
//! The model only sees the [`KvCache`] trait, so a paged cache or a continuous-batching
//! scheduler can replace [`ContiguousKvCache`] without touching the layers.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Storage for the keys and values of past positions, one slot per layer.
pub trait KvCache<B: Backend> {
    /// Number of positions stored for every layer before the current forward pass.
    fn len(&self) -> usize;

    /// `true` when nothing is cached yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends this step's keys and values for `layer` and returns every cached key and
    /// value for that layer, oldest first.
    ///
    /// - `k`, `v`: `[batch, n_kv_heads, new, head_dim]`
    /// - returns `([batch, n_kv_heads, len + new, head_dim], same)`
    fn append(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>);
}

/// A cache that keeps each layer's keys and values as one contiguous tensor.
#[derive(Debug, Clone)]
pub struct ContiguousKvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    len: usize,
}

impl<B: Backend> ContiguousKvCache<B> {
    /// An empty cache for a model with `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            len: 0,
        }
    }

    /// Layer `layer`'s keys and values, `[batch, n_kv_heads, len, head_dim]` each.
    pub fn layer(&self, layer: usize) -> Option<(&Tensor<B, 4>, &Tensor<B, 4>)> {
        self.layers
            .get(layer)
            .and_then(|slot| slot.as_ref().map(|(k, v)| (k, v)))
    }

    /// Forgets every cached position.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|slot| *slot = None);
        self.len = 0;
    }
}

impl<B: Backend> KvCache<B> for ContiguousKvCache<B> {
    fn len(&self) -> usize {
        self.len
    }

    fn append(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let new = k.dims()[2];
        let (k, v) = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        // The last layer's append completes a forward pass.
        if layer + 1 == self.layers.len() {
            self.len += new;
        }
        (k, v)
    }
}
