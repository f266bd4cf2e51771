//! Hugging Face checkpoints in and out.
//!
//! - [`HfModel::open`] reads a model directory: `config.json`, `model.safetensors` or
//!   sharded `model-0000N-of-0000M.safetensors` with `model.safetensors.index.json`,
//!   `tokenizer.json` and `generation_config.json`. [`HfModel::load_model`] builds the
//!   [`ember_nn::Transformer`] with those weights (f32, f16 or bf16 on disk; f32 in memory).
//! - [`export()`] writes an Ember model back as a directory `transformers` loads.
//! - [`peft`] reads and writes `peft`'s LoRA adapter directories.
//!
//! Architectures (`model_type`): `llama` (GQA, RoPE scaling default / linear / dynamic /
//! llama3, tied or untied embeddings), `mistral` (sliding window), `qwen2` (q/k/v biases),
//! `gpt2` (fused `c_attn` Conv1D weights, learned positions) and `mixtral` (top-k MoE).
//! Each architecture's mapping (its `config.json` keys, read and written, and its tensor
//! names) is one file under `src/families/`; [`names`] holds the tensor-name table both
//! directions use, built from those.

pub mod config;
pub mod error;
pub mod export;
mod families;
pub mod generation;
pub mod import;
pub mod names;
pub mod peft;
pub mod safetensors_io;

pub use config::{CONFIG_FILE, HfArch, HfConfig, export_arch, parse_config, read_config};
pub use error::HfError;
pub use export::{check_export_target, export, write_dir};
pub use generation::{GENERATION_FILE, GenerationConfig};
pub use import::{HfModel, is_hf_dir};
pub use safetensors_io::{WeightDType, WeightFiles};
