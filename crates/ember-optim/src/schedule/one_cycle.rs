//! The one-cycle policy (PyTorch's `OneCycleLR`): the rate rises from `max_lr /
//! div_factor` to `max_lr` and falls far below, while Adam's `β1` moves the other way.

use serde::{Deserialize, Serialize};

use super::LrSchedule;

/// How a phase moves from its start value to its end value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnealStrategy {
    /// `end + (start − end) (1 + cos(π p)) / 2`.
    #[default]
    Cos,
    /// `start + (end − start) p`.
    Linear,
}

/// `[optim.one_cycle]`: PyTorch's arguments (`max_lr` is `optim.lr`; the `momentum` of
/// Adam is its `β1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneCycleArgs {
    /// Steps the cycle spans; default `train.steps` (later steps keep its last rate).
    #[serde(default)]
    pub total_steps: Option<usize>,
    /// Share of the cycle spent rising.
    #[serde(default = "defaults::pct_start")]
    pub pct_start: f64,
    #[serde(default)]
    pub anneal_strategy: AnnealStrategy,
    /// The starting rate is `max_lr / div_factor`.
    #[serde(default = "defaults::div_factor")]
    pub div_factor: f64,
    /// The final rate is the starting rate over `final_div_factor`.
    #[serde(default = "defaults::final_div_factor")]
    pub final_div_factor: f64,
    /// Fall back to the starting rate symmetrically before annealing to the final one.
    #[serde(default)]
    pub three_phase: bool,
    /// Cycle `β1` inversely to the rate between `max_momentum` and `base_momentum`.
    #[serde(default = "defaults::yes")]
    pub cycle_momentum: bool,
    #[serde(default = "defaults::base_momentum")]
    pub base_momentum: f64,
    #[serde(default = "defaults::max_momentum")]
    pub max_momentum: f64,
}

mod defaults {
    pub fn pct_start() -> f64 {
        0.3
    }
    pub fn div_factor() -> f64 {
        25.0
    }
    pub fn final_div_factor() -> f64 {
        1e4
    }
    pub fn yes() -> bool {
        true
    }
    pub fn base_momentum() -> f64 {
        0.85
    }
    pub fn max_momentum() -> f64 {
        0.95
    }
}

impl Default for OneCycleArgs {
    fn default() -> Self {
        Self {
            total_steps: None,
            pct_start: defaults::pct_start(),
            anneal_strategy: AnnealStrategy::Cos,
            div_factor: defaults::div_factor(),
            final_div_factor: defaults::final_div_factor(),
            three_phase: false,
            cycle_momentum: true,
            base_momentum: defaults::base_momentum(),
            max_momentum: defaults::max_momentum(),
        }
    }
}

/// One phase: from `start_step`'s values to `end_step`'s (steps as PyTorch counts them:
/// fractional ends are kept).
#[derive(Debug, Clone, PartialEq)]
struct Phase {
    end_step: f64,
    lr: (f64, f64),
    momentum: (f64, f64),
}

/// The one-cycle schedule over `total_steps` (see [`OneCycleArgs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OneCycle {
    phases: Vec<Phase>,
    total_steps: usize,
    anneal: AnnealStrategy,
    cycle_momentum: bool,
}

impl OneCycle {
    /// `max_lr` is the peak; `total_steps` must be at least 2 (checked by the settings).
    pub fn new(max_lr: f64, total_steps: usize, args: &OneCycleArgs) -> Self {
        let initial = max_lr / args.div_factor;
        let min = initial / args.final_div_factor;
        let rise_end = args.pct_start * total_steps as f64 - 1.0;
        let last = total_steps as f64 - 1.0;
        let (base_m, max_m) = (args.base_momentum, args.max_momentum);
        let phases = if args.three_phase {
            vec![
                Phase {
                    end_step: rise_end,
                    lr: (initial, max_lr),
                    momentum: (max_m, base_m),
                },
                Phase {
                    end_step: 2.0 * args.pct_start * total_steps as f64 - 2.0,
                    lr: (max_lr, initial),
                    momentum: (base_m, max_m),
                },
                Phase {
                    end_step: last,
                    lr: (initial, min),
                    momentum: (max_m, max_m),
                },
            ]
        } else {
            vec![
                Phase {
                    end_step: rise_end,
                    lr: (initial, max_lr),
                    momentum: (max_m, base_m),
                },
                Phase {
                    end_step: last,
                    lr: (max_lr, min),
                    momentum: (base_m, max_m),
                },
            ]
        };
        Self {
            phases,
            total_steps,
            anneal: args.anneal_strategy,
            cycle_momentum: args.cycle_momentum,
        }
    }

    fn anneal(&self, (start, end): (f64, f64), pct: f64) -> f64 {
        match self.anneal {
            AnnealStrategy::Cos => {
                end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
            }
            AnnealStrategy::Linear => (end - start) * pct + start,
        }
    }

    /// The rate and momentum at `step` (past the cycle: its last step's).
    fn at(&self, step: usize) -> (f64, f64) {
        let step = step.min(self.total_steps.saturating_sub(1)) as f64;
        let mut start_step = 0.0;
        for (i, phase) in self.phases.iter().enumerate() {
            if step <= phase.end_step || i == self.phases.len() - 1 {
                let pct = (step - start_step) / (phase.end_step - start_step);
                return (self.anneal(phase.lr, pct), self.anneal(phase.momentum, pct));
            }
            start_step = phase.end_step;
        }
        unreachable!("the last phase always answers")
    }
}

impl LrSchedule for OneCycle {
    fn lr_at(&self, step: usize) -> f64 {
        self.at(step).0
    }

    fn beta1_at(&self, step: usize) -> Option<f64> {
        self.cycle_momentum.then(|| self.at(step).1)
    }
}
