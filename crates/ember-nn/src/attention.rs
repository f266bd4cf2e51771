//! Multi-head attention with grouped-query key/value sharing.

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ember_ops::FusedBackend;
use ember_ops::RopeTables;

use crate::kv_cache::KvCache;

/// Extra keys and values placed before the sequence in one layer (prefix tuning).
///
/// - `key`, `value`: `[batch, n_kv_heads, n_prefix, head_dim]`, already rotated if the
///   model uses RoPE.
#[derive(Debug, Clone)]
pub struct KvPrefix<B: Backend> {
    pub key: Tensor<B, 4>,
    pub value: Tensor<B, 4>,
}

/// Causal self-attention. `n_kv_heads == n_heads` is MHA, `1` is MQA, anything between
/// that divides `n_heads` is GQA (query head `h` reads key/value head
/// `h / (n_heads / n_kv_heads)`).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[d_model, n_heads * head_dim]`
    pub q_proj: Linear<B>,
    /// `[d_model, n_kv_heads * head_dim]`
    pub k_proj: Linear<B>,
    /// `[d_model, n_kv_heads * head_dim]`
    pub v_proj: Linear<B>,
    /// `[n_heads * head_dim, d_model]`
    pub o_proj: Linear<B>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// A `Linear` with normal(0, `std`) weights and zero bias.
pub(crate) fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    let weight: Param<Tensor<B, 2>> =
        Initializer::Normal { mean: 0.0, std }.init([d_in, d_out], device);
    let bias = bias.then(|| Initializer::Zeros.init([d_out], device));
    Linear { weight, bias }
}

impl<B: FusedBackend> Attention<B> {
    /// Projections initialised normal(0, `std`); `o_proj` uses `residual_std`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        d_model: usize,
        n_heads: usize,
        n_kv_heads: usize,
        bias: bool,
        std: f64,
        residual_std: f64,
        device: &B::Device,
    ) -> Self {
        let head_dim = d_model / n_heads;
        Self {
            q_proj: linear(d_model, n_heads * head_dim, bias, std, device),
            k_proj: linear(d_model, n_kv_heads * head_dim, bias, std, device),
            v_proj: linear(d_model, n_kv_heads * head_dim, bias, std, device),
            o_proj: linear(n_heads * head_dim, d_model, bias, residual_std, device),
            n_heads,
            n_kv_heads,
            head_dim,
        }
    }

    /// - `x`: `[batch, seq, d_model]`, whose first row is at absolute position `start`
    /// - `rope`: rotary tables when the model uses RoPE
    /// - `cache`: past keys/values for this `layer`; this step's are appended to it
    /// - `prefix`: extra leading keys/values (prefix tuning), visible to every query
    /// - returns `[batch, seq, d_model]`
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        start: usize,
        rope: Option<&RopeTables<B>>,
        cache: Option<&mut dyn KvCache<B>>,
        layer: usize,
        prefix: Option<&KvPrefix<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, d_model] = x.dims();
        // Projections on `[batch * seq, d_model]`: one 2-D gemm each, forward and backward.
        let x = x.reshape([batch * seq, d_model]);
        let heads =
            |t: Tensor<B, 2>, n: usize| t.reshape([batch, seq, n, self.head_dim]).swap_dims(1, 2);
        let mut q = heads(self.q_proj.forward(x.clone()), self.n_heads);
        let mut k = heads(self.k_proj.forward(x.clone()), self.n_kv_heads);
        let v = heads(self.v_proj.forward(x), self.n_kv_heads);
        if let Some(rope) = rope {
            q = rope.apply(q, start);
            k = rope.apply(k, start);
        }
        let (mut k, mut v) = match cache {
            Some(cache) => cache.append(layer, k, v),
            None => (k, v),
        };
        if let Some(prefix) = prefix {
            k = Tensor::cat(vec![prefix.key.clone(), k], 2);
            v = Tensor::cat(vec![prefix.value.clone(), v], 2);
        }
        // Bottom-right-aligned causal masking covers both the cache and the prefix.
        let out = ember_ops::fused::attention(q, k, v, true);
        let out = out
            .swap_dims(1, 2)
            .reshape([batch * seq, self.n_heads * self.head_dim]);
        self.o_proj.forward(out).reshape([batch, seq, d_model])
    }
}
