//! Multi-head attention with grouped-query key/value sharing, QK-norm, sliding windows,
//! ALiBi and soft-capping.

use burn::module::Module;
use burn::nn::Initializer;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ember_ops::fused::autocast;
use ember_ops::{
    FlexOptions, FusedBackend, MaskMod, RopeTables, ScoreMod, alibi_slopes, flex_attention,
};

use crate::config::{PositionKind, TransformerConfig};
use crate::context::{LayerContext, Positions};
use crate::init::{Init, Role};
use crate::kv_cache::KvView;
use crate::norm::RmsNorm;
use crate::projection::Projection;

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
    pub q_proj: Projection<B>,
    /// `[d_model, n_kv_heads * head_dim]`
    pub k_proj: Projection<B>,
    /// `[d_model, n_kv_heads * head_dim]`
    pub v_proj: Projection<B>,
    /// `[n_heads * head_dim, d_model]`
    pub o_proj: Projection<B>,
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

    /// - `x`: `[batch, seq, d_model]`, row `r`'s first token at `ctx.positions.row(r)`
    /// - `ctx`: the rotary tables, the cache (this pass's keys and values are appended),
    ///   a prefix (extra leading keys/values visible to every query), a document mask
    /// - returns `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>, ctx: &mut LayerContext<'_, B>) -> Tensor<B, 3> {
        let [batch, seq, d_model] = x.dims();
        // Projections on `[batch * seq, d_model]`: one 2-D gemm each, forward and backward.
        let x = autocast::to_compute(x.reshape([batch * seq, d_model]));
        // Heads split as `[batch, seq, heads, head_dim]`: QK-norm and RoPE run on this
        // contiguous layout, then the heads move forward for attention.
        let split = |t: Tensor<B, 2>, n: usize| t.reshape([batch, seq, n, self.head_dim]);
        let mut q = split(self.q_proj.forward(x.clone()), self.n_heads);
        let mut k = split(self.k_proj.forward(x.clone()), self.n_kv_heads);
        let v = split(self.v_proj.forward(x), self.n_kv_heads).swap_dims(1, 2);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            // In f32 under mixed precision, as every norm.
            let (qf, kf) = (autocast::to_f32(q), autocast::to_f32(k));
            q = ember_ops::fused::rms_norm(qf, qn.gamma.val(), qn.epsilon);
            k = ember_ops::fused::rms_norm(kf, kn.gamma.val(), kn.epsilon);
        }
        if let Some(rope) = ctx.rope {
            q = rotate_rows(rope, q, ctx.positions);
            k = rotate_rows(rope, k, ctx.positions);
        }
        let (q, k) = (q.swap_dims(1, 2), k.swap_dims(1, 2));
        let view = match ctx.cache.as_deref_mut() {
            Some(cache) => cache.append(ctx.layer, k, v),
            None => KvView::dense(k, v),
        };
        let (k, v, mask) = self.keys_and_mask(view, ctx.prefix, ctx.documents);
        if let Some(hooks) = ctx.hooks.as_deref_mut()
            && hooks.wants_attention_probs(ctx.layer)
        {
            let probs = ember_ops::attention_probabilities(
                q.clone(),
                k.clone(),
                &self.score_mod(),
                &mask,
                None,
            );
            hooks.attention_probs(ctx.layer, probs);
        }
        // Masks are aligned at the bottom-right corner, covering the cache and the prefix.
        let out = flex_attention(q, k, v, &self.score_mod(), &mask, &FlexOptions::default());
        let out = out
            .swap_dims(1, 2)
            .reshape([batch * seq, self.n_heads * self.head_dim]);
        self.o_proj.forward(out).reshape([batch, seq, d_model])
    }

    /// The keys and values attention reads, `[batch, n_kv_heads, seq_kv, head_dim]` with
    /// the prefix in front, and the mask over them.
    ///
    /// Rows of different lengths are read through the view's block table and padded on
    /// the left, so every row's newest position is the last column; the mask hides the
    /// padding and sees each row shifted by its padding, so causal, sliding-window and
    /// document masks (and ALiBi's distances) are those of the row on its own.
    fn keys_and_mask(
        &self,
        view: KvView<B>,
        prefix: Option<&KvPrefix<B>>,
        documents: Option<&MaskMod>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, MaskMod) {
        let mask = self.mask(documents);
        let with_prefix =
            |k: Tensor<B, 4>, v: Tensor<B, 4>, p: Option<(Tensor<B, 4>, Tensor<B, 4>)>| match p {
                Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
                None => (k, v),
            };
        if view.is_dense() {
            let p = prefix.map(|p| (p.key.clone(), p.value.clone()));
            let (k, v) = with_prefix(view.keys, view.values, p);
            return (k, v, mask);
        }
        let n_prefix = prefix.map_or(0, |p| p.key.dims()[2]);
        let longest = view.lengths.iter().copied().max().unwrap_or(0);
        let [_, n_kv, _, head_dim] = view.keys.dims();
        let device = view.keys.device();
        let mut padding = Vec::with_capacity(view.lengths.len());
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for r in 0..view.lengths.len() {
            let (k, v) = view.row(r);
            let pad = longest - view.lengths[r];
            let p = prefix.map(|p| {
                (
                    p.key.clone().narrow(0, r, 1),
                    p.value.clone().narrow(0, r, 1),
                )
            });
            let (k, v) = with_prefix(k, v, p);
            let zeros = || Tensor::<B, 4>::zeros([1, n_kv, pad, head_dim], &device);
            let (k, v) = if pad > 0 {
                (
                    Tensor::cat(vec![zeros(), k], 2),
                    Tensor::cat(vec![zeros(), v], 2),
                )
            } else {
                (k, v)
            };
            keys.push(k);
            values.push(v);
            padding.push(pad);
        }
        debug_assert!(keys.iter().all(|k| k.dims()[2] == longest + n_prefix));
        let shifted = MaskMod::row_offset(mask, padding);
        (Tensor::cat(keys, 0), Tensor::cat(values, 0), shifted)
    }
}

/// RoPE on `x: [batch, seq, heads, head_dim]`, each row from its own start.
fn rotate_rows<B: FusedBackend>(
    rope: &RopeTables<B>,
    x: Tensor<B, 4>,
    positions: &Positions,
) -> Tensor<B, 4> {
    match positions.uniform() {
        Some(start) => rope.apply_seq_major(x, start),
        None => {
            let rows = (0..x.dims()[0])
                .map(|r| {
                    let row = x.clone().narrow(0, r, 1);
                    match positions.tokens(r) {
                        Some(at) => rope.apply_seq_major_at(row, at),
                        None => rope.apply_seq_major(row, positions.row(r)),
                    }
                })
                .collect();
            Tensor::cat(rows, 0)
        }
    }
}
