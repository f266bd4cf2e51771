//! Learning-rate schedules as closed forms of the step, so resuming only needs the step.
//!
//! Every schedule but one-cycle starts with the same linear warmup (nanoGPT's, which is
//! PyTorch's `LinearLR(start_factor = 1 / (warmup + 1), total_iters = warmup)`), then runs
//! its own curve from the end of the warmup, as PyTorch's `SequentialLR` would. Settings
//! carry PyTorch's (and `transformers`') argument names; [`ScheduleSettings`] builds the
//! one a configuration names.

mod cosine_restarts;
mod inverse_sqrt;
mod nanogpt;
mod one_cycle;
mod settings;
mod warmup;
mod wsd;

pub use cosine_restarts::{CosineRestarts, CosineRestartsArgs};
pub use inverse_sqrt::{InverseSqrt, InverseSqrtArgs};
pub use nanogpt::{WarmupConstant, WarmupCosine, WarmupLinear};
pub use one_cycle::{AnnealStrategy, OneCycle, OneCycleArgs};
pub use settings::{ScheduleKind, ScheduleSettings};
pub use warmup::Warmup;
pub use wsd::{DecayType, Wsd, WsdArgs};

/// A learning rate (and, for cyclic schedules, Adam's `β1`) as a function of the
/// optimizer step (0-based).
pub trait LrSchedule: Send + Sync {
    fn lr_at(&self, step: usize) -> f64;

    /// The `β1` the optimizer uses at `step` when the schedule cycles it (PyTorch's
    /// `cycle_momentum`); `None` keeps the configured one.
    fn beta1_at(&self, _step: usize) -> Option<f64> {
        None
    }
}
