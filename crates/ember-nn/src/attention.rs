//! Multi-head attention with grouped-query key/value sharing, QK-norm, sliding windows,
//! ALiBi and soft-capping.

use burn::module::Module;
use burn::nn::{Initializer, Linear};

use crate::linear::project;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ember_ops::{
    FlexOptions, FusedBackend, MaskMod, RopeTables, ScoreMod, alibi_slopes, flex_attention,
};

use crate::config::{PositionKind, TransformerConfig};
use crate::init::{Init, Role};
use crate::kv_cache::KvCache;
use crate::norm::RmsNorm;

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
/// `h / (n_heads / n_kv_heads)`; key/value heads are shared, never repeated).
///
/// The mask is causal, or a sliding window; ALiBi and soft-capping modify the scores.
/// Plain causal attention runs the fused kernel; the rest go through
/// [`ember_ops::flex_attention`].
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
    /// `[head_dim]` RMSNorm of each query head (QK-norm), applied before RoPE.
    pub q_norm: Option<RmsNorm<B>>,
    /// `[head_dim]` RMSNorm of each key head.
    pub k_norm: Option<RmsNorm<B>>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// `0` for plain causal attention.
    pub sliding_window: usize,
    /// `0.0` for no soft-cap.
    pub softcap: f64,
    pub alibi: bool,
}

impl<B: FusedBackend> Attention<B> {
    /// Projections per `init`; `o_proj` is a residual output.
    pub fn new(config: &TransformerConfig, init: &Init, device: &B::Device) -> Self {
        let (d_model, n_heads, n_kv_heads) = (config.d_model, config.n_heads, config.n_kv_heads);
        let head_dim = config.head_dim();
        let qkv_bias = config.qkv_bias();
        let head_norm = || {
            config.qk_norm.then(|| RmsNorm {
                gamma: Initializer::Ones.init([head_dim], device),
                epsilon: config.norm_eps,
            })
        };
        let input = |d_out| init.linear(d_model, d_out, qkv_bias, Role::Input, device);
        Self {
            q_proj: input(n_heads * head_dim),
            k_proj: input(n_kv_heads * head_dim),
            v_proj: input(n_kv_heads * head_dim),
            o_proj: init.linear(
                n_heads * head_dim,
                d_model,
                config.bias,
                Role::ResidualOutput,
                device,
            ),
            q_norm: head_norm(),
            k_norm: head_norm(),
            n_heads,
            n_kv_heads,
            head_dim,
            sliding_window: config.sliding_window.unwrap_or(0),
            softcap: config.attn_softcap.unwrap_or(0.0),
            alibi: config.position == PositionKind::Alibi,
        }
    }

    /// The mask: causal or a sliding window, and `documents` when given.
    pub fn mask(&self, documents: Option<&MaskMod>) -> MaskMod {
        let mask = if self.sliding_window > 0 {
            MaskMod::SlidingWindow(self.sliding_window)
        } else {
            MaskMod::Causal
        };
        match documents {
            Some(docs) => mask.and(docs.clone()),
            None => mask,
        }
    }

    /// The score modifier: soft-capping, then ALiBi.
    pub fn score_mod(&self) -> ScoreMod<B> {
        let mut score_mod = ScoreMod::none();
        if self.softcap > 0.0 {
            score_mod = score_mod.then(ScoreMod::SoftCap(self.softcap));
        }
        if self.alibi {
            score_mod = score_mod.then(ScoreMod::Alibi(alibi_slopes(self.n_heads)));
        }
        score_mod
    }

    /// - `x`: `[batch, seq, d_model]`, whose first row is at absolute position `start`
    /// - `rope`: rotary tables when the model uses RoPE
    /// - `cache`: past keys/values for this `layer`; this step's are appended to it
    /// - `prefix`: extra leading keys/values (prefix tuning), visible to every query
    /// - `documents`: a document mask (packed sequences), combined with the causal one
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
        documents: Option<&MaskMod>,
    ) -> Tensor<B, 3> {
        let [batch, seq, d_model] = x.dims();
        // Projections on `[batch * seq, d_model]`: one 2-D gemm each, forward and backward.
        let x = x.reshape([batch * seq, d_model]);
        // Heads split as `[batch, seq, heads, head_dim]`: QK-norm and RoPE run on this
        // contiguous layout, then the heads move forward for attention.
        let split = |t: Tensor<B, 2>, n: usize| t.reshape([batch, seq, n, self.head_dim]);
        let mut q = split(project(&self.q_proj, x.clone()), self.n_heads);
        let mut k = split(project(&self.k_proj, x.clone()), self.n_kv_heads);
        let v = split(project(&self.v_proj, x), self.n_kv_heads).swap_dims(1, 2);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = ember_ops::fused::rms_norm(q, qn.gamma.val(), qn.epsilon);
            k = ember_ops::fused::rms_norm(k, kn.gamma.val(), kn.epsilon);
        }
        if let Some(rope) = rope {
            q = rope.apply_seq_major(q, start);
            k = rope.apply_seq_major(k, start);
        }
        let (q, k) = (q.swap_dims(1, 2), k.swap_dims(1, 2));
        let (mut k, mut v) = match cache {
            Some(cache) => cache.append(layer, k, v),
            None => (k, v),
        };
        if let Some(prefix) = prefix {
            k = Tensor::cat(vec![prefix.key.clone(), k], 2);
            v = Tensor::cat(vec![prefix.value.clone(), v], 2);
        }
        // Masks are aligned at the bottom-right corner, covering the cache and the prefix.
        let out = flex_attention(
            q,
            k,
            v,
            &self.score_mod(),
            &self.mask(documents),
            &FlexOptions::default(),
        );
        let out = out
            .swap_dims(1, 2)
            .reshape([batch * seq, self.n_heads * self.head_dim]);
        project(&self.o_proj, out).reshape([batch, seq, d_model])
    }
}
