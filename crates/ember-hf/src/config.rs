//! `config.json`: reading it into an [`HfConfig`] and writing one for an Ember model. Each
//! architecture's own keys are mapped by its family (`src/families/`).
//!
//! Both config generations are read: transformers 4's `rope_theta` + `rope_scaling`
//! (with `type` or `rope_type`) and transformers 5's `rope_parameters`. Ember writes the
//! 4.x spelling, which both generations load.

use std::path::Path;

use ember_nn::TransformerConfig;
use ember_nn::config::DTypeName;
use ember_ops::RopeScaling;
use serde_json::{Map, Value, json};

use crate::error::HfError;
use crate::families::Keys;
pub use crate::families::{HfArch, export_arch};

/// File name of the model configuration.
pub const CONFIG_FILE: &str = "config.json";

/// A parsed `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    pub arch: HfArch,
    pub model: TransformerConfig,
    pub bos_token_id: Option<u32>,
    /// Generation stops after any of these.
    pub eos_token_ids: Vec<u32>,
}

/// Reads and maps `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<HfConfig, HfError> {
    let path = dir.join(CONFIG_FILE);
    if !path.exists() {
        return Err(HfError::new(&path, "missing"));
    }
    let text = ember_data::files::read_regular_text(&path).map_err(|e| HfError::new(&path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| HfError::new(&path, format!("malformed JSON: {e}")))?;
    parse_config(&value, &path)
}

/// Maps a parsed `config.json` (read from `path`, named in errors).
pub fn parse_config(value: &Value, path: &Path) -> Result<HfConfig, HfError> {
    let map = value
        .as_object()
        .ok_or_else(|| HfError::new(path, "expected a JSON object"))?;
    let keys = Keys::new(map, path);
    let model_type = keys
        .opt_str("model_type")?
        .ok_or_else(|| keys.err("model_type", "is missing"))?;
    let arch = HfArch::from_model_type(model_type).ok_or_else(|| {
        keys.err(
            "model_type",
            format!(
                "is `{model_type}`, which Ember cannot import (it reads {})",
                HfArch::ALL.map(HfArch::model_type).join(", ")
            ),
        )
    })?;
    let mut model = arch.family().read(&keys)?;
    model.dtype = DTypeName::F32;
    model.validate().map_err(|e| {
        let dynamic = matches!(model.rope_scaling, Some(RopeScaling::DynamicNtk { .. }));
        let problem = match hf_key(arch, e.field, dynamic) {
            Some(key) => format!("{key} (model.{}): {}", e.field, e.message),
            None => e.to_string(),
        };
        HfError::new(
            path,
            format!("does not describe a working model: {problem}"),
        )
    })?;
    Ok(HfConfig {
        arch,
        model,
        bos_token_id: keys.token_ids("bos_token_id")?.first().copied(),
        eos_token_ids: keys.token_ids("eos_token_id")?,
    })
}

/// The `config.json` key(s) behind a [`TransformerConfig`] field, for errors.
fn hf_key(arch: HfArch, field: &str, dynamic_rope: bool) -> Option<String> {
    if dynamic_rope && field == "max_seq_len" {
        return Some("`max_position_embeddings` × `rope_scaling.factor`".into());
    }
    let key = arch.family().config_key(field)?;
    Some(format!("`{key}`"))
}

/// `config.json` for `model` as `arch`, with weights stored in `dtype` (e.g. `float32`).
pub fn to_config_json(
    arch: HfArch,
    model: &TransformerConfig,
    bos_token_id: Option<u32>,
    eos_token_ids: &[u32],
    dtype: &str,
) -> Value {
    let eos = match eos_token_ids {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    let mut map = Map::new();
    map.insert("architectures".into(), json!([arch.class_name()]));
    map.insert("model_type".into(), json!(arch.model_type()));
    map.insert("vocab_size".into(), json!(model.vocab_size));
    map.insert("bos_token_id".into(), json!(bos_token_id));
    map.insert("eos_token_id".into(), eos);
    map.insert("tie_word_embeddings".into(), json!(model.tie_embeddings));
    map.insert("initializer_range".into(), json!(model.init_std));
    map.insert("torch_dtype".into(), json!(dtype));
    map.insert("use_cache".into(), json!(true));
    arch.family().write(model, &mut map);
    Value::Object(map)
}
