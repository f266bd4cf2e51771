//! Cosine annealing with warm restarts (SGDR; PyTorch's `CosineAnnealingWarmRestarts`).

use serde::{Deserialize, Serialize};

use super::LrSchedule;

/// `[optim.cosine_restarts]`: PyTorch's arguments (`eta_min` is `optim.min_lr`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosineRestartsArgs {
    /// Steps of the first cycle.
    #[serde(rename = "T_0")]
    pub t_0: usize,
    /// Each cycle is this many times longer than the one before (an integer ≥ 1).
    #[serde(rename = "T_mult", default = "one")]
    pub t_mult: usize,
}

fn one() -> usize {
    1
}

/// Counting `t` from the end of the warmup: within the current cycle of `T_i` steps, at
/// `T_cur` steps into it, `eta_min + (peak_lr − eta_min) (1 + cos(π T_cur / T_i)) / 2`;
/// the first cycle lasts `T_0` steps and each next one `T_mult` times the one before.
#[derive(Debug, Clone, PartialEq)]
pub struct CosineRestarts {
    pub peak_lr: f64,
    pub eta_min: f64,
    pub t_0: usize,
    pub t_mult: usize,
}

impl LrSchedule for CosineRestarts {
    fn lr_at(&self, t: usize) -> f64 {
        let (mut t_cur, mut t_i) = (t, self.t_0.max(1));
        if self.t_mult <= 1 {
            t_cur %= t_i;
        }
        // Cycles grow geometrically: at most log_{T_mult}(t) of them to walk.
        while t_cur >= t_i {
            t_cur -= t_i;
            t_i = t_i.saturating_mul(self.t_mult);
        }
        let cos = (std::f64::consts::PI * t_cur as f64 / t_i as f64).cos();
        self.eta_min + (self.peak_lr - self.eta_min) * (1.0 + cos) / 2.0
    }
}
