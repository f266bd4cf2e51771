//! Parameter-efficient fine-tuning: the methods that attach trainable tensors to a
//! frozen [`ember_nn::Transformer`] through the [`ember_nn::Adapter`] slot every
//! [`ember_nn::Projection`] has.
//!
//! - [`attach`]: filling the adapter slots of the targets and freezing the rest.
//! - [`targets`]: which projections a method adapts (`peft`'s `target_modules`: names,
//!   a glob over Ember's paths, or `all-linear`).
//! - [`lora`]: LoRA, rsLoRA and DoRA: configuration, `peft`'s initialisations, injection
//!   with the base frozen, the trainable-parameter count.
//! - [`ia3`]: IA³ (output- or input-side scaling vectors).
//! - [`prompt`]: prefix tuning and prompt tuning.
//! - [`merge`]: folding an adapter into its weight and taking it back out.

pub mod attach;
pub mod ia3;
pub mod lora;
pub mod merge;
pub mod prompt;
pub mod targets;

pub use attach::PeftReport;
pub use ia3::{Ia3Config, apply_ia3};
pub use lora::{LoraBias, LoraConfig, LoraInit, apply_lora};
pub use merge::{merged, unmerged};
pub use prompt::{PrefixTuning, PromptTuning};
pub use targets::{PeftError, Targets};
