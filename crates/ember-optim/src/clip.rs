//! Gradient clipping: by global norm (`torch.nn.utils.clip_grad_norm_`), by value
//! (`clip_grad_value_`) and adaptive, unit-wise (NFNets' AGC), chosen by [`ClipKind`].
//!
//! burn's `GradientClipping::Norm` clips each parameter's gradient on its own; language
//! model recipes clip the norm of all gradients taken together, which is what
//! [`clip_global_norm`] does.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

/// How `optim.grad_clip` is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClipKind {
    /// The global norm of all gradients is at most `grad_clip`.
    #[default]
    Norm,
    /// Every gradient value is clamped to `[-grad_clip, grad_clip]`.
    Value,
    /// Adaptive gradient clipping: each unit's gradient norm is at most `grad_clip` (NFNets'
    /// `λ`) times its weight norm ([`clip_adaptive`]).
    Agc,
}

impl ClipKind {
    pub const EXPECTED: &'static str = "\"norm\", \"value\" or \"agc\"";
}

/// What a unit is for adaptive clipping, per parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipUnit {
    /// Each slice along the last dimension is a unit: a `[d_in, d_out]` projection's output
    /// unit is a column, its norm taken over `d_in` (`[.., d_in, d_out]` likewise).
    Columns,
    /// Each row is a unit: an embedding `[vocab, d]`'s rows.
    Rows,
    /// The whole tensor is one unit (vectors: biases, norm scales).
    Whole,
    /// Not clipped (NFNets leaves the final classifier alone).
    Skip,
}

struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sum = grad.square().sum();
            self.total = Some(match self.total.take() {
                Some(total) => total + sum,
                None => sum,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, grad.mul_scalar(self.factor));
        }
    }
}

/// Multiplies every gradient of `module`'s parameters by `factor` (unscaling after loss
/// scaling).
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    module.visit(&mut Scale { grads, factor });
}

/// The L2 norm of every gradient of `module`'s parameters taken together.
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut visitor = SquaredNorm::<B> { grads, total: None };
    module.visit(&mut visitor);
    visitor
        .total
        .map_or(0.0, |t| t.into_scalar().elem::<f64>().sqrt())
}

/// Scales all gradients by `max_norm / norm` when their global norm exceeds `max_norm`.
/// Returns the norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = global_grad_norm::<B, M>(module, grads);
    if norm > max_norm && norm.is_finite() {
        // The same epsilon as PyTorch's clip_grad_norm_.
        let factor = max_norm / (norm + 1e-6);
        module.visit(&mut Scale { grads, factor });
    }
    norm
}

struct ClampValues<'a> {
    grads: &'a mut GradientsParams,
    limit: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ClampValues<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, grad.clamp(-self.limit, self.limit));
        }
    }
}

/// Clamps every gradient value of `module`'s parameters to `[-limit, limit]`
/// (`torch.nn.utils.clip_grad_value_`).
pub fn clip_value<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    limit: f64,
) {
    module.visit(&mut ClampValues { grads, limit });
}

/// The L2 norm of each unit of `x`, kept in place for broadcasting.
fn unit_norms<B: burn::tensor::backend::Backend, const D: usize>(
    x: Tensor<B, D>,
    unit: ClipUnit,
) -> Tensor<B, D> {
    let squared = x.square();
    match unit {
        // The norm over the input dimension, one per output column.
        ClipUnit::Columns if D >= 2 => squared.sum_dim(D - 2).sqrt(),
        ClipUnit::Rows if D >= 2 => squared.sum_dim(D - 1).sqrt(),
        _ => squared.sum().sqrt().reshape([1; D]),
    }
}

struct Adaptive<'a> {
    grads: &'a mut GradientsParams,
    units: &'a HashMap<ParamId, ClipUnit>,
    lambda: f64,
    eps: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Adaptive<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let unit = self
            .units
            .get(&param.id)
            .copied()
            .unwrap_or(ClipUnit::Whole);
        if unit == ClipUnit::Skip {
            return;
        }
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let weight = param.val().inner();
        let max_norm = unit_norms(weight, unit)
            .clamp_min(self.eps)
            .mul_scalar(self.lambda);
        let grad_norm = unit_norms(grad.clone(), unit);
        let clipped = grad
            .clone()
            .mul(max_norm.clone().div(grad_norm.clone().clamp_min(1e-6)));
        let keep = grad_norm.lower(max_norm);
        let shape = grad.shape();
        let clipped = clipped.mask_where(keep.expand(shape), grad);
        self.grads.register::<B::InnerBackend, D>(param.id, clipped);
    }
}

/// Adaptive gradient clipping (Brock et al. 2021, NFNets): every unit `i` of a parameter
/// `W` whose gradient norm exceeds `λ · max(‖W_i‖, eps)` is scaled down to it,
/// `G_i ← λ · max(‖W_i‖, eps) / ‖G_i‖ · G_i`; units are given per parameter by `units`
/// (a parameter not listed is one [`ClipUnit::Whole`] unit). NFNets' `eps` is `1e-3`.
pub fn clip_adaptive<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    units: &HashMap<ParamId, ClipUnit>,
    lambda: f64,
    eps: f64,
) {
    module.visit(&mut Adaptive {
        grads,
        units,
        lambda,
        eps,
    });
}
