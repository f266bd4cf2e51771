//! Optimizer setup on burn-optim: AdamW with parameter groups (and a `β1` a schedule may
//! cycle), learning-rate schedules and gradient clipping (global norm, value, adaptive).

pub mod clip;
pub mod groups;
pub mod schedule;

pub use clip::{
    ClipKind, ClipUnit, clip_adaptive, clip_global_norm, clip_value, global_grad_norm, scale_grads,
};
pub use groups::{AdamWGroups, AdamWSettings, DecayRule, decay_matrices};
pub use schedule::{
    AnnealStrategy, CosineRestarts, CosineRestartsArgs, DecayType, InverseSqrt, InverseSqrtArgs,
    LrSchedule, OneCycle, OneCycleArgs, ScheduleKind, ScheduleSettings, Warmup, WarmupConstant,
    WarmupCosine, WarmupLinear, Wsd, WsdArgs,
};
