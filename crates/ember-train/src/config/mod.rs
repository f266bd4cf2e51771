//! Training configuration: a TOML file or a named preset, plus `section.key=value`
//! overrides.

mod overrides;
mod resolve;
mod sections;

pub(crate) use overrides::{apply_override, merge};
pub use sections::{
    ConfigError, DataConfig, LoopConfig, OptimConfig, PRESETS, Precision, SampleConfig, TrainConfig,
};
