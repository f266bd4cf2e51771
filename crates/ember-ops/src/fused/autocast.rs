//! Mixed precision: the dtype Ember's layers compute in while the weights stay f32, one
//! process-wide setting a training run sets (PyTorch's `torch.autocast`).
//!
//! With a low-precision dtype set ([`set_autocast`]):
//! - every [`super::matmul`] casts both inputs to it and returns its product in it (the
//!   weights' casts are autodiff ops, so their gradients reach the f32 weights in f32);
//! - the norms compute on f32 inputs (their statistics in f32), the residual stream and the
//!   logits stay f32;
//! - GELU, RoPE and attention take low-precision inputs, compute in f32 and keep only the
//!   low-precision inputs for the backward pass; attention's softmax is f32.
//!
//! Off (the default), nothing is cast.

use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, FloatDType, Tensor, TensorMetadata};

use super::FusedBackend;

static AUTOCAST: AtomicU8 = AtomicU8::new(0);

/// Sets the dtype layers compute in (`None`: f32, no casts) for the whole process.
pub fn set_autocast(dtype: Option<FloatDType>) {
    let code = match dtype {
        Some(FloatDType::BF16) => 1,
        Some(FloatDType::F16) => 2,
        _ => 0,
    };
    AUTOCAST.store(code, Ordering::Relaxed);
}

/// The low-precision dtype layers compute in, if any.
pub fn autocast() -> Option<FloatDType> {
    match AUTOCAST.load(Ordering::Relaxed) {
        1 => Some(FloatDType::BF16),
        2 => Some(FloatDType::F16),
        _ => None,
    }
}

/// `t` in `dtype`; no op when it is in `dtype` already.
pub fn cast_to<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: FloatDType) -> Tensor<B, D> {
    if t.dtype() == DType::from(dtype) {
        t
    } else {
        t.cast(dtype)
    }
}

/// `t` in the dtype of `like`; no op when they agree.
pub fn cast_like<B: Backend, const D: usize, const E: usize>(
    t: Tensor<B, D>,
    like: &Tensor<B, E>,
) -> Tensor<B, D> {
    cast_to(t, FloatDType::from(like.dtype()))
}

/// `t` in the autocast dtype when autocast is on; else `t`. Layers cast an input once
/// before the projections that share it (q, k and v; gate and up), so the backward pass
/// keeps one low-precision copy rather than one per projection.
pub fn to_compute<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    match autocast() {
        Some(dtype) => cast_to(t, dtype),
        None => t,
    }
}

/// `t` in f32 when autocast is on (the inputs of norms and of the loss); else `t`.
pub fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    match autocast() {
        Some(_) => cast_to(t, FloatDType::F32),
        None => t,
    }
}

/// A primitive in f32, and the low-precision dtype it came in (`None` when it was f32 or
/// another dtype kept as is).
pub(crate) fn prim_to_f32<B: Backend>(t: FloatTensor<B>) -> (FloatTensor<B>, Option<FloatDType>) {
    match t.dtype() {
        DType::BF16 => (B::float_cast(t, FloatDType::F32), Some(FloatDType::BF16)),
        DType::F16 => (B::float_cast(t, FloatDType::F32), Some(FloatDType::F16)),
        _ => (t, None),
    }
}

/// A primitive back in the low-precision dtype `dtype` (no op for `None`).
pub(crate) fn prim_back<B: Backend>(
    t: FloatTensor<B>,
    dtype: Option<FloatDType>,
) -> FloatTensor<B> {
    match dtype {
        Some(dtype) => B::float_cast(t, dtype),
        None => t,
    }
}

/// GELU computed in f32 whatever the input's dtype, returned in the input's dtype.
pub(crate) fn gelu_in_f32<B: FusedBackend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let (x, low) = prim_to_f32::<B>(x);
    prim_back::<B>(B::fused_gelu(x), low)
}

/// RoPE computed in f32 whatever the input's dtype, returned in the input's dtype.
pub(crate) fn rope_in_f32<B: FusedBackend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    interleaved: bool,
    inverse: bool,
) -> FloatTensor<B> {
    let (x, low) = prim_to_f32::<B>(x);
    prim_back::<B>(B::fused_rope(x, cos, sin, interleaved, inverse), low)
}

/// Attention computed in f32 whatever the inputs' dtype; the output is f32.
pub(crate) fn attention_in_f32<B: FusedBackend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    causal: bool,
) -> FloatTensor<B> {
    let ((q, _), (k, _), (v, _)) = (
        prim_to_f32::<B>(q),
        prim_to_f32::<B>(k),
        prim_to_f32::<B>(v),
    );
    B::fused_attention(q, k, v, causal)
}
