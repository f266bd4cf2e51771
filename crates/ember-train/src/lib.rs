//! Ember's training loop: configuration and presets, the step loop with AdamW parameter
//! groups, warmup + cosine schedule, global-norm clipping, gradient accumulation and
//! periodic evaluation, metrics, and atomic checkpoints that resume bit-exactly. The loss
//! is an [`Objective`] (`train.objective`, or the caller's through [`train_with`]), and
//! [`StepHook`]s run after each optimizer step with their state in the checkpoint.
//! [`finetune`] trains a parameter-efficient adapter on a frozen base from examples.

pub mod checkpoint;
pub mod config;
pub mod ddp;
pub mod finetune;
pub mod footprint;
pub mod head_importance;
pub mod hooks;
pub mod loss;
pub mod metrics;
pub mod objective;
pub mod observer;
pub mod prune;
pub mod run_dir;
mod shards;
pub mod trainer;

pub use checkpoint::{Checkpoint, CheckpointError, TrainState};
pub use config::{ConfigError, PRESETS, Precision, TrainConfig};
pub use finetune::{FinetuneConfig, FinetuneOptions, FinetuneSummary, finetune, finetune_with};
pub use hooks::{Ema, GradualPrune, HookState, HookTensor, StepHook, StepInfo};
pub use loss::{CrossEntropy, LmLoss};
pub use metrics::{CapturedModule, StepMetrics};
pub use objective::{CausalLm, Distill, Objective, ObjectiveBatch, ObjectiveKind, ObjectiveOutput};
pub use observer::TrainObserver;
pub use trainer::{
    LossScale, TrainError, TrainExtras, TrainOptions, TrainSummary, train, train_with,
};
