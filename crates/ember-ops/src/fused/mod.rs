//! Fused kernels: a few large operations in place of many small ones.
//!
//! [`FusedBackend`] is a burn backend extension. Each method has a default body written
//! with burn's own tensor ops, so every backend works unchanged; a backend overrides a
//! method where it has a faster kernel:
//! - `Flex` (feature `flex`): single-pass CPU kernels over the raw f32 buffers
//!   ([`crate::kernels::flex`]), split across threads with rayon;
//! - `Autodiff<B>`: one autograd node per fused op with a hand-written backward pass
//!   that calls `B`'s fused backward kernels ([`autodiff`]). Without this, autodiff
//!   records LayerNorm as ~10 nodes and attention as a dozen.
//!
//! The default bodies are the reference the overrides are tested against (values and
//! gradients), see `tests/fused.rs`.
//!
//! The Tensor-level entry points are the free functions [`gelu`], [`layer_norm`],
//! [`rms_norm`], [`rope`], [`attention`], [`matmul`] and [`matmul_bf16`]; those of the
//! block-quantized weights (`fused_dequantize`, `fused_quantized_matmul`) are in
//! [`crate::quant`].

pub mod autocast;
pub mod autodiff;
mod backends;
pub mod composed;
pub mod math;
pub mod precision;
mod retro;

pub use autocast::{autocast, set_autocast};
pub use precision::{MatmulPrecision, matmul_precision, set_matmul_precision};

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Tensor, TensorPrimitive};

use crate::quant::QuantSpec;

/// A burn [`Backend`] with Ember's fused kernels. Implemented for `Flex`,
/// `Wgpu`, `Cuda` (behind the features of the same names) and `Autodiff<B>` of any of
/// them.
///
/// Shapes: the normalisations and GELU take any rank and work on the last dimension;
/// attention takes `q: [batch, n_heads, seq_q, head_dim]`,
/// Receives `(rms, max_abs)` of a gradient ([`FusedBackend::observe_gradient`]).
#[derive(Clone)]
pub struct GradientSink(pub std::sync::Arc<dyn Fn(f64, f64) + Send + Sync>);

impl std::fmt::Debug for GradientSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GradientSink")
    }
}

/// `k, v: [batch, n_kv_heads, seq_kv, head_dim]`.
pub trait FusedBackend: Backend {
    /// `x` unchanged, `[batch, seq, d]`; on an autodiff backend the backward pass hands
    /// `sink` the RMS and max |·| of the gradient arriving at `x` (activation capture's
    /// backward side), then passes the gradient on unchanged.
    fn observe_gradient(x: FloatTensor<Self>, sink: GradientSink) -> FloatTensor<Self> {
        let _ = sink;
        x
    }

    /// Whether the backward pass runs memory-bound ops (norms, activations, reshapes)
    /// again instead of keeping their outputs: `Autodiff<_, BalancedCheckpointing>`,
    /// Ember's `selective` activation checkpointing.
    fn recomputes_memory_bound_ops() -> bool {
        false
    }

    /// Exact (erf) GELU: `x · Φ(x)`.
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::gelu::<Self>(x)
    }

    /// `dy · (Φ(x) + x·φ(x))`.
    fn fused_gelu_backward(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::gelu_backward::<Self>(x, dy)
    }

    /// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) · weight + bias`,
    /// with the biased variance (as PyTorch). `weight`, `bias`: `[d]`.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        eps: f64,
    ) -> FloatTensor<Self> {
        composed::layer_norm::<Self>(x, weight, bias, eps)
    }

    /// Gradients of [`fused_layer_norm`](Self::fused_layer_norm):
    /// `(dx, dweight, dbias)`.
    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::layer_norm_backward::<Self>(x, weight, dy, eps)
    }

    /// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) · weight`.
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        composed::rms_norm::<Self>(x, weight, eps)
    }

    /// Gradients of [`fused_rms_norm`](Self::fused_rms_norm): `(dx, dweight)`.
    fn fused_rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed::rms_norm_backward::<Self>(x, weight, dy, eps)
    }

    /// Softmax over the last dimension of `scale · scores`, `scores: [..., rows, seq_kv]`.
    ///
    /// With `causal_q_len = Some(t)`, row `r` (counted over all leading dimensions) is
    /// query `r % t` and keeps keys `j <= r % t + (seq_kv - t)`: causal masking aligned
    /// bottom-right, for query blocks of length `t` stacked along the rows (grouped-query
    /// attention stacks the `n_heads / n_kv_heads` queries of a group this way).
    fn fused_softmax(
        scores: FloatTensor<Self>,
        scale: f64,
        causal_q_len: Option<usize>,
    ) -> FloatTensor<Self> {
        composed::softmax::<Self>(scores, scale, causal_q_len)
    }

    /// Gradient of `scale · scores` through [`fused_softmax`](Self::fused_softmax) from
    /// its output `p` and the output gradient `dp`: `scale · p · (dp - Σ p·dp)`.
    fn fused_softmax_backward(
        p: FloatTensor<Self>,
        dp: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        composed::softmax_backward::<Self>(p, dp, scale)
    }

    /// Rotary embedding of `x: [batch, seq, heads, head_dim]` (sequence-major) with
    /// `cos`, `sin: [seq, rotary_dim]` in the layout's order (rotate-half, or interleaved
    /// pairs): the first `rotary_dim` features become `x · cos + rotate(x) · sin`, the rest
    /// pass through. With `inverse`, `sin` is negated: the inverse rotation, which is also
    /// the gradient of the forward one (rotation is orthogonal). The tables must give the
    /// two features of a pair the same angle, as [`crate::RopeTables`] builds them; the
    /// gradient relies on it.
    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        interleaved: bool,
        inverse: bool,
    ) -> FloatTensor<Self> {
        composed::rope::<Self>(x, cos, sin, interleaved, inverse)
    }

    /// `a · b` for `a: [m, k]`, `b: [k, n]` with both inputs rounded to bf16 (round to
    /// nearest even) and the products summed in f32. The default casts to bf16 and back
    /// and runs the f32 matmul: the reference the kernels are tested against.
    fn fused_matmul_bf16(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::matmul_bf16::<Self>(a, b)
    }

    /// The `[d_in, d_out]` weight that block-quantized `codes` (`[words, d_out]`) and
    /// `scales` (`[n_blocks, d_out]`) stand for (layout: [`crate::quant::format`]):
    /// `level[code] · absmax`, one f32 product per value. The default is burn tensor ops.
    fn fused_dequantize(
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        spec: QuantSpec,
    ) -> FloatTensor<Self> {
        composed::dequantize::<Self>(codes, scales, spec)
    }

    /// `x · W` for `x: [rows, d_in]` and `W` the weight of
    /// [`fused_dequantize`](Self::fused_dequantize), the product at `precision`. Autodiff
    /// records one node that keeps the codes and scales, not `W`, and differentiates `x`
    /// only.
    fn fused_quantized_matmul(
        x: FloatTensor<Self>,
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        spec: QuantSpec,
        precision: MatmulPrecision,
    ) -> FloatTensor<Self> {
        composed::quantized_matmul::<Self>(x, codes, scales, spec, precision)
    }

    /// Scaled dot-product attention with grouped-query sharing and optional causal
    /// masking (bottom-right aligned), scale `1/sqrt(head_dim)`. Returns
    /// `[batch, n_heads, seq_q, head_dim]`. The default runs burn's fused `attention` op.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        composed::attention::<Self>(q, k, v, causal)
    }

    /// Gradients of [`fused_attention`](Self::fused_attention) with respect to
    /// `(q, k, v)` from the output gradient `d_out: [batch, n_heads, seq_q, head_dim]`.
    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        d_out: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::attention_backward::<Self>(q, k, v, causal, d_out)
    }
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn tensor<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// Exact GELU, `[...]` → `[...]`.
pub fn gelu<B: FusedBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    tensor(B::fused_gelu(prim(x)))
}

/// LayerNorm over the last dimension. `weight`, `bias`: `[d]`; `x`: `[..., d]`.
pub fn layer_norm<B: FusedBackend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    bias: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, D> {
    tensor(B::fused_layer_norm(
        prim(x),
        prim(weight),
        bias.map(prim),
        eps,
    ))
}

/// RMSNorm over the last dimension. `weight`: `[d]`; `x`: `[..., d]`.
pub fn rms_norm<B: FusedBackend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    tensor(B::fused_rms_norm(prim(x), prim(weight), eps))
}

/// Softmax of `scale · scores` over the last dimension with optional causal masking;
/// see [`FusedBackend::fused_softmax`].
pub fn softmax<B: FusedBackend, const D: usize>(
    scores: Tensor<B, D>,
    scale: f64,
    causal_q_len: Option<usize>,
) -> Tensor<B, D> {
    tensor(B::fused_softmax(prim(scores), scale, causal_q_len))
}

/// Rotary embedding of `x: [batch, seq, heads, head_dim]` by the rows `cos`, `sin:
/// [seq, rotary_dim]`; see [`FusedBackend::fused_rope`].
pub fn rope<B: FusedBackend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    interleaved: bool,
) -> Tensor<B, 4> {
    tensor(B::fused_rope(
        prim(x),
        prim(cos),
        prim(sin),
        interleaved,
        false,
    ))
}

/// `a · b` at the process's [`matmul_precision`]: burn's f32 matmul, or
/// [`matmul_bf16`]; under [`autocast`], burn's matmul on both inputs cast to the autocast
/// dtype, the product in it. `a: [m, k]`, `b: [k, n]` → `[m, n]`.
pub fn matmul<B: FusedBackend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    if let Some(dtype) = autocast() {
        return autocast::cast_to(a, dtype).matmul(autocast::cast_to(b, dtype));
    }
    match matmul_precision() {
        MatmulPrecision::F32 => a.matmul(b),
        MatmulPrecision::Bf16 => matmul_bf16(a, b),
    }
}

/// `a · b` with bf16 inputs and f32 sums; see [`FusedBackend::fused_matmul_bf16`].
/// Under autodiff the gradients `dy · bᵀ` and `aᵀ · dy` are bf16 products too.
pub fn matmul_bf16<B: FusedBackend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    tensor(B::fused_matmul_bf16(prim(a), prim(b)))
}

/// Scaled dot-product attention; see [`FusedBackend::fused_attention`].
///
/// - `q`: `[batch, n_heads, seq_q, head_dim]`
/// - `k`, `v`: `[batch, n_kv_heads, seq_kv, head_dim]`, `n_heads % n_kv_heads == 0`
/// - returns `[batch, n_heads, seq_q, head_dim]`
pub fn attention<B: FusedBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
) -> Tensor<B, 4> {
    tensor(B::fused_attention(prim(q), prim(k), prim(v), causal))
}
