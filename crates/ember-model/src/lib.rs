//! Model directories: where a model's weights, configuration and tokenizer come from,
//! for everything that loads one (the CLI, the trainer, a server, an evaluator).
//!
//! - [`checkpoint`]: Ember checkpoints, written atomically and verified on load;
//! - [`model_dir`]: an Ember checkpoint, a Hugging Face directory or a quantized model
//!   behind one interface;
//! - [`quantized_dir`]: host-decoder weights `ember quantize` wrote;
//! - [`fingerprint`]: the fingerprint of a base model that adapters record;
//! - [`detokenizer`]: the text of a growing token sequence, streamed safely;
//! - [`sample`]: the sampling settings a checkpoint suggests.

pub mod checkpoint;
pub mod detokenizer;
pub mod fingerprint;
pub mod model_dir;
pub mod quantized_dir;
pub mod sample;

pub use checkpoint::{CheckpointDir, CheckpointError};
pub use detokenizer::StreamDecoder;
pub use fingerprint::base_fingerprint;
pub use model_dir::{ModelDir, ModelError, SampleDefaults};
pub use quantized_dir::{HOST_DECODER_FILE, QuantizedDir, is_quantized_dir};
pub use sample::SampleConfig;
