//! Supervised fine-tuning data: JSONL examples ([`example`]), chat templates
//! ([`chat_template`]; [`ChatTemplate::from_tokenizer_config`] reads a Hugging Face
//! model's), token ids with loss masks ([`encode`]), rows of a block size ([`pack`]), and
//! the seeded split and row order ([`sampler`]).
//!
//! The pipeline: [`read_jsonl`] → [`split_examples`] → [`Encoder::encode`] each example →
//! [`pack`] → [`RowSampler::next`] row ids → [`PackedRows::gather`] a batch.

pub mod chat_template;
pub mod encode;
pub mod example;
mod hf_config;
pub mod pack;
pub mod sampler;
mod tojson;

pub use chat_template::ChatTemplate;
pub use encode::{Encoded, Encoder};
pub use example::{ASSISTANT, Example, Message, SourcedExample, read_jsonl};
pub use pack::{IGNORE, PackOptions, PackedRows, pack};
pub use sampler::{RowSampler, split_examples};
