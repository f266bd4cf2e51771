//! The activation-checkpointing setting (`train.activation_checkpointing`): which blocks
//! keep only their input for the backward pass; see [`super`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a training step keeps for the backward pass (`train.activation_checkpointing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationCheckpointing {
    /// Every activation (`"none"`).
    #[default]
    None,
    /// Each block's input only; every block runs again in the backward pass (`"blocks"`).
    Blocks,
    /// As `Blocks`, for blocks `0, N, 2N, …` only (`"every:N"`, `N ≥ 1`).
    Every(usize),
    /// Every block whole, but the cheap ops whose outputs only feed a matrix product
    /// (norms, activations, reshapes) run again instead of being kept (`"selective"`).
    Selective,
}

impl ActivationCheckpointing {
    /// The values a configuration may give, quoted, for messages.
    pub const EXPECTED: &'static str =
        "\"none\", \"blocks\", \"every:N\" (N at least 1) or \"selective\"";

    /// Whether block `layer` keeps only its input and runs again in the backward pass.
    pub fn recomputes_block(self, layer: usize) -> bool {
        match self {
            Self::Blocks => true,
            Self::Every(n) => layer.is_multiple_of(n),
            Self::None | Self::Selective => false,
        }
    }
}

impl FromStr for ActivationCheckpointing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?}: expected {}", Self::EXPECTED);
        match s {
            "none" => Ok(Self::None),
            "blocks" => Ok(Self::Blocks),
            "selective" => Ok(Self::Selective),
            _ => {
                let n = s.strip_prefix("every:").ok_or_else(bad)?;
                match n.parse::<usize>() {
                    Ok(n) if n >= 1 => Ok(Self::Every(n)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

impl fmt::Display for ActivationCheckpointing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Blocks => f.write_str("blocks"),
            Self::Every(n) => write!(f, "every:{n}"),
            Self::Selective => f.write_str("selective"),
        }
    }
}

impl Serialize for ActivationCheckpointing {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ActivationCheckpointing {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
