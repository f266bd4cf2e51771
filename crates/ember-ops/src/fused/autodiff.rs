//! `FusedBackend` for `Autodiff<B>`: each fused op is one autograd node whose backward
//! pass calls `B`'s fused backward kernels.
//!
//! Attention runs forward through `B`'s fused attention (burn's `attention` op by
//! default) and keeps only q, k and v; the backward pass recomputes the attention
//! probabilities from them (as FlashAttention does) instead of storing
//! `[batch, heads, seq, seq]` for every layer. Grouped-query attention never repeats
//! K/V heads in the backward pass: the `n_heads / n_kv_heads` queries that share a K/V
//! head are stacked along the rows of one matmul.
//!
//! Under mixed precision ([`super::autocast`]) GELU, RoPE and attention keep their
//! low-precision inputs and compute (both passes) in f32.
//!
//! The norms and GELU are marked memory bound, with the recipe to run them again
//! ([`super::retro`]): under burn's `BalancedCheckpointing` their outputs are recomputed
//! for the backward pass instead of kept.
//!
//! The product with a block-quantized weight keeps the packed codes and scales, not the
//! dequantized weight, and dequantizes again in its backward pass
//! ([`QuantizedMatmulBackward`], [`QuantizedMatmulState`]).

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::{BalancedCheckpointing, CheckpointStrategy};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};

use std::marker::PhantomData;

use super::autocast::{attention_in_f32, gelu_in_f32, prim_back, prim_to_f32, rope_in_f32};
use super::retro::{NormKind, RetroGelu, RetroNorm};
use super::{FusedBackend, GradientSink, MatmulPrecision, composed};
use crate::quant::QuantSpec;

#[derive(Debug)]
struct GeluBackward;

impl<B: FusedBackend> Backward<B, 1> for GeluBackward {
    /// The input, in its own dtype (low precision under autocast; computed in f32).
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, low) = prim_to_f32::<B>(ops.state);
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            let (dy, _) = prim_to_f32::<B>(dy);
            prim_back::<B>(B::fused_gelu_backward(x, dy), low)
        });
    }
}

#[derive(Debug)]
struct RopeBackward;

impl<B: FusedBackend> Backward<B, 1> for RopeBackward {
    /// (cos, sin, interleaved, inverse)
    type State = (FloatTensor<B>, FloatTensor<B>, bool, bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin, interleaved, inverse) = ops.state;
        // The rotation is orthogonal: its gradient is the opposite rotation.
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            rope_in_f32::<B>(dy, cos, sin, interleaved, !inverse)
        });
    }
}

#[derive(Debug)]
struct LayerNormBackward;

impl<B: FusedBackend> Backward<B, 3> for LayerNormBackward {
    /// (x, weight, eps)
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, weight, eps) = ops.state;
        let (dx, dweight, dbias) = B::fused_layer_norm_backward(x, weight, dy, eps);
        let [x_node, weight_node, bias_node] = ops.parents;
        for (node, grad) in [(x_node, dx), (weight_node, dweight), (bias_node, dbias)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct NormNoBiasBackward {
    rms: bool,
}

impl<B: FusedBackend> Backward<B, 2> for NormNoBiasBackward {
    /// (x, weight, eps)
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, weight, eps) = ops.state;
        let (dx, dweight) = if self.rms {
            B::fused_rms_norm_backward(x, weight, dy, eps)
        } else {
            let (dx, dweight, _) = B::fused_layer_norm_backward(x, weight, dy, eps);
            (dx, dweight)
        };
        let [x_node, weight_node] = ops.parents;
        for (node, grad) in [(x_node, dx), (weight_node, dweight)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl<B: FusedBackend> Backward<B, 3> for AttentionBackward {
    /// (q, k, v, causal)
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, bool);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (d_out, _) = prim_to_f32::<B>(grads.consume::<B>(&ops.node));
        // Inputs kept in their own dtype; the gradients computed in f32 and returned in it.
        let (q, k, v, causal) = ops.state;
        let ((q, q_low), (k, k_low), (v, v_low)) = (
            prim_to_f32::<B>(q),
            prim_to_f32::<B>(k),
            prim_to_f32::<B>(v),
        );
        let (dq, dk, dv) = B::fused_attention_backward(q, k, v, causal, d_out);
        let (dq, dk, dv) = (
            prim_back::<B>(dq, q_low),
            prim_back::<B>(dk, k_low),
            prim_back::<B>(dv, v_low),
        );
        let [q_node, k_node, v_node] = ops.parents;
        for (node, grad) in [(q_node, dq), (k_node, dk), (v_node, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct MatmulBf16Backward;

impl<B: FusedBackend> Backward<B, 2> for MatmulBf16Backward {
    /// (a, b), each kept only when the other input needs its gradient.
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let (a, b) = ops.state;
        let [a_node, b_node] = ops.parents;
        // Both gradients are bf16 products too, on transposed views (no copies on Flex).
        if let (Some(node), Some(b)) = (a_node, b) {
            let da = B::fused_matmul_bf16(dy.clone(), B::float_transpose(b));
            grads.register::<B>(node.id, da);
        }
        if let (Some(node), Some(a)) = (b_node, a) {
            let db = B::fused_matmul_bf16(B::float_transpose(a), dy);
            grads.register::<B>(node.id, db);
        }
    }
}

/// The backward pass of [`FusedBackend::fused_quantized_matmul`]: `dx = dy · Wᵀ`, with
/// `W` dequantized again from the packed codes.
#[derive(Debug)]
pub struct QuantizedMatmulBackward;

/// What [`QuantizedMatmulBackward`] keeps from the forward pass to the backward pass: the
/// packed codes and the block scales (the parameters' own buffers, shared), the layout
/// and the product's precision. Never the dequantized weight.
pub type QuantizedMatmulState<B> = (IntTensor<B>, FloatTensor<B>, QuantSpec, MatmulPrecision);

impl<B: FusedBackend> Backward<B, 1> for QuantizedMatmulBackward {
    type State = QuantizedMatmulState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (codes, scales, spec, precision) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            let w = B::fused_dequantize(codes, scales, spec);
            composed::precise_matmul::<B>(dy, B::float_transpose(w), precision)
        });
    }
}

#[derive(Debug)]
struct ObserveBackward;

impl<B: FusedBackend> Backward<B, 1> for ObserveBackward {
    type State = GradientSink;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let sink = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            use burn::tensor::{ElementConversion, Tensor, TensorPrimitive};
            let g = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(dy.clone()));
            let rms = g.clone().square().mean().sqrt().into_scalar().elem::<f64>();
            let max_abs = g.abs().max().into_scalar().elem::<f64>();
            (sink.0)(rms, max_abs);
            dy
        });
    }
}

impl<B: FusedBackend, C: CheckpointStrategy> FusedBackend for Autodiff<B, C> {
    fn observe_gradient(x: FloatTensor<Self>, sink: GradientSink) -> FloatTensor<Self> {
        match ObserveBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(sink, x.primitive),
            OpsKind::UnTracked(prep) => prep.finish(x.primitive),
        }
    }

    fn recomputes_memory_bound_ops() -> bool {
        std::any::TypeId::of::<C>() == std::any::TypeId::of::<BalancedCheckpointing>()
    }

    /// The dequantized weight as a constant (no gradient reaches codes or scales).
    fn fused_dequantize(
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        spec: QuantSpec,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::fused_dequantize(codes, scales.primitive, spec))
    }

    fn fused_quantized_matmul(
        x: FloatTensor<Self>,
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        spec: QuantSpec,
        precision: MatmulPrecision,
    ) -> FloatTensor<Self> {
        // Only `x` is a parent: the quantized weight is frozen.
        let scales = scales.primitive;
        match QuantizedMatmulBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fused_quantized_matmul(
                    x.primitive,
                    codes.clone(),
                    scales.clone(),
                    spec,
                    precision,
                );
                prep.finish((codes, scales, spec, precision), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_quantized_matmul(
                x.primitive,
                codes,
                scales,
                spec,
                precision,
            )),
        }
    }

    fn fused_matmul_bf16(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        match MatmulBf16Backward
            .prepare::<C>([a.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fused_matmul_bf16(a.primitive.clone(), b.primitive.clone());
                // `a` is needed for `b`'s gradient and `b` for `a`'s.
                let keep_a = (!b.node.requirement.is_none()).then_some(a.primitive);
                let keep_b = (!a.node.requirement.is_none()).then_some(b.primitive);
                prep.finish((keep_a, keep_b), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_matmul_bf16(a.primitive, b.primitive)),
        }
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let retro = RetroGelu::<B> {
            x: x.node.id,
            _backend: PhantomData,
        };
        match GeluBackward
            .prepare::<C>([x.node.clone()])
            .memory_bound()
            .retro_forward(retro)
            .parents([&x])
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = gelu_in_f32::<B>(x.primitive.clone());
                prep.finish(x.primitive, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(gelu_in_f32::<B>(x.primitive)),
        }
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let Some(bias) = bias else {
            return norm_no_bias::<B, C>(x, weight, eps, false);
        };
        let retro = RetroNorm::<B> {
            kind: NormKind::Layer,
            x: x.node.id,
            weight: weight.node.id,
            bias: Some(bias.node.id),
            eps,
            _backend: PhantomData,
        };
        match LayerNormBackward
            .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
            .memory_bound()
            .retro_forward(retro)
            .parents([&x, &weight, &bias])
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fused_layer_norm(
                    x.primitive.clone(),
                    weight.primitive.clone(),
                    Some(bias.primitive),
                    eps,
                );
                prep.finish((x.primitive, weight.primitive, eps), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_layer_norm(
                x.primitive,
                weight.primitive,
                Some(bias.primitive),
                eps,
            )),
        }
    }

    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        norm_no_bias::<B, C>(x, weight, eps, true)
    }

    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        interleaved: bool,
        inverse: bool,
    ) -> FloatTensor<Self> {
        // The tables are constants: only `x` is a parent.
        let (cos, sin) = (cos.primitive, sin.primitive);
        match RopeBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out =
                    rope_in_f32::<B>(x.primitive, cos.clone(), sin.clone(), interleaved, inverse);
                prep.finish((cos, sin, interleaved, inverse), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(rope_in_f32::<B>(
                x.primitive,
                cos,
                sin,
                interleaved,
                inverse,
            )),
        }
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        match AttentionBackward
            .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = attention_in_f32::<B>(
                    q.primitive.clone(),
                    k.primitive.clone(),
                    v.primitive.clone(),
                    causal,
                );
                prep.finish((q.primitive, k.primitive, v.primitive, causal), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(attention_in_f32::<B>(
                q.primitive,
                k.primitive,
                v.primitive,
                causal,
            )),
        }
    }
}

fn norm_no_bias<B: FusedBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    eps: f64,
    rms: bool,
) -> FloatTensor<Autodiff<B, C>> {
    let forward = |x, weight| {
        if rms {
            B::fused_rms_norm(x, weight, eps)
        } else {
            B::fused_layer_norm(x, weight, None, eps)
        }
    };
    let retro = RetroNorm::<B> {
        kind: if rms { NormKind::Rms } else { NormKind::Layer },
        x: x.node.id,
        weight: weight.node.id,
        bias: None,
        eps,
        _backend: PhantomData,
    };
    match (NormNoBiasBackward { rms })
        .prepare::<C>([x.node.clone(), weight.node.clone()])
        .memory_bound()
        .retro_forward(retro)
        .parents([&x, &weight])
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = forward(x.primitive.clone(), weight.primitive.clone());
            prep.finish((x.primitive, weight.primitive, eps), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, weight.primitive)),
    }
}
