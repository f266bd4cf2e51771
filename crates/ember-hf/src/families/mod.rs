//! The Hugging Face architecture families, one file each: its `config.json` →
//! [`ember_nn::TransformerConfig`] mapping, the `config.json` it writes, and where each
//! parameter's tensor lives. Adding a family is a file here plus a variant in the registry.

mod gpt2;
mod keys;
mod llama;
mod mistral;
mod mixtral;
mod qwen2;
mod registry;
mod rope_scaling;

pub(crate) use keys::Keys;
pub use registry::{HfArch, export_arch};
