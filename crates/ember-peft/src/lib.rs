//! Parameter-efficient fine-tuning: the methods that attach trainable tensors to a
//! frozen [`ember_nn::Transformer`] through the [`ember_nn::Adapter`] slot every
//! [`ember_nn::Projection`] has.
//!
//! - [`attach`]: filling the adapter slots of the targets and freezing the rest.
//! - [`targets`]: which projections a method adapts (`peft`'s `target_modules`: names,
//!   a glob over Ember's paths, or `all-linear`).
//! - [`lora`]: LoRA, rsLoRA and DoRA: configuration, `peft`'s initialisations, injection
//!   with the base frozen, the trainable-parameter count.
//! - [`adalora`]: AdaLoRA: SVD-shaped adapters, the orthogonality penalty, and the rank
//!   allocator that prunes them to a budget (`peft`'s `RankAllocator`).
//! - [`ia3`]: IA³ (output- or input-side scaling vectors).
//! - [`qlora`]: QLoRA: LoRA on a base whose projections are held in 4-bit NF4 or int8
//!   (block-wise absmax scales), dequantized on the fly in both passes.
//! - [`prompt`]: prefix tuning and prompt tuning.
//! - [`bottleneck`]: bottleneck adapters (Houlsby, Pfeiffer) on the model's forward hooks.
//! - [`merge`]: folding an adapter into its weight (a quantized one dequantized) and
//!   taking it back out.

pub mod adalora;
pub mod attach;
pub mod bottleneck;
pub mod ia3;
pub mod lora;
pub mod merge;
pub mod prompt;
pub mod qlora;
pub mod targets;

pub use adalora::{
    AdaLoraConfig, Allocation, AllocatorTensor, RankAllocator, apply_adalora, orthogonal_penalty,
    rank_pattern,
};
pub use attach::PeftReport;
pub use bottleneck::{
    BottleneckAdapters, BottleneckConfig, BottleneckHooks, NonLinearity, Placement,
};
pub use ia3::{Ia3Config, apply_ia3};
pub use lora::{LoraBias, LoraConfig, LoraInit, apply_lora};
pub use merge::{merged, unmerged};
pub use prompt::{PrefixTuning, PromptTuning};
pub use qlora::{QloraConfig, QuantFormat, apply_qlora};
pub use targets::{PeftError, Targets};
