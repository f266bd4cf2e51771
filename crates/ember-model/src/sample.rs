//! The sampling settings a model directory suggests (`[sample]` of an Ember checkpoint's
//! `config.toml`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    pub prompt: String,
    pub max_new_tokens: usize,
    pub temperature: f64,
    /// 0 = no top-k filtering.
    pub top_k: usize,
    /// 1.0 = no nucleus filtering.
    pub top_p: f64,
}

impl SampleConfig {
    /// `Err` names what is out of range (temperature below 0, top_p outside (0, 1]).
    pub fn validate(&self) -> Result<(), String> {
        let valid = self.temperature >= 0.0 && self.top_p > 0.0 && self.top_p <= 1.0;
        if valid {
            Ok(())
        } else {
            Err("sample: temperature must be >= 0 and top_p in (0, 1]".into())
        }
    }
}
