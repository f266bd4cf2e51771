//! The trainer's side of a checkpoint: its full configuration, its state (step, sampler,
//! losses) and the optimizer state, on top of [`ember_model::checkpoint`], which writes
//! the directory atomically and verifies it on load.
//!
//! Beside `ember_model`'s files a training checkpoint holds `optim-decay.bin` and
//! `optim-no-decay.bin` (AdamW state of the two parameter groups, burn's full-precision
//! recorder), and its `config.toml` is the whole [`TrainConfig`]. A run with step hooks
//! adds `hook-NAME.json` and `hook-NAME.safetensors` per hook (see [`crate::hooks`]).

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use ember_data::{BatchSampler, Tokenizer};
use ember_model::CheckpointDir;
pub use ember_model::checkpoint::format::error;
pub use ember_model::checkpoint::{CheckpointError, is_checkpoint, locate, resolve_dir};
use ember_nn::{FusedBackend, Transformer};
use ember_optim::AdamWGroups;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::hooks::HookState;

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
    /// `train.precision = "f16-mixed"`: the dynamic loss scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<crate::LossScale>,
}

/// Writes a complete checkpoint to `dir` atomically (see [`ember_model::checkpoint::write`]).
pub fn save<B: AutodiffBackend>(
    dir: &Path,
    config: &TrainConfig,
    state: &TrainState,
    model: &Transformer<B>,
    optim: &AdamWGroups<Transformer<B>, B>,
    tokenizer: &Tokenizer,
) -> Result<(), CheckpointError> {
    save_with_hooks(dir, config, state, model, optim, tokenizer, &[])
}

/// [`save`], plus the state of each step hook `(name, state)` (see [`crate::hooks`]):
/// `hook-NAME.json` and `hook-NAME.safetensors`, in the same atomic save. No hooks, no
/// hook files.
pub fn save_with_hooks<B: AutodiffBackend>(
    dir: &Path,
    config: &TrainConfig,
    state: &TrainState,
    model: &Transformer<B>,
    optim: &AdamWGroups<Transformer<B>, B>,
    tokenizer: &Tokenizer,
    hooks: &[(String, HookState)],
) -> Result<(), CheckpointError> {
    ember_model::checkpoint::save(dir, state.step, |tmp| {
        let write = |file: &str, text: String| {
            let path = tmp.join(file);
            std::fs::write(&path, text).map_err(|e| error(&path, e))
        };
        write("config.toml", config.to_toml())?;
        write(
            "train_state.json",
            serde_json::to_string_pretty(state).expect("the state serialises"),
        )?;
        tokenizer.save(tmp).map_err(|e| error(tmp, e))?;
        ember_model::checkpoint::write_weights(tmp, &model.valid())?;
        write_optimizer(tmp, optim)?;
        crate::hooks::write_states(tmp, hooks)
    })
}

/// A training checkpoint's configuration and state (no tensors yet).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The directory read (`checkpoint/`, or the previous save it fell back to).
    pub dir: PathBuf,
    pub config: TrainConfig,
    pub state: TrainState,
    /// The model-facing part (model and sample config, tokenizer, weights).
    pub files: CheckpointDir,
}

impl Checkpoint {
    /// Reads and checks the checkpoint at `path` (a checkpoint or its run directory; see
    /// [`ember_model::checkpoint::locate`]).
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let files = CheckpointDir::open(path)?;
        let config_path = files.dir.join("config.toml");
        let config: TrainConfig =
            toml::from_str(&files.config_toml).map_err(|e| error(&config_path, e.message()))?;
        config.validate().map_err(|e| error(&config_path, e))?;
        let state_path = files.dir.join("train_state.json");
        let text =
            ember_data::files::read_regular_text(&state_path).map_err(|e| error(&state_path, e))?;
        let state: TrainState = serde_json::from_str(&text).map_err(|e| error(&state_path, e))?;
        Ok(Self {
            dir: files.dir.clone(),
            config,
            state,
            files,
        })
    }

    /// The model with this checkpoint's weights, every tensor checked before use.
    pub fn load_model<B: FusedBackend>(
        &self,
        device: &B::Device,
    ) -> Result<Transformer<B>, CheckpointError> {
        self.files.load_model(device)
    }

    /// The saved state of the step hooks named `names`, in that order (see
    /// [`crate::hooks`]). Errors name the file: a hook without state here, or state here
    /// for a hook not in `names`. The files' checksums were verified when the checkpoint
    /// was opened.
    pub fn hook_states(&self, names: &[&str]) -> Result<Vec<HookState>, CheckpointError> {
        crate::hooks::load_states(&self.dir, names)
    }

    /// Loads the optimizer state saved beside the weights. The files' checksums were
    /// verified when the checkpoint was opened; a file that still cannot be decoded (a
    /// checkpoint without checksums) is an error naming it, never a crash.
    pub fn load_optimizer<B: AutodiffBackend>(
        &self,
        optim: AdamWGroups<Transformer<B>, B>,
        device: &B::Device,
    ) -> Result<AdamWGroups<Transformer<B>, B>, CheckpointError> {
        read_optimizer(&self.dir, optim, device)
    }
}

/// Writes the AdamW state of both groups into checkpoint directory `dir` as
/// `optim-decay.bin` and `optim-no-decay.bin` (burn's full-precision recorder). Only
/// parameters that received gradients have state, so a frozen base adds nothing.
pub fn write_optimizer<M: AutodiffModule<B>, B: AutodiffBackend>(
    dir: &Path,
    optim: &AdamWGroups<M, B>,
) -> Result<(), CheckpointError> {
    let record = optim.to_record();
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    for (file, part) in [
        ("optim-decay", record.decay),
        ("optim-no-decay", record.no_decay),
    ] {
        let path = dir.join(file);
        recorder
            .record(part, path.clone())
            .map_err(|e| error(&path, e))?;
    }
    Ok(())
}

/// Loads the state [`write_optimizer`] wrote in `dir` into `optim`. The files' checksums
/// were verified when the checkpoint was opened; a file that still cannot be decoded (a
/// checkpoint without checksums) is an error naming it, never a crash.
pub fn read_optimizer<M: AutodiffModule<B>, B: AutodiffBackend>(
    dir: &Path,
    optim: AdamWGroups<M, B>,
    device: &B::Device,
) -> Result<AdamWGroups<M, B>, CheckpointError> {
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    let load = |file: &str| {
        let path = dir.join(file);
        let shown = path.with_extension("bin");
        ember_data::files::ensure_regular(&shown).map_err(|e| error(&shown, e))?;
        quietly(|| recorder.load(path.clone(), device))
            .map_err(|panic| error(&shown, format!("cannot read optimizer state: {panic}")))?
            .map_err(|e| error(&shown, format!("cannot read optimizer state: {e}")))
    };
    let decay = load("optim-decay")?;
    let no_decay = load("optim-no-decay")?;
    let record = ember_optim::groups::AdamWGroupsRecord { decay, no_decay };
    quietly(move || optim.load_record(record)).map_err(|panic| {
        error(
            &dir.join("optim-decay.bin"),
            format!("optimizer state does not fit the model: {panic}"),
        )
    })
}

/// Runs `f`, turning a panic into an error message (without the panic's report on
/// stderr): the last guard around the decoder of burn's record format.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "malformed data".into())
    })
}
