//! Ember's data pipeline: corpora, tokenizers, cached token files and batches.
//!
//! - [`corpus`]: text from a file, a directory of files, or JSONL with a `text` field;
//! - [`tokenizer`]: character-level (nanoGPT) and byte-level BPE (the `tokenizers` crate);
//! - [`cache`]: a corpus tokenized once into a token file reused while the source is unchanged;
//! - [`files`]: regular-file reads (special files refused) and atomic writes;
//! - [`batch`]: the train/val split and seeded nanoGPT-style random windows;
//! - [`pairs`]: `{"anchor", "positive"}` pairs for a contrastive objective, and their
//!   seeded batches;
//! - [`sft`]: supervised fine-tuning data: prompt/completion, chat and text examples from
//!   JSONL, Hugging Face chat templates, loss masks, packed rows and their seeded order.

pub mod batch;
pub mod cache;
pub mod corpus;
pub mod error;
pub mod files;
pub mod pairs;
pub mod rng;
pub mod sft;
pub mod tokenizer;

pub use batch::{Batch, BatchSampler, TokenSplits, packed_waste, padded_waste, row_groups};
pub use cache::{TokenCache, TokenizerKind};
pub use corpus::Corpus;
pub use error::DataError;
pub use pairs::{Pair, PairSet};
pub use rng::SplitMix64;
pub use tokenizer::{BpeTokenizer, CharTokenizer, Tokenizer};
