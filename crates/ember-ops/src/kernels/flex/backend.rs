//! `impl FusedBackend for Flex`: each method runs its family's kernel and falls back to
//! the composed body (burn tensor ops) where the kernel does not apply (other dtypes,
//! ranks or layouts, or a CPU without AVX512-BF16 for the bf16 matmul).

use burn::tensor::ops::{FloatTensor, IntTensor};
use burn_flex::Flex;

use super::{attention, gelu, matmul, norm, quant, rope, softmax};
use crate::fused::{FusedBackend, composed};
use crate::quant::QuantSpec;

impl FusedBackend for Flex {
    /// One pass over the packed codes ([`quant`](super::quant)); the composed body for
    /// other dtypes.
    fn fused_dequantize(
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        spec: QuantSpec,
    ) -> FloatTensor<Self> {
        quant::dequantize(&codes, &scales, spec)
            .unwrap_or_else(|| composed::dequantize::<Self>(codes, scales, spec))
    }

    /// The AVX512-BF16 kernel of [`bf16_gemm`](super::bf16_gemm) on strided views (the
    /// backward pass's transposes are not copied); on CPUs without it, the inputs rounded
    /// to nearest-even bf16 values on the host and burn's f32 product (the same numbers
    /// up to the order of f32 additions); the composed cast-and-matmul for other layouts.
    fn fused_matmul_bf16(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        if let Some(c) = matmul::bf16(&a, &b) {
            return c;
        }
        match (matmul::rounded_to_bf16(&a), matmul::rounded_to_bf16(&b)) {
            (Some(a), Some(b)) => {
                <Self as burn::tensor::ops::FloatTensorOps<Self>>::float_matmul(a, b)
            }
            _ => composed::matmul_bf16::<Self>(a, b),
        }
    }

    /// Per-head gemm calls around the fused masked softmax on strided views, with no
    /// copies for the head split; see `kernels::flex::attention`. (burn's own Flex
    /// attention is a scalar loop for short sequences, which made it the largest single
    /// cost of a nanoGPT-sized training step.)
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        if !attention::supported(&[&q, &k, &v]) {
            return composed::attention::<Self>(q, k, v, causal);
        }
        attention::forward(&q, &k, &v, causal)
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        gelu::forward(&x).unwrap_or_else(|| composed::gelu::<Self>(x))
    }

    fn fused_gelu_backward(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        gelu::backward(&x, &dy).unwrap_or_else(|| composed::gelu_backward::<Self>(x, dy))
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        eps: f64,
    ) -> FloatTensor<Self> {
        norm::forward(&x, &weight, bias.as_ref(), eps, false)
            .unwrap_or_else(|| composed::layer_norm::<Self>(x, weight, bias, eps))
    }

    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        norm::backward(&x, &weight, &dy, eps, false)
            .unwrap_or_else(|| composed::layer_norm_backward::<Self>(x, weight, dy, eps))
    }

    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        norm::forward(&x, &weight, None, eps, true)
            .unwrap_or_else(|| composed::rms_norm::<Self>(x, weight, eps))
    }

    fn fused_rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match norm::backward(&x, &weight, &dy, eps, true) {
            Some((dx, dweight, _)) => (dx, dweight),
            None => composed::rms_norm_backward::<Self>(x, weight, dy, eps),
        }
    }

    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        interleaved: bool,
        inverse: bool,
    ) -> FloatTensor<Self> {
        rope::apply(&x, &cos, &sin, interleaved, inverse)
            .unwrap_or_else(|| composed::rope::<Self>(x, cos, sin, interleaved, inverse))
    }

    fn fused_softmax(
        scores: FloatTensor<Self>,
        scale: f64,
        causal_q_len: Option<usize>,
    ) -> FloatTensor<Self> {
        softmax::forward(&scores, scale, causal_q_len)
            .unwrap_or_else(|| composed::softmax::<Self>(scores, scale, causal_q_len))
    }

    fn fused_softmax_backward(
        p: FloatTensor<Self>,
        dp: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        softmax::backward(&p, &dp, scale)
            .unwrap_or_else(|| composed::softmax_backward::<Self>(p, dp, scale))
    }

    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        d_out: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if !attention::supported(&[&q, &k, &v, &d_out]) {
            return composed::attention_backward::<Self>(q, k, v, causal, d_out);
        }
        attention::backward(&q, &k, &v, causal, &d_out)
    }
}
