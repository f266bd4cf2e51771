//! Dynamic loss scaling for `train.precision = "f16-mixed"`, with the semantics of
//! PyTorch's `torch.amp.GradScaler`: the loss is multiplied by the scale before the
//! backward pass (so small gradients survive f16) and the gradients divided by it after;
//! a step whose gradients are not finite is skipped and the scale halved; after
//! [`GROWTH_INTERVAL`] finite steps in a row the scale doubles. The scale and the count
//! are saved in the checkpoint.

use serde::{Deserialize, Serialize};

/// The scale a run starts with (`GradScaler`'s `init_scale`).
pub const INITIAL_SCALE: f64 = 65536.0;
/// Finite steps in a row after which the scale doubles (`growth_interval`).
pub const GROWTH_INTERVAL: usize = 2000;
/// `growth_factor`.
pub const GROWTH_FACTOR: f64 = 2.0;
/// `backoff_factor`.
pub const BACKOFF_FACTOR: f64 = 0.5;
/// Below this scale (f16's smallest subnormal) every step has overflowed for a long
/// time: the run has diverged rather than met a rare overflow.
pub const MIN_SCALE: f64 = 1.0 / 16_777_216.0;

/// The scaler's state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// What the loss is multiplied by.
    pub scale: f64,
    /// Finite steps since the scale last changed.
    pub growth_tracker: usize,
}

impl Default for LossScale {
    fn default() -> Self {
        Self {
            scale: INITIAL_SCALE,
            growth_tracker: 0,
        }
    }
}

impl LossScale {
    /// Updates the scale after a step whose unscaled gradients were `finite` or not;
    /// returns whether the optimizer may apply the step.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.growth_tracker += 1;
            if self.growth_tracker == GROWTH_INTERVAL {
                self.scale *= GROWTH_FACTOR;
                self.growth_tracker = 0;
            }
        } else {
            self.scale *= BACKOFF_FACTOR;
            self.growth_tracker = 0;
        }
        finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_overflow_and_doubles_after_the_growth_interval() {
        let mut s = LossScale::default();
        assert!(!s.update(false));
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!((s.scale, s.growth_tracker), (32768.0, GROWTH_INTERVAL - 1));
        assert!(s.update(true));
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 0));
        // An overflow resets the count.
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
    }
}
