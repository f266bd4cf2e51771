//! Which projections a method adapts, as `peft`'s `target_modules` names them.

use ember_nn::matches_pattern;
use serde::{Deserialize, Serialize};

/// Errors in a fine-tuning configuration; each names the key at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PeftError(pub String);

/// The projections to adapt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    /// Module names, matched against the last part of a projection's path (`q_proj`,
    /// `v_proj`, `down_proj`, `router`, `lm_head`, …), as `peft` matches a list.
    Names(Vec<String>),
    /// A glob over Ember's projection paths, e.g. `layers.*.attn.*_proj`.
    Glob(String),
    /// Every projection but the LM head (`peft`'s `all-linear`).
    AllLinear,
    /// Exactly these projection paths (what a saved adapter lists).
    Paths(Vec<String>),
}

impl Targets {
    /// Whether the projection at `path` (e.g. `layers.3.mlp.up_proj`) is a target.
    pub fn matches(&self, path: &str) -> bool {
        let name = path.rsplit('.').next().unwrap_or(path);
        match self {
            Targets::Names(names) => names.iter().any(|n| n == name),
            Targets::Glob(glob) => matches_pattern(glob, path),
            Targets::AllLinear => path != "lm_head",
            Targets::Paths(paths) => paths.iter().any(|p| p == path),
        }
    }

    /// The paths among `paths` that are targets. `Err` names `key` when nothing matches,
    /// or when a listed name matches no projection of the model.
    pub fn select(&self, paths: &[String], key: &str) -> Result<Vec<String>, PeftError> {
        if let Targets::Names(names) = self {
            for name in names {
                if !paths
                    .iter()
                    .any(|p| p.rsplit('.').next() == Some(name.as_str()))
                {
                    let mut known: Vec<&str> =
                        paths.iter().filter_map(|p| p.rsplit('.').next()).collect();
                    known.sort_unstable();
                    known.dedup();
                    return Err(PeftError(format!(
                        "{key}: `{name}` is not a projection of this model (it has {})",
                        known.join(", ")
                    )));
                }
            }
        }
        if let Targets::Paths(wanted) = self
            && let Some(missing) = wanted.iter().find(|w| !paths.contains(w))
        {
            return Err(PeftError(format!(
                "{key}: `{missing}` is not a projection of this model"
            )));
        }
        let chosen: Vec<String> = paths.iter().filter(|p| self.matches(p)).cloned().collect();
        if chosen.is_empty() {
            return Err(PeftError(format!("{key}: {self:?} matches no projection")));
        }
        Ok(chosen)
    }
}
