//! Opening a checkpoint: locating a complete one (falling back to the previous save when
//! the newest is missing or damaged), and reading it with every file and tensor checked
//! before use.

use std::path::{Path, PathBuf};

use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use ember_data::Tokenizer;
use ember_nn::{FusedBackend, Transformer};
use ember_optim::AdamWGroups;

use super::format::{CheckpointError, MARKER, Marker, TrainState, error};
use super::write::siblings;
use crate::config::TrainConfig;

/// Whether `dir` names a checkpoint (or a run directory holding one), complete or not:
/// cheap, for telling Ember checkpoints from other model directories.
pub fn is_checkpoint(dir: &Path) -> bool {
    candidates(dir).is_some()
}

/// The checkpoint directory of `dir`: `dir` itself when it holds a checkpoint, else
/// `dir/checkpoint` (a run's output directory); the previous save when that one is
/// missing or damaged (see [`locate`]).
pub fn resolve_dir(dir: &Path) -> Result<PathBuf, CheckpointError> {
    locate(dir).map(|(found, _)| found)
}

/// The checkpoint a user means by `path` (`checkpoint/` itself, or its run directory),
/// with a note when it had to fall back to a sibling (`.checkpoint.tmp` or
/// `.checkpoint.old`, the newest complete one) because `checkpoint/` is missing or
/// damaged. Every candidate's marker, sizes and checksums are verified.
pub fn locate(path: &Path) -> Result<(PathBuf, Option<String>), CheckpointError> {
    let Some((primary, fallbacks)) = candidates(path) else {
        let message = if path.exists() {
            format!("not an Ember checkpoint (no {MARKER} here or in checkpoint/)")
        } else {
            "no such directory".into()
        };
        return Err(error(path, message));
    };
    let why = match Marker::verify(&primary, true) {
        Ok(_) => return Ok((primary, None)),
        Err(e) if primary.exists() => e.to_string(),
        Err(_) => format!("{}: missing", primary.display()),
    };
    let best = fallbacks
        .iter()
        .filter(|dir| Marker::verify(dir, true).is_ok())
        .filter_map(|dir| Some((read_state(dir).ok()?.step, dir)))
        .max_by_key(|(step, _)| *step);
    match best {
        Some((step, dir)) => Ok((
            dir.clone(),
            Some(format!(
                "{why}; using the previous complete checkpoint {} (step {step})",
                dir.display()
            )),
        )),
        None => Err(error(&primary, format!("no complete checkpoint: {why}"))),
    }
}

/// `(checkpoint dir, [its fallback siblings])` for a user's path, when any exists.
fn candidates(path: &Path) -> Option<(PathBuf, [PathBuf; 2])> {
    let with_siblings = |dir: PathBuf| {
        let (tmp, old) = siblings(&dir);
        (dir, [tmp, old])
    };
    let any_sibling = |dir: &Path| {
        let (tmp, old) = siblings(dir);
        tmp.join(MARKER).exists() || old.join(MARKER).exists()
    };
    if path.join(MARKER).exists() {
        return Some(with_siblings(path.to_path_buf()));
    }
    let inner = path.join("checkpoint");
    if inner.join(MARKER).exists() || any_sibling(&inner) {
        return Some(with_siblings(inner));
    }
    if !path.exists() && any_sibling(path) {
        return Some(with_siblings(path.to_path_buf()));
    }
    None
}

fn read_state(dir: &Path) -> Result<TrainState, CheckpointError> {
    let path = dir.join("train_state.json");
    let text = ember_data::files::read_regular_text(&path).map_err(|e| error(&path, e))?;
    serde_json::from_str(&text).map_err(|e| error(&path, e))
}

fn safetensors(path: &Path) -> SafetensorsStore {
    SafetensorsStore::from_file(path).skip_enum_variants(true)
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
    /// Reads and checks the metadata of the checkpoint at `path` (see [`locate`]); a
    /// fallback to the previous save is reported on stderr.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let (dir, note) = locate(path)?;
        if let Some(note) = note {
            eprintln!("warning: {note}");
        }
        let config_path = dir.join("config.toml");
        let text = ember_data::files::read_regular_text(&config_path)
            .map_err(|e| error(&config_path, e))?;
        let config: TrainConfig =
            toml::from_str(&text).map_err(|e| error(&config_path, e.message()))?;
        config.validate().map_err(|e| error(&config_path, e))?;
        let state = read_state(&dir)?;
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
    /// right dtype (f32), shape and byte length, checked before any is read.
    pub fn load_model<B: FusedBackend>(
        &self,
        device: &B::Device,
    ) -> Result<Transformer<B>, CheckpointError> {
        let path = self.dir.join("model.safetensors");
        let header = read_header(&path)?;
        let mut model =
            Transformer::<B>::new(&self.config.model, device).map_err(|e| error(&self.dir, e))?;
        check_tensors(&path, &header, &model)?;
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

    /// Loads the optimizer state saved beside the weights. The files' checksums were
    /// verified when the checkpoint was opened; a file that still cannot be decoded (a
    /// checkpoint without checksums) is an error naming it, never a crash.
    pub fn load_optimizer<B: AutodiffBackend>(
        &self,
        optim: AdamWGroups<Transformer<B>, B>,
        device: &B::Device,
    ) -> Result<AdamWGroups<Transformer<B>, B>, CheckpointError> {
        let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
        let load = |file: &str| {
            let path = self.dir.join(file);
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
                &self.dir.join("optim-decay.bin"),
                format!("optimizer state does not fit the model: {panic}"),
            )
        })
    }
}

/// Runs `f`, turning a panic into an error message (without the panic's report on
/// stderr): the last guard around decoders of burn's record formats.
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

/// The safetensors header of `path`, checked against the file's length (offsets in
/// order, inside the file, each tensor's bytes matching its dtype and shape, shape
/// products without overflow).
fn read_header(path: &Path) -> Result<safetensors::tensor::Metadata, CheckpointError> {
    use std::io::Read;
    let meta = ember_data::files::ensure_regular(path).map_err(|e| error(path, e))?;
    let mut file = std::fs::File::open(path).map_err(|e| error(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| {
        error(
            path,
            "not a safetensors file (shorter than its header length)",
        )
    })?;
    let header_len = u64::from_le_bytes(len);
    if header_len > (100 << 20) || header_len + 8 > meta.len() {
        return Err(error(
            path,
            format!(
                "not a safetensors file (header length {header_len} in a file of {} bytes)",
                meta.len()
            ),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| error(path, e))?;
    let metadata: safetensors::tensor::Metadata = serde_json::from_slice(&header)
        .map_err(|e| error(path, format!("malformed safetensors header: {e}")))?;
    let end = 8 + header_len + metadata.data_len() as u64;
    if end != meta.len() {
        return Err(error(
            path,
            format!(
                "the header describes {end} bytes but the file has {}",
                meta.len()
            ),
        ));
    }
    Ok(metadata)
}

/// Every tensor in the file is f32 and every parameter of `model` is there with its shape.
fn check_tensors<B: FusedBackend>(
    path: &Path,
    header: &safetensors::tensor::Metadata,
    model: &Transformer<B>,
) -> Result<(), CheckpointError> {
    let tensors = header.tensors();
    for (name, info) in &tensors {
        if info.dtype != safetensors::Dtype::F32 {
            return Err(error(
                path,
                format!(
                    "tensor `{name}` is {:?}; Ember checkpoints hold f32 tensors only",
                    info.dtype
                ),
            ));
        }
    }
    for param in ember_nn::param_infos(model) {
        let Some(info) = tensors.get(&param.path) else {
            return Err(error(
                path,
                format!("missing tensor `{}` (shape {:?})", param.path, param.shape),
            ));
        };
        if info.shape != param.shape {
            return Err(error(
                path,
                format!(
                    "tensor `{}` has shape {:?}, but the model needs {:?}",
                    param.path, info.shape, param.shape
                ),
            ));
        }
    }
    Ok(())
}
