//! Ember's training loop: configuration and presets, the step loop with AdamW parameter
//! groups, warmup + cosine schedule, global-norm clipping, gradient accumulation and
//! periodic evaluation, metrics, and atomic checkpoints that resume bit-exactly.

pub mod checkpoint;
pub mod config;
pub mod footprint;
pub mod loss;
pub mod metrics;
pub mod run_dir;
mod shards;
pub mod trainer;

pub use checkpoint::{Checkpoint, CheckpointError, TrainState};
pub use config::{ConfigError, PRESETS, TrainConfig};
pub use loss::{CrossEntropy, LmLoss};
pub use metrics::StepMetrics;
pub use trainer::{TrainError, TrainOptions, TrainSummary, train};
