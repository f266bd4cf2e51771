//! `train.freeze` and `train.unfreeze`: which parameters train at each step.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::backend::Backend;
use ember_nn::{ParamInfo, matches_pattern};

use crate::config::ConfigError;

/// Parameters matching a `freeze` glob are frozen; so are those matching an `unfreeze`
/// glob, until its step (counted in optimizer steps: `{ "layers.0.*" = 500 }` trains
/// them from the 501st step on). A frozen parameter gets no gradient and no optimizer
/// state; its state starts when it unfreezes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Freezing {
    freeze: Vec<String>,
    unfreeze: Vec<(String, usize)>,
}

impl Freezing {
    /// The settings, checked against the model's parameters: every glob must match one,
    /// and some parameter must train at step 0.
    pub(crate) fn new(
        freeze: &[String],
        unfreeze: &BTreeMap<String, usize>,
        params: &[ParamInfo],
    ) -> Result<Self, ConfigError> {
        let freezing = Self {
            freeze: freeze.to_vec(),
            unfreeze: unfreeze.iter().map(|(g, s)| (g.clone(), *s)).collect(),
        };
        let globs = freezing
            .freeze
            .iter()
            .map(|g| (g, "train.freeze".to_string()))
            .chain(
                freezing
                    .unfreeze
                    .iter()
                    .map(|(g, _)| (g, format!("train.unfreeze.\"{g}\""))),
            );
        for (glob, key) in globs {
            if !params.iter().any(|p| matches_pattern(glob, &p.path)) {
                return Err(ConfigError(format!(
                    "{key}: `{glob}` matches no parameter (paths look like `{}`)",
                    params
                        .first()
                        .map_or("layers.0.attn.q_proj.weight", |p| &p.path)
                )));
            }
        }
        if !freezing.is_empty() && !params.iter().any(|p| freezing.trainable(&p.path, 0)) {
            return Err(ConfigError(
                "train.freeze: freezes every parameter at the first step; nothing would train"
                    .into(),
            ));
        }
        Ok(freezing)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.freeze.is_empty() && self.unfreeze.is_empty()
    }

    /// Whether the parameter at `path` trains in optimizer step `step` (0-based).
    pub(crate) fn trainable(&self, path: &str, step: usize) -> bool {
        let matched = |glob: &String| matches_pattern(glob, path);
        if self.unfreeze.iter().any(|(g, s)| *s <= step && matched(g)) {
            return true;
        }
        !(self.freeze.iter().any(matched) || self.unfreeze.iter().any(|(g, _)| matched(g)))
    }

    /// Whether some parameter starts training at step `step`.
    pub(crate) fn changes_at(&self, step: usize) -> bool {
        self.unfreeze.iter().any(|(_, s)| *s == step)
    }

    /// `model` with each parameter trainable or frozen as it is at `step`.
    pub(crate) fn apply<B: Backend, M: Module<B>>(&self, model: M, step: usize) -> M {
        ember_nn::set_trainable(model, |path| self.trainable(path, step))
    }
}
