//! IA³ (Liu et al. 2022) as `peft` defines it: a learned vector per adapted projection,
//! multiplying its output (`y = (x·W + b)⊙l`, e.g. keys and values) or, for the
//! feed-forward modules, its input (`y = (x⊙l)·W + b`, the MLP's down projection). The
//! vectors start at one, so training starts from the base model.

use burn::module::Param;
use burn::nn::DropoutConfig;
use burn::tensor::Tensor;
use ember_nn::{Adapter, FusedBackend, Transformer};
use serde::{Deserialize, Serialize};

use crate::lora::{LoraReport, freeze_all_but};
use crate::targets::{PeftError, Targets};

/// An IA³ configuration; the names follow `peft`'s `IA3Config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ia3Config {
    /// `target_modules`.
    pub targets: Targets,
    /// `feedforward_modules`: the targets scaled on the input side.
    pub feedforward: Targets,
}

/// Attaches an IA³ vector to every target projection of `model` and freezes everything
/// else. `Err` names the key at fault (`peft.target_modules`,
/// `peft.feedforward_modules`).
pub fn apply_ia3<B: FusedBackend>(
    mut model: Transformer<B>,
    config: &Ia3Config,
    device: &B::Device,
) -> Result<(Transformer<B>, LoraReport), PeftError> {
    let paths: Vec<String> = model
        .projections_mut()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let adapted = config.targets.select(&paths, "peft.target_modules")?;
    if let Targets::Names(names) = &config.feedforward
        && let Some(stray) = names.iter().find(|n| {
            !adapted
                .iter()
                .any(|p| p.rsplit('.').next() == Some(n.as_str()))
        })
    {
        return Err(PeftError(format!(
            "peft.feedforward_modules: `{stray}` is not among the adapted target_modules"
        )));
    }
    for (path, projection) in model.projections_mut() {
        if !adapted.contains(&path) {
            continue;
        }
        if projection.adapter.is_some() {
            return Err(PeftError(format!("{path}: already carries an adapter")));
        }
        let (d_in, d_out) = projection.dims();
        let ones = |n: usize| Some(Param::from_tensor(Tensor::ones([n], device)));
        let feedforward = config.feedforward.matches(&path);
        projection.adapter = Some(Adapter {
            down: None,
            up: None,
            rank_scale: None,
            input_scale: if feedforward { ones(d_in) } else { None },
            output_scale: if feedforward { None } else { ones(d_out) },
            magnitude: None,
            scaling: 1.0,
            dropout: DropoutConfig::new(0.0).init(),
        });
    }
    Ok(freeze_all_but(model, adapted, |_| false))
}
