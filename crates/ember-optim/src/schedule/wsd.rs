//! Warmup-stable-decay: the peak rate for most of the run, then a short decay.

use serde::{Deserialize, Serialize};

use super::LrSchedule;

/// The shape of the decay phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecayType {
    /// `½ (1 + cos(2π · num_cycles · p))` (`transformers`' default).
    #[default]
    #[serde(rename = "cosine")]
    Cosine,
    /// `1 − p`.
    #[serde(rename = "linear")]
    Linear,
    /// `1 − √p` (MiniCPM's).
    #[serde(rename = "1-sqrt")]
    OneMinusSqrt,
}

/// `[optim.wsd]`: the settings of `transformers`' `get_wsd_schedule` (the floor is
/// `optim.min_lr`, its `min_lr_ratio` times `optim.lr`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsdArgs {
    /// Steps at the peak after the warmup; default: up to `num_decay_steps` before the
    /// end of the run.
    #[serde(default)]
    pub num_stable_steps: Option<usize>,
    /// Steps of the decay to `optim.min_lr`; default: the last 20% of the run.
    #[serde(default)]
    pub num_decay_steps: Option<usize>,
    /// Cosine cycles over the decay (0.5: one half cosine down).
    #[serde(default = "half")]
    pub num_cycles: f64,
    #[serde(default)]
    pub decay_type: DecayType,
}

fn half() -> f64 {
    0.5
}

impl Default for WsdArgs {
    fn default() -> Self {
        Self {
            num_stable_steps: None,
            num_decay_steps: None,
            num_cycles: 0.5,
            decay_type: DecayType::Cosine,
        }
    }
}

/// Counting `t` from the end of the warmup: `peak_lr` for `num_stable_steps`, then over
/// `num_decay_steps` down to `min_lr` along `decay_type` (progress `p` from 0), then
/// `min_lr`.
#[derive(Debug, Clone, PartialEq)]
pub struct Wsd {
    pub peak_lr: f64,
    pub min_lr: f64,
    pub num_stable_steps: usize,
    pub num_decay_steps: usize,
    pub num_cycles: f64,
    pub decay_type: DecayType,
}

impl LrSchedule for Wsd {
    fn lr_at(&self, t: usize) -> f64 {
        if t < self.num_stable_steps {
            return self.peak_lr;
        }
        let into_decay = t - self.num_stable_steps;
        if into_decay >= self.num_decay_steps {
            return self.min_lr;
        }
        let progress = into_decay as f64 / self.num_decay_steps.max(1) as f64;
        let value = match self.decay_type {
            DecayType::Cosine => (0.5
                * (1.0 + (std::f64::consts::PI * self.num_cycles * 2.0 * progress).cos()))
            .max(0.0),
            DecayType::Linear => 1.0 - progress,
            DecayType::OneMinusSqrt => 1.0 - progress.sqrt(),
        };
        // transformers: `(1 − min_lr_ratio) · value + min_lr_ratio`, times the peak.
        let ratio = self.min_lr / self.peak_lr;
        self.peak_lr * ((1.0 - ratio) * value + ratio)
    }
}
