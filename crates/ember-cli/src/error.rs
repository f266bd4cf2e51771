//! Errors and exit codes: 2 for bad usage or configuration, 1 for runtime failures.

use std::fmt;

#[derive(Debug)]
pub enum CliError {
    /// A flag, config value or input the user can fix (exit 2).
    Usage(String),
    /// Anything that failed while running (exit 1).
    Runtime(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }
}

impl CliError {
    /// A data error, prefixed by the flag that named the input: exit 2 when the input is
    /// at fault (missing, special, empty, malformed), 1 when reading or writing failed.
    pub fn from_data(flag: &str, err: ember_data::DataError) -> Self {
        if err.is_bad_input() {
            CliError::Usage(format!("{flag}: {err}"))
        } else {
            CliError::Runtime(format!("{flag}: {err}"))
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Runtime(m) => f.write_str(m),
        }
    }
}

impl From<ember_train::TrainError> for CliError {
    fn from(err: ember_train::TrainError) -> Self {
        match err {
            ember_train::TrainError::Config(_)
            | ember_train::TrainError::Ranks(ember_train::ddp::CollectiveError::Mismatch(_)) => {
                CliError::Usage(err.to_string())
            }
            ember_train::TrainError::Data(e) => CliError::from_data("--data", e),
            ember_train::TrainError::Model(e) => e.into(),
            _ => CliError::Runtime(err.to_string()),
        }
    }
}

impl From<ember_model::ModelError> for CliError {
    fn from(err: ember_model::ModelError) -> Self {
        match err {
            ember_model::ModelError::BadInput(m) => CliError::Usage(m),
            other => CliError::Runtime(other.to_string()),
        }
    }
}

impl From<ember_model::CheckpointError> for CliError {
    fn from(err: ember_model::CheckpointError) -> Self {
        CliError::Runtime(err.to_string())
    }
}

impl From<ember_hf::HfError> for CliError {
    fn from(err: ember_hf::HfError) -> Self {
        CliError::Runtime(err.to_string())
    }
}
