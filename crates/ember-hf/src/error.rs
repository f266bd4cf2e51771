//! The one error type of this crate: the file at fault and what is wrong with it.

use std::path::{Path, PathBuf};

/// A Hugging Face directory (or export target) that cannot be read or written. The
/// message names the tensor or key at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct HfError {
    pub path: PathBuf,
    pub message: String,
}

impl HfError {
    pub fn new(path: &Path, message: impl ToString) -> Self {
        Self {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// `map_err` helper: an I/O or parse error at `path`.
pub(crate) fn at<E: ToString>(path: &Path) -> impl Fn(E) -> HfError + '_ {
    move |e| HfError::new(path, e)
}
