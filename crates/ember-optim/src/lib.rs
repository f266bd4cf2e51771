//! Optimizer setup on burn-optim: AdamW with parameter groups, learning-rate schedules
//! and global-norm gradient clipping.

pub mod clip;
pub mod groups;
pub mod schedule;

pub use clip::{clip_global_norm, global_grad_norm, scale_grads};
pub use groups::{AdamWGroups, AdamWSettings, DecayRule, decay_matrices};
pub use schedule::{LrSchedule, ScheduleKind, WarmupConstant, WarmupCosine, WarmupLinear};
