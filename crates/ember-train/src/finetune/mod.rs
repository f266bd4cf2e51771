//! `ember finetune`: a parameter-efficient method trained on a base model's frozen
//! weights, from a file of examples, into an adapter in `peft`'s format.
//!
//! - `config`: [`FinetuneConfig`], the method presets and `--adapter-config`;
//! - `method`: [`Tuned`], the base with the method's trainable tensors;
//! - `data`: examples → encoded → packed rows, and the micro-batches cut from them;
//! - `run` and `step`: the loop (see [`finetune`]);
//! - `checkpoint`: adapter-only checkpoints with the base's fingerprint.

pub mod adapter_config;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod method;
mod run;
mod step;

pub use checkpoint::{BaseRecord, FinetuneCheckpoint, FinetuneState, is_finetune};
pub use config::{FinetuneConfig, FinetuneSources, PeftMethod, PeftSettings};
pub use data::{Framing, SftBatch, SftData};
pub use method::{Tuned, attach};
pub use run::{FinetuneOptions, FinetuneSummary, finetune, finetune_with, trainable_line};
pub use step::heldout_loss;
