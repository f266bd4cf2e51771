//! A `burn::nn::Linear` applied through [`ember_ops::fused::matmul`], so the process's
//! matmul precision ([`ember_ops::fused::set_matmul_precision`]) reaches every
//! projection of the model. At `f32` precision this is exactly `Linear::forward`.

use burn::nn::Linear;
use burn::tensor::Tensor;
use ember_ops::FusedBackend;

/// `x: [rows, d_in]` → `x · weight + bias`: `[rows, d_out]`.
pub fn project<B: FusedBackend>(linear: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let y = ember_ops::fused::matmul(x, linear.weight.val());
    match &linear.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    }
}
