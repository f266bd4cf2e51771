//! Block-quantized frozen weights (QLoRA's storage): 4-bit NF4 or symmetric int8 codes
//! with one f32 absmax per block, dequantized on the fly.
//!
//! - [`format`](mod@format): [`QuantFormat`] (the NF4 levels, int8) and [`QuantSpec`] (the layout:
//!   blocks along `d_in`, codes packed 8 or 4 to a 32-bit word);
//! - [`pack`]: quantizing on the host ([`quantize_host`]);
//! - [`dequantize`] and [`quantized_matmul`]: the tensor-level ops, through
//!   [`FusedBackend::fused_dequantize`] and [`FusedBackend::fused_quantized_matmul`]
//!   (burn tensor ops by default, a one-pass kernel on Flex).
//!
//! Under autodiff, `quantized_matmul` is one node whose saved state is the packed codes
//! and the scales (the parameters' own buffers, shared, not copied): its backward pass
//! dequantizes the weight again for `dx = dy · Wᵀ` instead of keeping a dequantized f32
//! copy of every weight alive from the forward pass to the backward pass. The codes and
//! scales get no gradient.

pub mod format;
pub mod pack;

pub use format::{NF4_LEVELS, QuantFormat, QuantSpec};
pub use pack::quantize_host;

use burn::tensor::{Int, Tensor, TensorPrimitive};

use crate::fused::{FusedBackend, matmul_precision};

/// The `[d_in, d_out]` weight that `codes` (`[words, d_out]`, see [`format`](mod@format)) and
/// `scales` (`[n_blocks, d_out]`) stand for: `level[code] · absmax`. A constant under
/// autodiff.
pub fn dequantize<B: FusedBackend>(
    codes: Tensor<B, 2, Int>,
    scales: Tensor<B, 2>,
    spec: QuantSpec,
) -> Tensor<B, 2> {
    let w = B::fused_dequantize(
        codes.into_primitive(),
        scales.into_primitive().tensor(),
        spec,
    );
    Tensor::from_primitive(TensorPrimitive::Float(w))
}

/// `x · W` for `x: [rows, d_in]` and the quantized `W` `[d_in, d_out]`, at the process's
/// matmul precision ([`crate::fused::set_matmul_precision`]). Under autodiff only `x`
/// gets a gradient, `dy · Wᵀ`, with `W` dequantized again in the backward pass.
pub fn quantized_matmul<B: FusedBackend>(
    x: Tensor<B, 2>,
    codes: Tensor<B, 2, Int>,
    scales: Tensor<B, 2>,
    spec: QuantSpec,
) -> Tensor<B, 2> {
    let y = B::fused_quantized_matmul(
        x.into_primitive().tensor(),
        codes.into_primitive(),
        scales.into_primitive().tensor(),
        spec,
        matmul_precision(),
    );
    Tensor::from_primitive(TensorPrimitive::Float(y))
}
