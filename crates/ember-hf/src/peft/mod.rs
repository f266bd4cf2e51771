//! `peft`'s adapter directories, both ways: `adapter_config.json` and
//! `adapter_model.safetensors` (keys `base_model.model.<module>.lora_A.weight`
//! `[r, d_in]` and `….lora_B.weight` `[d_out, r]`), read onto an Ember model of the same
//! architecture and written from one so `PeftModel.from_pretrained` loads it.
//!
//! LoRA, rsLoRA, DoRA, AdaLoRA and IA³ (`lora.rs`, `adalora.rs`, `ia3.rs`) on the architectures whose projections are separate
//! `Linear`s (llama, mistral, qwen2, mixtral). Module names come from the same tensor-name table as
//! the base weights. Not read yet (each refused by name): GPT-2's fused `c_attn`
//! (`fan_in_fan_out`), a regular-expression `target_modules`, `modules_to_save`,
//! LoRA's `rank_pattern`/`alpha_pattern` and the other `peft_type`s.
//! Prefix and prompt tuning (`prompt.rs`) read and write `prompt_embeddings`. Bottleneck
//! adapters (`bottleneck.rs`), which `peft` lacks, use Ember's `EMBER_BOTTLENECK` layout.

mod adalora;
mod bottleneck;
mod common;
mod ia3;
mod lora;
mod prompt;

pub use adalora::{load_adalora_adapter, read_adalora_config, save_adalora_adapter};
pub use bottleneck::{BOTTLENECK_TYPE, load_bottleneck_adapter, save_bottleneck_adapter};
pub use common::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter, peft_type};
pub use ia3::{load_ia3_adapter, read_ia3_config, save_ia3_adapter};
pub use lora::{load_lora_adapter, read_lora_config, save_lora_adapter};
pub use prompt::{PromptAdapter, load_prompt_adapter, save_prompt_adapter};
