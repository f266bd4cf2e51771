//! Checkpoints: a directory holding everything a run needs to continue or to sample.
//!
//! ```text
//! checkpoint/
//!   ember.json            marker: format and version
//!   config.toml           the full TrainConfig (model.vocab_size filled in)
//!   train_state.json      step, sampler RNG, last losses, tokens seen
//!   model.safetensors     parameters (burn-store), f32, enum variants left out of names
//!   optim-decay.bin       AdamW state of the decayed group (burn's full-precision recorder)
//!   optim-no-decay.bin    AdamW state of the other group
//!   char_vocab.json | tokenizer.json
//! ```
//!
//! A checkpoint is written into a temporary sibling directory and renamed into place, so
//! an interrupted save leaves the previous checkpoint intact.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use ember_data::{BatchSampler, Tokenizer};
use ember_nn::FusedBackend;
use ember_nn::Transformer;
use ember_optim::AdamWGroups;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;

const MARKER: &str = "ember.json";
const FORMAT: &str = "ember-checkpoint";
const VERSION: u32 = 1;

/// Where a run stands, saved with the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// The training batch sampler, positioned after the last batch drawn.
    pub sampler: BatchSampler,
    pub tokens_seen: u64,
    pub last_train_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    /// Wall-clock seconds of training so far.
    pub elapsed_s: f64,
}

#[derive(Serialize, Deserialize)]
struct Marker {
    format: String,
    version: u32,
}

/// A checkpoint that cannot be read or does not fit.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CheckpointError {
    pub path: PathBuf,
    pub message: String,
}

fn error(path: &Path, message: impl ToString) -> CheckpointError {
    CheckpointError {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The checkpoint directory of `dir`: `dir` itself when it holds a checkpoint, else
/// `dir/checkpoint` (a run's output directory).
pub fn resolve_dir(dir: &Path) -> Result<PathBuf, CheckpointError> {
    if !dir.exists() {
        return Err(error(dir, "no such directory"));
    }
    if dir.join(MARKER).exists() {
        return Ok(dir.to_path_buf());
    }
    let inner = dir.join("checkpoint");
    if inner.join(MARKER).exists() {
        return Ok(inner);
    }
    Err(error(
        dir,
        format!("not an Ember checkpoint (no {MARKER} here or in checkpoint/)"),
    ))
}

fn safetensors(path: &Path) -> SafetensorsStore {
    SafetensorsStore::from_file(path).skip_enum_variants(true)
}

/// Writes a complete checkpoint to `dir` atomically.
pub fn save<B: AutodiffBackend>(
    dir: &Path,
    config: &TrainConfig,
    state: &TrainState,
    model: &Transformer<B>,
    optim: &AdamWGroups<Transformer<B>, B>,
    tokenizer: &Tokenizer,
) -> Result<(), CheckpointError> {
    let name = dir
        .file_name()
        .map_or("checkpoint".into(), |n| n.to_string_lossy().into_owned());
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| error(parent, e))?;
    let tmp = parent.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| error(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| error(&tmp, e))?;

    let write = |file: &str, text: String| {
        let path = tmp.join(file);
        std::fs::write(&path, text).map_err(|e| error(&path, e))
    };
    write("config.toml", config.to_toml())?;
    write(
        "train_state.json",
        serde_json::to_string_pretty(state).unwrap(),
    )?;
    tokenizer.save(&tmp).map_err(|e| error(&tmp, e))?;
    let weights = tmp.join("model.safetensors");
    model
        .valid()
        .save_into(&mut safetensors(&weights))
        .map_err(|e| error(&weights, e))?;
    let record = optim.to_record();
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    for (file, part) in [
        ("optim-decay", record.decay),
        ("optim-no-decay", record.no_decay),
    ] {
        let path = tmp.join(file);
        recorder
            .record(part, path.clone())
            .map_err(|e| error(&path, e))?;
    }
    // The marker goes last: a directory without it is never taken for a checkpoint.
    write(
        MARKER,
        serde_json::to_string(&Marker {
            format: FORMAT.into(),
            version: VERSION,
        })
        .unwrap(),
    )?;

    let old = parent.join(format!(".{name}.old"));
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| error(&old, e))?;
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| error(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| error(dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| error(&old, e))?;
    }
    Ok(())
}

/// A checkpoint's configuration, state and tokenizer (no tensors yet).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: TrainConfig,
    pub state: TrainState,
    pub tokenizer: Tokenizer,
}

impl Checkpoint {
    /// Reads and checks the metadata of the checkpoint in `dir` (see [`resolve_dir`]).
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let dir = resolve_dir(dir)?;
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path).map_err(|e| error(&path, e))
        };
        let marker: Marker =
            serde_json::from_str(&read(MARKER)?).map_err(|e| error(&dir.join(MARKER), e))?;
        if marker.format != FORMAT || marker.version != VERSION {
            return Err(error(
                &dir.join(MARKER),
                format!(
                    "unsupported checkpoint format {} v{}",
                    marker.format, marker.version
                ),
            ));
        }
        let config: TrainConfig = toml::from_str(&read("config.toml")?)
            .map_err(|e| error(&dir.join("config.toml"), e.message()))?;
        config
            .validate()
            .map_err(|e| error(&dir.join("config.toml"), e))?;
        let state: TrainState = serde_json::from_str(&read("train_state.json")?)
            .map_err(|e| error(&dir.join("train_state.json"), e))?;
        let tokenizer = Tokenizer::load(&dir).map_err(|e| error(&dir, e))?;
        if tokenizer.vocab_size() != config.model.vocab_size {
            return Err(error(
                &dir,
                format!(
                    "tokenizer has {} entries but model.vocab_size is {}",
                    tokenizer.vocab_size(),
                    config.model.vocab_size
                ),
            ));
        }
        Ok(Self {
            dir,
            config,
            state,
            tokenizer,
        })
    }

    /// The model with this checkpoint's weights; every tensor must be present with the
    /// right shape.
    pub fn load_model<B: FusedBackend>(
        &self,
        device: &B::Device,
    ) -> Result<Transformer<B>, CheckpointError> {
        let path = self.dir.join("model.safetensors");
        if !path.exists() {
            return Err(error(&path, "missing"));
        }
        let mut model =
            Transformer::<B>::new(&self.config.model, device).map_err(|e| error(&self.dir, e))?;
        let result = model
            .load_from(&mut safetensors(&path))
            .map_err(|e| error(&path, format!("cannot read weights: {e}")))?;
        if !result.missing.is_empty() || !result.errors.is_empty() {
            let missing: Vec<&str> = result
                .missing
                .iter()
                .map(|(name, _)| name.as_str())
                .collect();
            let errors: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
            return Err(error(
                &path,
                format!("weights do not fit the model: missing {missing:?}, errors {errors:?}"),
            ));
        }
        Ok(model)
    }

    /// Loads the optimizer state saved beside the weights.
    pub fn load_optimizer<B: AutodiffBackend>(
        &self,
        optim: AdamWGroups<Transformer<B>, B>,
        device: &B::Device,
    ) -> Result<AdamWGroups<Transformer<B>, B>, CheckpointError> {
        let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
        let load = |file: &str| {
            let path = self.dir.join(file);
            recorder.load(path.clone(), device).map_err(|e| {
                error(
                    &path.with_extension("bin"),
                    format!("cannot read optimizer state: {e}"),
                )
            })
        };
        let decay = load("optim-decay")?;
        let no_decay = load("optim-no-decay")?;
        Ok(optim.load_record(ember_optim::groups::AdamWGroupsRecord { decay, no_decay }))
    }
}
