//! Opening a checkpoint: locating a complete one (falling back to the previous save when
//! the newest is missing or damaged), and reading it with every file and tensor checked
//! before use.

use std::path::{Path, PathBuf};

use burn_store::{ModuleSnapshot, SafetensorsStore};
use ember_data::Tokenizer;
use ember_nn::{FusedBackend, Transformer, TransformerConfig};

use super::format::{CheckpointError, MARKER, Marker, Progress, error};
use super::write::{WEIGHTS, siblings};
use crate::sample::SampleConfig;

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
        .filter_map(|dir| Some((read_progress(dir).ok()?.step, dir)))
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
    // `.`, `..` and symlinks resolved, so the siblings are found beside the real directory.
    let resolved = path.canonicalize();
    let path = resolved.as_deref().unwrap_or(path);
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
    if any_sibling(path) {
        return Some(with_siblings(path.to_path_buf()));
    }
    None
}

/// How far the run of the checkpoint in `dir` got (`train_state.json`).
pub fn read_progress(dir: &Path) -> Result<Progress, CheckpointError> {
    let path = dir.join("train_state.json");
    let text = ember_data::files::read_regular_text(&path).map_err(|e| error(&path, e))?;
    serde_json::from_str(&text).map_err(|e| error(&path, e))
}

/// A checkpoint's metadata, read and checked (no tensors yet): what sampling from it or
/// exporting it needs. The trainer reads the rest of `config.toml` and `train_state.json`
/// itself.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    /// The directory read: `checkpoint/`, or the previous save it fell back to.
    pub dir: PathBuf,
    /// `config.toml` as written by the trainer.
    pub config_toml: String,
    /// Its `[model]` table.
    pub model: TransformerConfig,
    /// Its `[sample]` table.
    pub sample: SampleConfig,
    pub progress: Progress,
    pub tokenizer: Tokenizer,
}

impl CheckpointDir {
    /// Reads and checks the metadata of the checkpoint at `path` (see [`locate`]); a
    /// fallback to the previous save is reported on stderr.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let (dir, note) = locate(path)?;
        if let Some(note) = note {
            eprintln!("warning: {note}");
        }
        let config_path = dir.join("config.toml");
        let config_toml = ember_data::files::read_regular_text(&config_path)
            .map_err(|e| error(&config_path, e))?;
        let table: toml::Table =
            toml::from_str(&config_toml).map_err(|e| error(&config_path, e.message()))?;
        let section = |name: &str| {
            table
                .get(name)
                .cloned()
                .ok_or_else(|| error(&config_path, format!("no [{name}] section")))
        };
        let model: TransformerConfig =
            section("model")?.try_into().map_err(|e: toml::de::Error| {
                error(&config_path, format!("[model]: {}", e.message()))
            })?;
        model.validate().map_err(|e| error(&config_path, e))?;
        let sample: SampleConfig =
            section("sample")?
                .try_into()
                .map_err(|e: toml::de::Error| {
                    error(&config_path, format!("[sample]: {}", e.message()))
                })?;
        sample.validate().map_err(|e| error(&config_path, e))?;
        let progress = read_progress(&dir)?;
        let tokenizer = Tokenizer::load(&dir).map_err(|e| error(&dir, e))?;
        if tokenizer.vocab_size() != model.vocab_size {
            return Err(error(
                &dir,
                format!(
                    "tokenizer has {} entries but model.vocab_size is {}",
                    tokenizer.vocab_size(),
                    model.vocab_size
                ),
            ));
        }
        Ok(Self {
            dir,
            config_toml,
            model,
            sample,
            progress,
            tokenizer,
        })
    }

    /// The model with this checkpoint's weights; every tensor must be present with the
    /// right dtype (f32), shape and byte length, checked before any is read.
    pub fn load_model<B: FusedBackend>(
        &self,
        device: &B::Device,
    ) -> Result<Transformer<B>, CheckpointError> {
        let path = self.dir.join(WEIGHTS);
        let header = read_header(&path)?;
        let mut model =
            Transformer::<B>::new(&self.model, device).map_err(|e| error(&self.dir, e))?;
        check_tensors(&path, &header, &model)?;
        let result = model
            .load_from(&mut SafetensorsStore::from_file(&path).skip_enum_variants(true))
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
    let end = (8 + header_len).checked_add(metadata.data_len() as u64);
    if end != Some(meta.len()) {
        return Err(error(
            path,
            format!(
                "the header describes {} bytes but the file has {}",
                end.map_or("more than 2^64".into(), |e| e.to_string()),
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
