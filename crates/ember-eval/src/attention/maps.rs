//! Attention probabilities of one prompt, every layer and head, on the host: the
//! [`AttentionMaps`] hook collects them from a forward pass ([`attention_maps`]).

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_nn::{ForwardHooks, ForwardOptions, FusedBackend, Transformer};
use serde::Serialize;

/// One layer's probabilities for one sequence: `[heads][query][key]`, row-major.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerMaps {
    pub heads: usize,
    pub queries: usize,
    pub keys: usize,
    /// `heads · queries · keys` values; row `(h, i)` sums to 1 over the keys `i` sees.
    pub probs: Vec<f32>,
}

impl LayerMaps {
    /// Head `h`'s `[queries, keys]` matrix.
    pub fn head(&self, h: usize) -> &[f32] {
        let size = self.queries * self.keys;
        &self.probs[h * size..(h + 1) * size]
    }

    /// `p[h][i][j]`.
    pub fn at(&self, h: usize, i: usize, j: usize) -> f32 {
        self.probs[(h * self.queries + i) * self.keys + j]
    }
}

/// A [`ForwardHooks`] that keeps the attention probabilities of the first sequence of a
/// batch, for the layers it is asked for (all when `layers` is `None`).
pub struct AttentionMaps {
    layers: Option<Vec<usize>>,
    /// Per layer index.
    pub maps: BTreeMap<usize, LayerMaps>,
}

impl AttentionMaps {
    pub fn new(layers: Option<Vec<usize>>) -> Self {
        Self {
            layers,
            maps: BTreeMap::new(),
        }
    }
}

impl<B: Backend> ForwardHooks<B> for AttentionMaps {
    fn wants_attention_probs(&self, layer: usize) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(&layer))
    }

    fn attention_probs(&mut self, layer: usize, probs: Tensor<B, 4>) {
        let [_, heads, queries, keys] = probs.dims();
        let first = probs.narrow(0, 0, 1).reshape([heads * queries * keys]);
        let probs = first
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 data converts to f32 values");
        self.maps.insert(
            layer,
            LayerMaps {
                heads,
                queries,
                keys,
                probs,
            },
        );
    }
}

/// The attention probabilities of `tokens` (one sequence, at most the model's context)
/// in `layers` (all when `None`), by layer.
pub fn attention_maps<B: FusedBackend>(
    model: &Transformer<B>,
    tokens: &[u32],
    layers: Option<Vec<usize>>,
    device: &B::Device,
) -> BTreeMap<usize, LayerMaps> {
    let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), device);
    let mut hooks = AttentionMaps::new(layers);
    let _ = model.forward(
        input,
        ForwardOptions {
            hooks: Some(&mut hooks),
            ..Default::default()
        },
    );
    hooks.maps
}
