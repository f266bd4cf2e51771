//! Inverse square-root decay (the original Transformer's, in `transformers`' form).

use serde::{Deserialize, Serialize};

use super::LrSchedule;

/// `[optim.inverse_sqrt]`: the settings of `transformers`' `get_inverse_sqrt_schedule`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InverseSqrtArgs {
    /// Steps over which the rate falls by `1/√2`; default `optim.warmup_steps`, or 10 000
    /// without a warmup (as `transformers`).
    #[serde(default)]
    pub timescale: Option<usize>,
}

/// Counting `t` from the end of the warmup: `peak_lr / √((t + timescale) / timescale)`.
#[derive(Debug, Clone, PartialEq)]
pub struct InverseSqrt {
    pub peak_lr: f64,
    pub timescale: usize,
}

impl LrSchedule for InverseSqrt {
    fn lr_at(&self, t: usize) -> f64 {
        let timescale = self.timescale as f64;
        self.peak_lr / ((t as f64 + timescale) / timescale).sqrt()
    }
}
