//! The normalisation a block uses: burn's LayerNorm or RmsNorm.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::config::NormKind;

/// LayerNorm (GPT-2) or RMSNorm (Llama) over the last dimension.
#[derive(Module, Debug)]
pub enum Norm<B: Backend> {
    LayerNorm(LayerNorm<B>),
    RmsNorm(RmsNorm<B>),
}

impl<B: Backend> Norm<B> {
    /// Scale 1 and (LayerNorm with `bias`) shift 0.
    pub fn new(kind: NormKind, d_model: usize, eps: f64, bias: bool, device: &B::Device) -> Self {
        match kind {
            NormKind::LayerNorm => Norm::LayerNorm(
                LayerNormConfig::new(d_model)
                    .with_epsilon(eps)
                    .with_bias(bias)
                    .init(device),
            ),
            NormKind::RmsNorm => {
                Norm::RmsNorm(RmsNormConfig::new(d_model).with_epsilon(eps).init(device))
            }
        }
    }

    /// `[batch, seq, d_model]` → `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Norm::LayerNorm(norm) => norm.forward(x),
            Norm::RmsNorm(norm) => norm.forward(x),
        }
    }
}
