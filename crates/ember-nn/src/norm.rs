//! The normalisation a block uses: LayerNorm, RMSNorm or per-token GroupNorm over the last
//! dimension, run by the fused kernels of [`ember_ops::fused`].
//!
//! The parameters have burn's names (`gamma`, `beta`), so the checkpoint layout is that
//! of `burn::nn::LayerNorm` / `RmsNorm`; the modules are Ember's own only because burn's
//! LayerNorm keeps its epsilon private and the fused op needs it.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ember_ops::FusedBackend;

use crate::config::{NormKind, TransformerConfig};

/// `(x - mean) / sqrt(var + epsilon) · gamma + beta` over the last dimension.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// `[d_model]`, initialised to ones.
    pub gamma: Param<Tensor<B, 1>>,
    /// `[d_model]`, initialised to zeros; `None` for bias-free models.
    pub beta: Option<Param<Tensor<B, 1>>>,
    pub epsilon: f64,
}

/// `x / sqrt(mean(x²) + epsilon) · gamma` over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[d_model]`, initialised to ones.
    pub gamma: Param<Tensor<B, 1>>,
    pub epsilon: f64,
}

/// Per-token GroupNorm over `[batch, seq, channels]`: the channels of each position are
/// split into `groups` contiguous groups, each normalised to zero mean and unit variance,
/// then `· gamma + beta` per channel. Unlike `burn::nn::GroupNorm` over
/// `[batch, channels, seq]`, statistics never mix positions, so causality holds.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    /// `[d_model]`, initialised to ones.
    pub gamma: Param<Tensor<B, 1>>,
    /// `[d_model]`, initialised to zeros; `None` for bias-free models.
    pub beta: Option<Param<Tensor<B, 1>>>,
    pub groups: usize,
    pub epsilon: f64,
}

#[derive(Module, Debug)]
pub enum Norm<B: Backend> {
    LayerNorm(LayerNorm<B>),
    RmsNorm(RmsNorm<B>),
    GroupNorm(GroupNorm<B>),
}

impl<B: FusedBackend> Norm<B> {
    /// The norm a model config asks for, over `d_model` channels.
    pub fn from_config(config: &TransformerConfig, device: &B::Device) -> Self {
        Self::new(
            config.norm,
            config.d_model,
            config.norm_eps,
            config.bias,
            config.norm_groups,
            device,
        )
    }

    /// `groups` is used by GroupNorm only.
    pub fn new(
        kind: NormKind,
        d_model: usize,
        eps: f64,
        bias: bool,
        groups: usize,
        device: &B::Device,
    ) -> Self {
        let gamma = Initializer::Ones.init([d_model], device);
        match kind {
            NormKind::GroupNorm => Norm::GroupNorm(GroupNorm {
                gamma,
                beta: bias.then(|| Initializer::Zeros.init([d_model], device)),
                groups,
                epsilon: eps,
            }),
            NormKind::LayerNorm => Norm::LayerNorm(LayerNorm {
                gamma,
                beta: bias.then(|| Initializer::Zeros.init([d_model], device)),
                epsilon: eps,
            }),
            NormKind::RmsNorm => Norm::RmsNorm(RmsNorm {
                gamma,
                epsilon: eps,
            }),
        }
    }

    /// `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        // Norms compute in f32 under mixed precision (their statistics need it).
        let x = ember_ops::fused::autocast::to_f32(x);
        match self {
            Norm::LayerNorm(norm) => ember_ops::fused::layer_norm(
                x,
                norm.gamma.val(),
                norm.beta.as_ref().map(|b| b.val()),
                norm.epsilon,
            ),
            Norm::RmsNorm(norm) => ember_ops::fused::rms_norm(x, norm.gamma.val(), norm.epsilon),
            Norm::GroupNorm(norm) => {
                let [batch, seq, channels] = x.dims();
                let width = channels / norm.groups;
                let grouped = x.reshape([batch * seq, norm.groups, width]);
                let ones = Tensor::ones([width], &grouped.device());
                let normed = ember_ops::fused::layer_norm(grouped, ones, None, norm.epsilon)
                    .reshape([batch, seq, channels]);
                let scaled = normed * norm.gamma.val().unsqueeze::<3>();
                match &norm.beta {
                    Some(beta) => scaled + beta.val().unsqueeze::<3>(),
                    None => scaled,
                }
            }
        }
    }
}
