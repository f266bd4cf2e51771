//! Gradient clipping as `optim.clip` and `optim.grad_clip` set it, with the units adaptive
//! clipping needs named from Ember's parameter paths.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use ember_nn::ParamInfo;
use ember_optim::{ClipKind, ClipUnit};

use crate::config::OptimConfig;

/// How a run clips its gradients.
#[derive(Debug, Clone)]
pub(crate) struct Clipping {
    kind: ClipKind,
    /// The threshold: a norm, a value or AGC's `λ`; 0 disables clipping.
    threshold: f64,
    /// Adaptive clipping: each parameter's units.
    units: HashMap<ParamId, ClipUnit>,
}

/// AGC's floor on a unit's weight norm (NFNets').
const AGC_EPS: f64 = 1e-3;

/// What a unit of the parameter at `path` is: embedding rows (`[vocab, d]`), projection
/// output columns (`[d_in, d_out]`), whole vectors; the untied LM head is not clipped,
/// as NFNets leave the classifier alone.
pub(crate) fn clip_unit(path: &str, shape: &[usize]) -> ClipUnit {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}."));
    if under("lm_head") || under("model.lm_head") {
        ClipUnit::Skip
    } else if shape.len() < 2 {
        ClipUnit::Whole
    } else if path.contains("embeddings.") || path.contains("embedding.") {
        ClipUnit::Rows
    } else {
        ClipUnit::Columns
    }
}

impl Clipping {
    pub(crate) fn new(config: &OptimConfig, params: &[ParamInfo]) -> Self {
        Self {
            kind: config.clip,
            threshold: config.grad_clip,
            units: params
                .iter()
                .map(|p| (p.id, clip_unit(&p.path, &p.shape)))
                .collect(),
        }
    }

    /// Clips `grads` in place; returns their global norm before clipping.
    pub(crate) fn apply<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        model: &M,
        grads: &mut GradientsParams,
    ) -> f64 {
        if self.threshold > 0.0 && self.kind == ClipKind::Norm {
            return ember_optim::clip_global_norm(model, grads, self.threshold);
        }
        let norm = ember_optim::global_grad_norm(model, grads);
        if self.threshold > 0.0 && norm.is_finite() {
            match self.kind {
                ClipKind::Norm => {}
                ClipKind::Value => ember_optim::clip_value(model, grads, self.threshold),
                ClipKind::Agc => {
                    ember_optim::clip_adaptive(model, grads, &self.units, self.threshold, AGC_EPS)
                }
            }
        }
        norm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_the_parameter_paths() {
        assert_eq!(
            clip_unit("tok_embeddings.weight", &[65, 32]),
            ClipUnit::Rows
        );
        assert_eq!(
            clip_unit("pos_embeddings.weight", &[64, 32]),
            ClipUnit::Rows
        );
        assert_eq!(clip_unit("lm_head.weight", &[32, 65]), ClipUnit::Skip);
        assert_eq!(
            clip_unit("layers.0.attn.q_proj.weight", &[32, 32]),
            ClipUnit::Columns
        );
        assert_eq!(
            clip_unit("layers.0.mlp.experts.w1", &[4, 32, 64]),
            ClipUnit::Columns
        );
        assert_eq!(clip_unit("final_norm.gamma", &[32]), ClipUnit::Whole);
    }
}
