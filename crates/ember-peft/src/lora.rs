//! LoRA (Hu et al. 2021), rsLoRA and DoRA (Liu et al. 2024) as `peft` defines them: `y = x·W + b + (α/r)·drop(x)·Aᵀ·Bᵀ`, with
//! `A` `[r, d_in]` drawn Kaiming-uniform (`peft`'s default) or Gaussian and `B` `[d_out, r]`
//! zero, so training starts from the base model. rsLoRA scales by `α/√r` instead.
//!
//! In Ember's layout ([`ember_nn::Adapter`]) `down = Aᵀ` `[d_in, r]` and `up = Bᵀ`
//! `[r, d_out]`, like the base weight's `[d_in, d_out]`.

use burn::module::Param;
use burn::nn::{DropoutConfig, Initializer};
use burn::tensor::Tensor;
use ember_nn::{Adapter, FusedBackend, Transformer};

use crate::attach::{PeftReport, attach, freeze_all_but, target_paths};
use serde::{Deserialize, Serialize};

use crate::targets::{PeftError, Targets};

/// How `A` is drawn (`B` starts at zero either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraInit {
    /// `peft`'s default (`init_lora_weights = true`): Kaiming-uniform with `a = √5`,
    /// i.e. uniform in `±1/√d_in`.
    #[default]
    Kaiming,
    /// `init_lora_weights = "gaussian"`: normal with standard deviation `1/r`.
    Gaussian,
}

/// Which biases train alongside the adapters (`peft`'s `bias`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraBias {
    /// None.
    #[default]
    None,
    /// Every bias of the model, norms' included.
    All,
    /// The biases of the adapted projections.
    LoraOnly,
}

/// A LoRA configuration; the names follow `peft`'s `LoraConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r`.
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// `lora_dropout`, on the adapter path's input.
    pub dropout: f64,
    /// Scale by `α/√r` (rsLoRA) instead of `α/r`.
    pub use_rslora: bool,
    /// DoRA: a trainable magnitude per output feature, starting at the norm of the
    /// weight's column (`peft`'s `use_dora`).
    #[serde(default)]
    pub use_dora: bool,
    pub init: LoraInit,
    pub bias: LoraBias,
    /// `target_modules`.
    pub targets: Targets,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 8.0,
            dropout: 0.0,
            use_rslora: false,
            use_dora: false,
            init: LoraInit::Kaiming,
            bias: LoraBias::None,
            targets: Targets::Names(vec!["q_proj".into(), "v_proj".into()]),
        }
    }
}

impl LoraConfig {
    /// The factor on `B·A`: `α/r`, or `α/√r` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// `Err` names the key (`peft.r`, `peft.lora_alpha`, `peft.lora_dropout`) at fault.
    pub fn validate(&self) -> Result<(), PeftError> {
        if self.r == 0 || self.r > 1 << 16 {
            return Err(PeftError(format!(
                "peft.r = {}: expected a rank from 1 to 65536",
                self.r
            )));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(PeftError(format!(
                "peft.lora_alpha = {}: expected a positive number",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(PeftError(format!(
                "peft.lora_dropout = {}: expected a probability in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }
}

/// Attaches a LoRA adapter to every target projection of `model` and freezes everything
/// else (no gradient is computed for a frozen parameter). Parameter ids stay derived from
/// paths, so optimizer state survives a restart. `Err` names the key at fault; `model`
/// is consumed either way.
pub fn apply_lora<B: FusedBackend>(
    mut model: Transformer<B>,
    config: &LoraConfig,
    device: &B::Device,
) -> Result<(Transformer<B>, PeftReport), PeftError> {
    config.validate()?;
    let adapted = target_paths(&mut model, &config.targets, "peft.target_modules")?;
    let scaling = config.scaling();
    attach(&mut model, &adapted, |_, projection| {
        let (d_in, d_out) = projection.dims();
        let down = match config.init {
            LoraInit::Kaiming => {
                let bound = 1.0 / (d_in as f64).sqrt();
                Initializer::Uniform {
                    min: -bound,
                    max: bound,
                }
            }
            LoraInit::Gaussian => Initializer::Normal {
                mean: 0.0,
                std: 1.0 / config.r as f64,
            },
        };
        let magnitude = config.use_dora.then(|| {
            // A quantized base's norms are those of its dequantized weight, as `peft`
            // computes them on a bitsandbytes 4-bit layer.
            let w = projection.base_weight();
            Param::from_tensor(w.powi_scalar(2).sum_dim(0).sqrt().reshape([d_out]).detach())
        });
        Adapter {
            down: Some(down.init([d_in, config.r], device)),
            up: Some(Param::from_tensor(Tensor::zeros([config.r, d_out], device))),
            magnitude,
            scaling,
            dropout: DropoutConfig::new(config.dropout).init(),
            ..Adapter::empty()
        }
    })?;
    let lora_only = config.bias == LoraBias::LoraOnly;
    let all = config.bias == LoraBias::All;
    let adapted_biases: Vec<String> = adapted.iter().map(|a| format!("{a}.bias")).collect();
    let biases = move |path: &str| {
        let bias = path.ends_with(".bias") || path.ends_with(".beta");
        (bias && all) || (lora_only && adapted_biases.iter().any(|b| b == path))
    };
    Ok(freeze_all_but(model, adapted, biases))
}
