//! `train.prune`: gradual magnitude pruning during training, with the masks kept through
//! every later update.

use std::collections::BTreeMap;

use burn::tensor::backend::AutodiffBackend;
use ember_nn::Transformer;

use super::{HookState, HookTensor, StepHook, StepInfo};
use crate::prune::{PruneConfig, apply_masks, masks_of};

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
    pub fn new(config: PruneConfig) -> Self {
        Self {
            config,
            masks: BTreeMap::new(),
            sparsity: 0.0,
        }
    }
}

impl<B: AutodiffBackend> StepHook<B> for GradualPrune {
    fn name(&self) -> &str {
        "prune"
    }

    fn after_step(&mut self, model: Transformer<B>, info: &StepInfo) -> Transformer<B> {
        if self.config.prunes_at(info.step) {
            self.sparsity = self.config.sparsity_at(info.step);
            // Pruned weights are zero, so a new mask keeps every earlier cut.
            self.masks = masks_of(&model, self.sparsity, self.config.scope);
        }
        if self.masks.is_empty() {
            return model;
        }
        // The masks were made from this model's own parameters.
        match apply_masks(model.clone(), &self.masks) {
            Ok(pruned) => pruned,
            Err(_) => model,
        }
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
