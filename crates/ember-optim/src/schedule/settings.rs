//! The schedule a configuration names (`optim.schedule`) and the settings that build it.

use serde::{Deserialize, Serialize};

use super::{
    CosineRestarts, CosineRestartsArgs, InverseSqrt, InverseSqrtArgs, LrSchedule, OneCycle,
    OneCycleArgs, Warmup, WarmupConstant, WarmupCosine, WarmupLinear, Wsd, WsdArgs,
};

/// The schedules `optim.schedule` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// [`WarmupCosine`] (nanoGPT's).
    #[default]
    Cosine,
    /// [`WarmupLinear`].
    Linear,
    /// [`WarmupConstant`].
    Constant,
    /// [`InverseSqrt`] after the warmup.
    InverseSqrt,
    /// [`Wsd`] after the warmup.
    Wsd,
    /// [`OneCycle`] (no separate warmup).
    OneCycle,
    /// [`CosineRestarts`] after the warmup.
    CosineRestarts,
}

impl ScheduleKind {
    /// Every name `optim.schedule` accepts, quoted, for messages.
    pub const EXPECTED: &'static str = "\"cosine\", \"linear\", \"constant\", \"inverse_sqrt\", \"wsd\", \"one_cycle\" or \"cosine_restarts\"";

    /// The schedule's settings table (`optim.NAME`), for those that have one.
    pub fn table(self) -> Option<&'static str> {
        match self {
            ScheduleKind::InverseSqrt => Some("inverse_sqrt"),
            ScheduleKind::Wsd => Some("wsd"),
            ScheduleKind::OneCycle => Some("one_cycle"),
            ScheduleKind::CosineRestarts => Some("cosine_restarts"),
            _ => None,
        }
    }
}

/// Everything a schedule is built from: the `optim` keys every schedule shares and each
/// schedule's own table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduleSettings {
    pub kind: ScheduleKind,
    /// `optim.lr`: the peak (one-cycle's `max_lr`).
    pub peak_lr: f64,
    /// `optim.min_lr`: the floor (cosine's and restarts' `eta_min`, WSD's end).
    pub min_lr: f64,
    pub warmup_steps: usize,
    /// `optim.decay_steps`: where cosine and linear reach `min_lr`.
    pub decay_steps: usize,
    /// `train.steps`: the run's length (one-cycle's and WSD's defaults).
    pub total_steps: usize,
    pub inverse_sqrt: InverseSqrtArgs,
    pub wsd: WsdArgs,
    pub one_cycle: OneCycleArgs,
    /// `None` only when the schedule is not `cosine_restarts` (`T_0` has no default).
    pub cosine_restarts: Option<CosineRestartsArgs>,
}

impl ScheduleSettings {
    /// The schedule; `Err` names the `optim.` key whose value cannot be used.
    pub fn build(&self) -> Result<Box<dyn LrSchedule>, String> {
        let (peak_lr, warmup_steps) = (self.peak_lr, self.warmup_steps);
        let after_warmup = self.total_steps.saturating_sub(warmup_steps);
        Ok(match self.kind {
            ScheduleKind::Cosine => Box::new(WarmupCosine::new(
                peak_lr,
                self.min_lr,
                warmup_steps,
                self.decay_steps,
            )),
            ScheduleKind::Linear => Box::new(WarmupLinear {
                peak_lr,
                min_lr: self.min_lr,
                warmup_steps,
                decay_steps: self.decay_steps,
            }),
            ScheduleKind::Constant => Box::new(WarmupConstant {
                peak_lr,
                warmup_steps,
            }),
            ScheduleKind::InverseSqrt => {
                let timescale = self.inverse_sqrt.timescale.unwrap_or(if warmup_steps > 0 {
                    warmup_steps
                } else {
                    10_000
                });
                if timescale == 0 {
                    return Err("optim.inverse_sqrt.timescale: must be at least 1".into());
                }
                Box::new(Warmup {
                    peak_lr,
                    warmup_steps,
                    after: InverseSqrt { peak_lr, timescale },
                })
            }
            ScheduleKind::Wsd => {
                let args = &self.wsd;
                let decay = args
                    .num_decay_steps
                    .unwrap_or_else(|| (after_warmup as f64 * 0.2).round() as usize);
                let stable = args
                    .num_stable_steps
                    .unwrap_or_else(|| after_warmup.saturating_sub(decay));
                if !(args.num_cycles > 0.0 && args.num_cycles.is_finite()) {
                    return Err(format!(
                        "optim.wsd.num_cycles: must be positive, got {}",
                        args.num_cycles
                    ));
                }
                Box::new(Warmup {
                    peak_lr,
                    warmup_steps,
                    after: Wsd {
                        peak_lr,
                        min_lr: self.min_lr,
                        num_stable_steps: stable,
                        num_decay_steps: decay,
                        num_cycles: args.num_cycles,
                        decay_type: args.decay_type,
                    },
                })
            }
            ScheduleKind::OneCycle => {
                let args = &self.one_cycle;
                if warmup_steps > 0 {
                    return Err(format!(
                        "optim.warmup_steps: {warmup_steps}: one_cycle rises on its own (optim.one_cycle.pct_start); set it to 0"
                    ));
                }
                let total = args.total_steps.unwrap_or(self.total_steps);
                let positive = |key: &str, v: f64| {
                    if v > 0.0 && v.is_finite() {
                        Ok(())
                    } else {
                        Err(format!("optim.one_cycle.{key}: must be positive, got {v}"))
                    }
                };
                positive("div_factor", args.div_factor)?;
                positive("final_div_factor", args.final_div_factor)?;
                if !(args.pct_start > 0.0 && args.pct_start < 1.0) {
                    return Err(format!(
                        "optim.one_cycle.pct_start: must be in (0, 1), got {}",
                        args.pct_start
                    ));
                }
                // Every phase must span more than a step (PyTorch divides by its length).
                let rise = args.pct_start * total as f64;
                let phases_fit = if args.three_phase {
                    rise > 1.0 && 2.0 * rise - 2.0 < total as f64 - 1.0 - 1e-9 && rise - 1.0 > 0.0
                } else {
                    rise > 1.0 && rise < total as f64 - 1e-9
                };
                if !phases_fit {
                    return Err(format!(
                        "optim.one_cycle: total_steps = {total} with pct_start = {} leaves a phase without steps",
                        args.pct_start
                    ));
                }
                for (key, m) in [
                    ("base_momentum", args.base_momentum),
                    ("max_momentum", args.max_momentum),
                ] {
                    if !(0.0..1.0).contains(&m) {
                        return Err(format!(
                            "optim.one_cycle.{key}: is Adam's β1, must be in [0, 1), got {m}"
                        ));
                    }
                }
                Box::new(OneCycle::new(peak_lr, total, args))
            }
            ScheduleKind::CosineRestarts => {
                let Some(args) = &self.cosine_restarts else {
                    return Err("optim.cosine_restarts.T_0: the first cycle's length has no default; set it".into());
                };
                if args.t_0 == 0 {
                    return Err("optim.cosine_restarts.T_0: must be at least 1".into());
                }
                if args.t_mult == 0 {
                    return Err("optim.cosine_restarts.T_mult: must be at least 1".into());
                }
                Box::new(Warmup {
                    peak_lr,
                    warmup_steps,
                    after: CosineRestarts {
                        peak_lr,
                        eta_min: self.min_lr,
                        t_0: args.t_0,
                        t_mult: args.t_mult,
                    },
                })
            }
        })
    }
}
