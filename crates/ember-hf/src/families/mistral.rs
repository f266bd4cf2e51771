//! Mistral (`mistral`): Llama with `sliding_window` (each query sees that many keys,
//! itself included).

use ember_nn::TransformerConfig;
use serde_json::{Map, Value, json};

use super::keys::Keys;
use super::llama::{self, Llama};
use super::registry::Family;
use crate::error::HfError;
use crate::names::TensorEntry;

pub(super) struct Mistral;

impl Family for Mistral {
    fn read(&self, keys: &Keys) -> Result<TransformerConfig, HfError> {
        llama::read_llama_like(keys, false, |_, window, _| Ok(window))
    }

    fn write(&self, model: &TransformerConfig, map: &mut Map<String, Value>) {
        llama::write_llama_like(model, map);
        map.insert("sliding_window".into(), json!(model.sliding_window));
    }

    fn tensor_map(&self, config: &TransformerConfig) -> Vec<TensorEntry> {
        Llama.tensor_map(config)
    }

    fn config_key(&self, field: &str) -> Option<&'static str> {
        Llama.config_key(field)
    }
}
