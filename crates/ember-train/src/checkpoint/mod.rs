//! Checkpoints: a directory holding everything a run needs to continue or to sample.
//!
//! ```text
//! checkpoint/
//!   ember.json            marker: format, version, and each file's size and CRC-32
//!   config.toml           the full TrainConfig (model.vocab_size filled in)
//!   train_state.json      step, sampler RNG, last losses, tokens seen
//!   model.safetensors     parameters (burn-store), f32, enum variants left out of names
//!   optim-decay.bin       AdamW state of the decayed group (burn's full-precision recorder)
//!   optim-no-decay.bin    AdamW state of the other group
//!   char_vocab.json | tokenizer.json
//! ```
//!
//! - [`write`]: a save goes to `.checkpoint.tmp`, is flushed to disk, and swaps places with
//!   `checkpoint/` in one atomic rename, so a complete checkpoint is under the name at
//!   every instant, even when the process is killed mid-save.
//! - [`read`]: a load checks the marker's sizes and checksums, every tensor's dtype, shape
//!   and byte length, and falls back (saying so) to the previous checkpoint when the
//!   newest is missing or damaged.
//! - [`format`]: the marker, the run state and the error type.

pub mod format;
pub mod read;
pub mod write;

pub use format::{CheckpointError, TrainState};
pub use read::{Checkpoint, is_checkpoint, resolve_dir};
pub use write::save;
