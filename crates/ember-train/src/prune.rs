//! Magnitude pruning: which weights to zero, by size, over the whole model or layer by
//! layer; used by `ember prune` and by gradual pruning during training
//! ([`crate::hooks::GradualPrune`]).

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::TensorData;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// Over what the smallest weights are chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PruneScope {
    /// The smallest magnitudes among all prunable weights together.
    #[default]
    Global,
    /// The same share of each weight matrix.
    Layer,
}

/// `train.prune`: gradual magnitude pruning (Zhu & Gupta 2017) during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    /// The final share of prunable weights that are zero, in `[0, 1)`.
    pub sparsity: f64,
    /// The step the first pruning happens after.
    pub start: usize,
    /// The step the final sparsity is reached at.
    pub end: usize,
    /// Steps between two prunings.
    #[serde(default = "default_every")]
    pub every: usize,
    #[serde(default)]
    pub scope: PruneScope,
}

fn default_every() -> usize {
    10
}

impl PruneConfig {
    /// The sparsity after step `step` (steps completed), on the cubic schedule
    /// `s_f · (1 − (1 − (t − start) / (end − start))³)`, 0 before `start`, `s_f` after
    /// `end`.
    pub fn sparsity_at(&self, step: usize) -> f64 {
        if step < self.start {
            return 0.0;
        }
        if step >= self.end {
            return self.sparsity;
        }
        let progress = (step - self.start) as f64 / (self.end - self.start) as f64;
        self.sparsity * (1.0 - (1.0 - progress).powi(3))
    }

    /// Whether the masks are recomputed after step `step`.
    pub fn prunes_at(&self, step: usize) -> bool {
        step >= self.start
            && step <= self.end
            && ((step - self.start).is_multiple_of(self.every) || step == self.end)
    }

    /// Checks the values; errors name the key.
    pub fn validate(&self, total_steps: usize) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.sparsity) {
            return Err(format!(
                "train.prune.sparsity: must be in [0, 1), got {}",
                self.sparsity
            ));
        }
        if self.start >= self.end {
            return Err(format!(
                "train.prune: start = {} must come before end = {}",
                self.start, self.end
            ));
        }
        if self.every == 0 {
            return Err("train.prune.every: must be at least 1".into());
        }
        // A run may stop before `end` and be resumed towards it: `total_steps` bounds
        // nothing.
        let _ = total_steps;
        Ok(())
    }
}

/// The weights pruning touches: the blocks' matrices (attention and MLP projections,
/// experts), not embeddings, norms, biases, MoE routers or the LM head.
pub fn prunable(path: &str, shape: &[usize]) -> bool {
    path.starts_with("layers.") && shape.len() >= 2 && !path.contains("router")
}

/// Which values to keep (`true`) so that `sparsity` of them (rounded down) are pruned:
/// the smallest by magnitude across all of `tensors` ([`PruneScope::Global`]) or within
/// each ([`PruneScope::Layer`]). Values already zero count as the smallest.
pub fn magnitude_masks(tensors: &[&[f32]], sparsity: f64, scope: PruneScope) -> Vec<Vec<bool>> {
    let mut masks: Vec<Vec<bool>> = tensors.iter().map(|t| vec![true; t.len()]).collect();
    let prune = |members: Vec<(usize, usize)>, masks: &mut Vec<Vec<bool>>| {
        let k = (sparsity * members.len() as f64).floor() as usize;
        if k == 0 {
            return;
        }
        let mut members = members;
        let magnitude = |&(t, i): &(usize, usize)| tensors[t][i].abs();
        members.select_nth_unstable_by(k - 1, |a, b| magnitude(a).total_cmp(&magnitude(b)));
        for &(t, i) in &members[..k] {
            masks[t][i] = false;
        }
    };
    match scope {
        PruneScope::Global => {
            let all = tensors
                .iter()
                .enumerate()
                .flat_map(|(t, v)| (0..v.len()).map(move |i| (t, i)))
                .collect();
            prune(all, &mut masks);
        }
        PruneScope::Layer => {
            for (t, v) in tensors.iter().enumerate() {
                prune((0..v.len()).map(|i| (t, i)).collect(), &mut masks);
            }
        }
    }
    masks
}

/// `module` with the prunable weights at the masked-out positions set to zero; `masks`
/// by parameter path (`true`: kept).
pub fn apply_masks<B: Backend, M: Module<B>>(
    module: M,
    masks: &BTreeMap<String, Vec<bool>>,
) -> Result<M, String> {
    let values = ember_nn::param_values_f32(&module);
    let only = |path: &str| masks.contains_key(path);
    ember_nn::replace_params_where(module, &only, &mut |path, shape| {
        let (_, mut data) = values
            .get(path)
            .cloned()
            .ok_or_else(|| format!("{path}: no such parameter"))?;
        let mask = &masks[path];
        if mask.len() != data.len() {
            return Err(format!(
                "{path}: a mask of {} values for {} weights",
                mask.len(),
                data.len()
            ));
        }
        for (value, keep) in data.iter_mut().zip(mask) {
            if !keep {
                *value = 0.0;
            }
        }
        Ok(TensorData::new(data, shape.to_vec()))
    })
}

/// Magnitude masks of `module`'s prunable weights, by path.
pub fn masks_of<B: Backend, M: Module<B>>(
    module: &M,
    sparsity: f64,
    scope: PruneScope,
) -> BTreeMap<String, Vec<bool>> {
    let values: BTreeMap<String, (Vec<usize>, Vec<f32>)> = ember_nn::param_values_f32(module)
        .into_iter()
        .filter(|(path, (shape, _))| prunable(path, shape))
        .collect();
    let tensors: Vec<&[f32]> = values.values().map(|(_, v)| v.as_slice()).collect();
    let masks = magnitude_masks(&tensors, sparsity, scope);
    values.into_keys().zip(masks).collect()
}

/// Prunable weights that are zero, and how many prunable weights there are.
pub fn sparsity_of<B: Backend, M: Module<B>>(module: &M) -> (usize, usize) {
    ember_nn::param_values_f32(module)
        .into_iter()
        .filter(|(path, (shape, _))| prunable(path, shape))
        .fold((0, 0), |(zeros, total), (_, (_, v))| {
            (
                zeros + v.iter().filter(|x| **x == 0.0).count(),
                total + v.len(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_prune_the_smallest_magnitudes() {
        let a = [0.5f32, -0.1, 0.3, -2.0];
        let b = [0.05f32, 1.0, -0.2, 0.0];
        // Globally, the 4 smallest |w| of the 8: 0.0, 0.05, -0.1, -0.2.
        let global = magnitude_masks(&[&a, &b], 0.5, PruneScope::Global);
        assert_eq!(global[0], [true, false, true, true]);
        assert_eq!(global[1], [false, true, false, false]);
        // Per layer, 2 of each: a loses -0.1 and 0.3, b loses 0.0 and 0.05.
        let layer = magnitude_masks(&[&a, &b], 0.5, PruneScope::Layer);
        assert_eq!(layer[0], [true, false, false, true]);
        assert_eq!(layer[1], [false, true, true, false]);
        assert!(
            magnitude_masks(&[&a], 0.2, PruneScope::Global)[0]
                .iter()
                .all(|k| *k)
        );
    }

    #[test]
    fn the_schedule_is_cubic_from_start_to_end() {
        let p = PruneConfig {
            sparsity: 0.8,
            start: 10,
            end: 20,
            every: 5,
            scope: PruneScope::Global,
        };
        assert_eq!(p.sparsity_at(9), 0.0);
        assert_eq!(p.sparsity_at(10), 0.0);
        assert!((p.sparsity_at(15) - 0.8 * (1.0 - 0.125)).abs() < 1e-12);
        assert_eq!(p.sparsity_at(20), 0.8);
        assert_eq!(p.sparsity_at(99), 0.8);
        let at: Vec<usize> = (0..30).filter(|s| p.prunes_at(*s)).collect();
        assert_eq!(at, [10, 15, 20]);
    }
}
