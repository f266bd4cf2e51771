//! `generation_config.json`: the defaults `transformers`' `generate` uses.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::error::HfError;

/// File name of the generation defaults.
pub const GENERATION_FILE: &str = "generation_config.json";

/// The parts of `generation_config.json` Ember uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerationConfig {
    pub bos_token_id: Option<u32>,
    /// Generation stops after any of these.
    pub eos_token_ids: Vec<u32>,
    /// `false`: greedy decoding (the `transformers` default).
    pub do_sample: bool,
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub max_new_tokens: Option<usize>,
}

impl GenerationConfig {
    /// Reads `dir/generation_config.json`; `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Self>, HfError> {
        let path = dir.join(GENERATION_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text =
            ember_data::files::read_regular_text(&path).map_err(|e| HfError::new(&path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| HfError::new(&path, format!("malformed JSON: {e}")))?;
        let map = value
            .as_object()
            .ok_or_else(|| HfError::new(&path, "expected a JSON object"))?;
        let bad =
            |key: &str, v: &Value| HfError::new(&path, format!("`{key}`: unexpected value {v}"));
        let get = |key: &str| map.get(key).filter(|v| !v.is_null());
        let ids = |key: &str| -> Result<Vec<u32>, HfError> {
            match get(key) {
                None => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| bad(key, v))
                    })
                    .collect(),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(|n| vec![n])
                    .ok_or_else(|| bad(key, v)),
            }
        };
        let float = |key: &str| -> Result<Option<f64>, HfError> {
            get(key)
                .map(|v| v.as_f64().ok_or_else(|| bad(key, v)))
                .transpose()
        };
        let count = |key: &str| -> Result<Option<usize>, HfError> {
            get(key)
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| bad(key, v))
                })
                .transpose()
        };
        Ok(Some(Self {
            bos_token_id: ids("bos_token_id")?.first().copied(),
            eos_token_ids: ids("eos_token_id")?,
            do_sample: match get("do_sample") {
                None => false,
                Some(v) => v.as_bool().ok_or_else(|| bad("do_sample", v))?,
            },
            temperature: float("temperature")?,
            top_k: count("top_k")?,
            top_p: float("top_p")?,
            max_new_tokens: count("max_new_tokens")?,
        }))
    }

    /// The JSON `transformers` reads.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("bos_token_id".into(), json!(self.bos_token_id));
        map.insert(
            "eos_token_id".into(),
            match self.eos_token_ids.as_slice() {
                [] => Value::Null,
                [one] => json!(one),
                many => json!(many),
            },
        );
        map.insert("do_sample".into(), json!(self.do_sample));
        if self.do_sample {
            for (key, value) in [
                ("temperature", json!(self.temperature)),
                ("top_k", json!(self.top_k)),
                ("top_p", json!(self.top_p)),
            ] {
                if !value.is_null() {
                    map.insert(key.into(), value);
                }
            }
        }
        if let Some(n) = self.max_new_tokens {
            map.insert("max_new_tokens".into(), json!(n));
        }
        Value::Object(map)
    }
}
