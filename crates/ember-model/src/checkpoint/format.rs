//! What a checkpoint directory holds besides tensors: the marker with its file manifest,
//! how far its run got, and the error every checkpoint operation returns.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file whose presence makes a directory a checkpoint; written last.
pub const MARKER: &str = "ember.json";
const FORMAT: &str = "ember-checkpoint";
const VERSION: u32 = 1;

/// How far the run behind a checkpoint got: the fields of `train_state.json` that reading
/// a model needs (the trainer's full state is its own, see `ember_train::TrainState`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Progress {
    /// Optimizer steps completed.
    pub step: usize,
    #[serde(default)]
    pub last_val_loss: Option<f64>,
}

/// A checkpoint that cannot be read, written or does not fit.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CheckpointError {
    pub path: PathBuf,
    pub message: String,
}

/// A [`CheckpointError`] about `path`.
pub fn error(path: &Path, message: impl ToString) -> CheckpointError {
    CheckpointError {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Size and CRC-32 of one file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub bytes: u64,
    pub crc32: u32,
}

impl FileDigest {
    /// Reads `path` (a regular file) once.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        ember_data::files::ensure_regular(path)?;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = crc32fast::Hasher::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            bytes += n as u64;
        }
        Ok(Self {
            bytes,
            crc32: hasher.finalize(),
        })
    }
}

/// `ember.json`: the format, and (since the manifest was added) every other file's digest.
/// Checkpoints written before the manifest load without the checksum check.
#[derive(Debug, Serialize, Deserialize)]
pub struct Marker {
    format: String,
    version: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    files: BTreeMap<String, FileDigest>,
}

impl Marker {
    /// The marker for the files now in `dir`.
    pub fn describe(dir: &Path) -> std::io::Result<Self> {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != MARKER && entry.file_type()?.is_file() {
                files.insert(name, FileDigest::of(&entry.path())?);
            }
        }
        Ok(Self {
            format: FORMAT.into(),
            version: VERSION,
            files,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a marker serialises")
    }

    /// Reads and checks `dir`'s marker; with `checksums`, every listed file is read and
    /// compared, else only sizes. Errors name the file at fault.
    pub fn verify(dir: &Path, checksums: bool) -> Result<Self, CheckpointError> {
        let path = dir.join(MARKER);
        let text = ember_data::files::read_regular_text(&path).map_err(|e| error(&path, e))?;
        let marker: Marker = serde_json::from_str(&text).map_err(|e| error(&path, e))?;
        if marker.format != FORMAT || marker.version != VERSION {
            return Err(error(
                &path,
                format!(
                    "unsupported checkpoint format {} v{}",
                    marker.format, marker.version
                ),
            ));
        }
        for (name, expected) in &marker.files {
            let file = dir.join(name);
            let meta = std::fs::metadata(&file).map_err(|e| error(&file, e))?;
            if meta.len() != expected.bytes {
                return Err(error(
                    &file,
                    format!(
                        "damaged: {} bytes, but the checkpoint recorded {}",
                        meta.len(),
                        expected.bytes
                    ),
                ));
            }
            if checksums {
                let actual = FileDigest::of(&file).map_err(|e| error(&file, e))?;
                if actual != *expected {
                    return Err(error(
                        &file,
                        format!(
                            "damaged: CRC-32 {:08x}, but the checkpoint recorded {:08x}",
                            actual.crc32, expected.crc32
                        ),
                    ));
                }
            }
        }
        Ok(marker)
    }
}
