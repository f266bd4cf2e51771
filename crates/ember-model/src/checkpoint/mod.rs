//! Ember checkpoints: a directory holding everything a run needs to continue or to sample.
//!
//! ```text
//! checkpoint/
//!   ember.json            marker: format, version, and each file's size and CRC-32
//!   config.toml           the trainer's full configuration ([model], [sample], ...)
//!   train_state.json      step, last losses, and the trainer's own state
//!   model.safetensors     parameters (burn-store), f32, enum variants left out of names
//!   char_vocab.json | tokenizer.json
//!   ...                   files of the trainer's own (optimizer state)
//! ```
//!
//! - [`write`]: a save goes to `.checkpoint.tmp`, is flushed to disk, and swaps places with
//!   `checkpoint/` in one atomic rename, so a complete checkpoint is under the name at
//!   every instant, even when the process is killed mid-save.
//! - [`read`]: a load checks the marker's sizes and checksums, every tensor's dtype, shape
//!   and byte length, and falls back (saying so) to the previous checkpoint when the
//!   newest is missing or damaged.
//! - [`format`]: the marker, the run's progress and the error type.

pub mod format;
pub mod read;
pub mod write;

pub use format::{CheckpointError, Progress};
pub use read::{CheckpointDir, is_checkpoint, locate, resolve_dir};
pub use write::{save, write_weights};
