//! Qwen2 (`qwen2`): Llama with q/k/v biases; `use_sliding_window` when every layer uses it.

use ember_nn::TransformerConfig;
use serde_json::{Map, Value, json};

use super::keys::Keys;
use super::llama::{self, Llama};
use super::registry::Family;
use crate::error::HfError;
use crate::names::TensorEntry;

pub(super) struct Qwen2;

impl Family for Qwen2 {
    fn read(&self, keys: &Keys) -> Result<TransformerConfig, HfError> {
        llama::read_llama_like(keys, true, sliding_window)
    }

    fn write(&self, model: &TransformerConfig, map: &mut Map<String, Value>) {
        llama::write_llama_like(model, map);
        map.insert("use_sliding_window".into(), json!(false));
        map.insert("sliding_window".into(), Value::Null);
        map.insert("max_window_layers".into(), json!(model.n_layers));
    }

    fn tensor_map(&self, config: &TransformerConfig) -> Vec<TensorEntry> {
        Llama.tensor_map(config)
    }

    fn config_key(&self, field: &str) -> Option<&'static str> {
        Llama.config_key(field)
    }
}

/// The window of a transformers 4 config: none unless `use_sliding_window`, and only
/// when every layer uses it.
fn sliding_window(
    keys: &Keys,
    window: Option<usize>,
    n_layers: usize,
) -> Result<Option<usize>, HfError> {
    if !keys.bool_or("use_sliding_window", false)? {
        return Ok(None);
    }
    // Layers from `max_window_layers` on use the window.
    match keys.opt_usize("max_window_layers")?.unwrap_or(n_layers) {
        n if n >= n_layers => Ok(None),
        0 => window
            .map(Some)
            .ok_or_else(|| keys.err("sliding_window", "is missing")),
        _ => Err(keys.err(
            "max_window_layers",
            "mixes sliding and full attention layers, which Ember does not support",
        )),
    }
}
