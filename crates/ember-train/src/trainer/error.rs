//! How a run fails.

use std::path::{Path, PathBuf};

use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Data(#[from] ember_data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint `--resume` names cannot be used.
    #[error("--resume {0}")]
    Resume(CheckpointError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: usize, loss: f64 },
    /// The base model of a fine-tune cannot be used.
    #[error(transparent)]
    Model(#[from] ember_model::ModelError),
    /// Step hooks that cannot run together (see [`crate::hooks`]).
    #[error("{0}")]
    Hooks(String),
    /// The data-parallel ranks disagree, or one of their collectives failed.
    #[error("data-parallel run: {0}")]
    Ranks(#[from] crate::ddp::CollectiveError),
}

pub(super) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
