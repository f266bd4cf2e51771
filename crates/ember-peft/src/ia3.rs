//! IA³ (Liu et al. 2022) as `peft` defines it: a learned vector per adapted projection,
//! multiplying its output (`y = (x·W + b)⊙l`, e.g. keys and values) or, for the
//! feed-forward modules, its input (`y = (x⊙l)·W + b`, the MLP's down projection). The
//! vectors start at one, so training starts from the base model.

use burn::module::Param;
use burn::tensor::Tensor;
use ember_nn::{Adapter, FusedBackend, Transformer};
use serde::{Deserialize, Serialize};

use crate::attach::{PeftReport, attach, freeze_all_but, target_paths};
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
) -> Result<(Transformer<B>, PeftReport), PeftError> {
    let adapted = target_paths(&mut model, &config.targets, "peft.target_modules")?;
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
    attach(&mut model, &adapted, |path, projection| {
        let (d_in, d_out) = projection.dims();
        let ones = |n: usize| Some(Param::from_tensor(Tensor::ones([n], device)));
        if config.feedforward.matches(path) {
            Adapter {
                input_scale: ones(d_in),
                ..Adapter::empty()
            }
        } else {
            Adapter {
                output_scale: ones(d_out),
                ..Adapter::empty()
            }
        }
    })?;
    Ok(freeze_all_but(model, adapted, |_| false))
}
