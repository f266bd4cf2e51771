//! [`AdaLoraConfig`]: `peft`'s `AdaLoraConfig`, its names and defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::targets::{PeftError, Targets};

/// An AdaLoRA configuration; the names and defaults follow `peft`'s `AdaLoraConfig`
/// (`deltaT` is accepted for [`Self::delta_t`]). Missing keys take the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdaLoraConfig {
    /// The rank every adapted projection starts with (`peft` default 12).
    pub init_r: usize,
    /// The average rank per projection once pruning is done (default 8).
    pub target_r: usize,
    /// Steps of warm-up before any pruning (default 0).
    pub tinit: usize,
    /// Steps at the end trained with the final rank pattern fixed (default 0).
    pub tfinal: usize,
    /// Prune every `delta_t` steps in between (`deltaT`, default 1).
    #[serde(alias = "deltaT")]
    pub delta_t: usize,
    /// Smoothing of the sensitivity (default 0.85).
    pub beta1: f64,
    /// Smoothing of its uncertainty (default 0.85).
    pub beta2: f64,
    /// Weight of [`crate::orthogonal_penalty`] in the loss (default 0.5).
    pub orth_reg_weight: f64,
    /// The number of training steps, which the schedule needs (no default: required to
    /// train, not to load an adapter).
    pub total_step: Option<usize>,
    /// `lora_alpha` (default 8): the update is scaled by `lora_alpha / (init_r + 1e-5)`.
    pub lora_alpha: f64,
    /// `lora_dropout` (default 0), on the adapter path's input.
    pub lora_dropout: f64,
    /// `target_modules` (`peft`'s default for Llama: `q_proj`, `v_proj`).
    pub targets: Targets,
    /// `rank_pattern`: which ranks of each adapted projection (by Ember path) survived the
    /// last pruning; `None` before any. An adapter is saved with only those ranks.
    pub rank_pattern: Option<BTreeMap<String, Vec<bool>>>,
}

impl Default for AdaLoraConfig {
    fn default() -> Self {
        Self {
            init_r: 12,
            target_r: 8,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg_weight: 0.5,
            total_step: None,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            targets: Targets::Names(vec!["q_proj".into(), "v_proj".into()]),
            rank_pattern: None,
        }
    }
}

impl AdaLoraConfig {
    /// The factor on `B·diag(E)·A`: `peft`'s `scaling / (ranknum + 1e-5)`, with `scaling =
    /// lora_alpha` (`init_r` when `lora_alpha` is 0) and `ranknum = init_r`, which `peft`
    /// keeps when it loads an adapter at pruned ranks. `ranknum + 1e-5` is taken in f32,
    /// as `peft` holds it.
    pub fn scaling(&self) -> f64 {
        let alpha = if self.lora_alpha > 0.0 {
            self.lora_alpha
        } else {
            self.init_r as f64
        };
        alpha / f64::from(self.init_r as f32 + 1e-5f32)
    }

    /// `Err` names the key (`peft.init_r`, `peft.target_r`, `peft.lora_alpha`, …) at
    /// fault. What the schedule alone needs is checked by [`Self::validate_schedule`].
    pub fn validate(&self) -> Result<(), PeftError> {
        let fail = |key: &str, value: String, expected: &str| {
            Err(PeftError(format!(
                "peft.{key} = {value}: expected {expected}"
            )))
        };
        if self.init_r == 0 || self.init_r > 1 << 16 {
            return fail("init_r", self.init_r.to_string(), "a rank from 1 to 65536");
        }
        if self.target_r > self.init_r {
            return fail(
                "target_r",
                self.target_r.to_string(),
                &format!("at most init_r = {}", self.init_r),
            );
        }
        if self.delta_t == 0 {
            return fail("deltaT", "0".into(), "a positive number of steps");
        }
        for (key, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(beta > 0.0 && beta < 1.0) {
                return fail(key, beta.to_string(), "a number in (0, 1)");
            }
        }
        if !self.orth_reg_weight.is_finite() || self.orth_reg_weight <= 0.0 {
            return fail(
                "orth_reg_weight",
                self.orth_reg_weight.to_string(),
                "a positive number (peft refuses 0)",
            );
        }
        if !self.lora_alpha.is_finite() || self.lora_alpha < 0.0 {
            return fail(
                "lora_alpha",
                self.lora_alpha.to_string(),
                "a number >= 0 (0 means init_r)",
            );
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return fail(
                "lora_dropout",
                self.lora_dropout.to_string(),
                "a probability in [0, 1)",
            );
        }
        if let Some((path, pattern)) = self
            .rank_pattern
            .iter()
            .flatten()
            .find(|(_, p)| p.len() != self.init_r)
        {
            return fail(
                "rank_pattern",
                format!("{{{path:?}: {} entries}}", pattern.len()),
                &format!("init_r = {} entries per module", self.init_r),
            );
        }
        Ok(())
    }

    /// [`Self::validate`], and the schedule: `total_step` set and leaving a pruning phase
    /// (`tinit < total_step - tfinal`), as later `peft` versions require. Returns
    /// `total_step`.
    pub fn validate_schedule(&self) -> Result<usize, PeftError> {
        self.validate()?;
        let Some(total) = self.total_step.filter(|&t| t > 0) else {
            return Err(PeftError(format!(
                "peft.total_step = {:?}: AdaLoRA's schedule needs the number of training \
                 steps (> 0)",
                self.total_step
            )));
        };
        if self.tinit + self.tfinal >= total {
            return Err(PeftError(format!(
                "peft.tinit = {}, peft.tfinal = {}, peft.total_step = {total}: no step is left \
                 to prune in (expected tinit < total_step - tfinal)",
                self.tinit, self.tfinal
            )));
        }
        Ok(total)
    }
}
