//! `train.prune`: gradual magnitude pruning during training, with the masks kept through
//! every later update.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use ember_nn::Transformer;

use super::{HookState, HookTensor, StepHook, StepInfo};
use crate::prune::{PruneConfig, apply_masks, masks_of, prunable};

/// Prunes to [`PruneConfig::sparsity_at`] on the steps [`PruneConfig::prunes_at`] names,
/// and zeroes the pruned weights again after every other step (the optimizer's moments
/// would otherwise regrow them).
pub struct GradualPrune {
    config: PruneConfig,
    /// Per prunable parameter path, which weights are kept.
    masks: BTreeMap<String, Vec<bool>>,
    sparsity: f64,
}

impl GradualPrune {
    /// Pruning that starts from `model`'s exact zeros (a model pruned before, given to
    /// `--init-from`), kept like later cuts.
    pub fn new<B: Backend, M: Module<B>>(config: PruneConfig, model: &M) -> Self {
        let masks: BTreeMap<String, Vec<bool>> = ember_nn::param_values_f32(model)
            .into_iter()
            .filter(|(path, (shape, values))| prunable(path, shape) && values.contains(&0.0))
            .map(|(path, (_, values))| (path, values.iter().map(|v| *v != 0.0).collect()))
            .collect();
        Self {
            config,
            masks,
            sparsity: 0.0,
        }
    }
}

impl GradualPrune {
    /// `model` with the masked weights at zero. The masks were made from this model's
    /// parameters and checked when restored, so they fit.
    fn masked<B: Backend>(&self, model: Transformer<B>) -> Transformer<B> {
        if self.masks.is_empty() {
            return model;
        }
        match apply_masks(model.clone(), &self.masks) {
            Ok(pruned) => pruned,
            Err(_) => model,
        }
    }
}

impl<B: AutodiffBackend> StepHook<B> for GradualPrune {
    fn name(&self) -> &str {
        "prune"
    }

    fn after_step(&mut self, model: Transformer<B>, info: &StepInfo) -> Transformer<B> {
        // The update may have moved pruned weights: zero them first, so that new masks
        // are computed from the pruned model and keep every earlier cut.
        let mut model = self.masked(model);
        if self.config.prunes_at(info.step) {
            self.sparsity = self.config.sparsity_at(info.step);
            let mut masks = masks_of(&model, self.sparsity, self.config.scope);
            for (path, mask) in &mut masks {
                if let Some(old) = self.masks.get(path) {
                    for (keep, kept_before) in mask.iter_mut().zip(old) {
                        *keep &= *kept_before;
                    }
                }
            }
            self.masks = masks;
            model = self.masked(model);
        }
        model
    }

    fn save_state(&self) -> HookState {
        HookState {
            json: serde_json::json!({ "sparsity": self.sparsity }),
            tensors: self
                .masks
                .iter()
                .map(|(path, mask)| HookTensor {
                    name: path.clone(),
                    shape: vec![mask.len()],
                    values: mask.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect(),
                })
                .collect(),
        }
    }

    fn load_state(&mut self, state: HookState) -> Result<(), String> {
        if let Some(bad) = state
            .tensors
            .iter()
            .find(|t| t.shape.iter().product::<usize>() != t.values.len())
        {
            return Err(format!("the mask of {} does not fit its shape", bad.name));
        }
        self.sparsity = state.json["sparsity"]
            .as_f64()
            .ok_or("holds no \"sparsity\"")?;
        self.masks = state
            .tensors
            .into_iter()
            .map(|t| (t.name, t.values.iter().map(|v| *v != 0.0).collect()))
            .collect();
        Ok(())
    }
}
