//! RoPE settings of the Llama-like families, both directions: transformers 4's
//! `rope_theta` + `rope_scaling` (with `type` or `rope_type`) and transformers 5's
//! `rope_parameters` are read; the 4.x spelling, which both generations load, is written.

use ember_nn::TransformerConfig;
use ember_ops::RopeScaling;
use serde_json::{Map, Value, json};

use super::keys::Keys;
use crate::error::HfError;

pub(super) struct RopeSettings {
    pub(super) theta: f64,
    pub(super) scaling: Option<RopeScaling>,
    pub(super) partial_rotary_factor: f64,
    /// The longest sequence the model is meant for.
    pub(super) context: usize,
}

/// The RoPE settings of a config with `max_position_embeddings` = `max_pos`.
pub(super) fn read(keys: &Keys, max_pos: usize) -> Result<RopeSettings, HfError> {
    // transformers 5: `rope_parameters`; 4.x: `rope_theta` and `rope_scaling`.
    let (params, prefix) = match (keys.get("rope_parameters"), keys.get("rope_scaling")) {
        (Some(p), _) => (Some(p), "rope_parameters."),
        (None, Some(s)) => (Some(s), "rope_scaling."),
        (None, None) => (None, ""),
    };
    let empty = Map::new();
    let params = match params {
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(keys.err(
                prefix.trim_end_matches('.'),
                format!("must be an object, got {other}"),
            ));
        }
        None => &empty,
    };
    let p = keys.nested(
        params,
        if prefix.is_empty() {
            "rope_scaling."
        } else {
            prefix
        },
    );
    let theta = match p.opt_f64("rope_theta")? {
        Some(t) => t,
        None => keys.opt_f64("rope_theta")?.unwrap_or(10_000.0),
    };
    let partial_rotary_factor = match p.opt_f64("partial_rotary_factor")? {
        Some(f) => f,
        None => keys.opt_f64("partial_rotary_factor")?.unwrap_or(1.0),
    };
    let kind = match p.opt_str("rope_type")? {
        Some(k) => k,
        None => p.opt_str("type")?.unwrap_or("default"),
    };
    let (scaling, context) = match kind {
        "default" => (None, max_pos),
        "linear" => (
            Some(RopeScaling::Linear {
                factor: p.f64("factor")?,
            }),
            max_pos,
        ),
        "dynamic" => {
            let factor = p.f64("factor")?;
            (
                Some(RopeScaling::DynamicNtk {
                    factor,
                    original_max_seq: max_pos,
                }),
                // Dynamic NTK exists to run past max_position_embeddings.
                ((max_pos as f64) * factor.max(1.0)).round() as usize,
            )
        }
        "llama3" => (
            Some(RopeScaling::Llama3 {
                factor: p.f64("factor")?,
                low_freq_factor: p.f64("low_freq_factor")?,
                high_freq_factor: p.f64("high_freq_factor")?,
                original_max_seq: p.usize("original_max_position_embeddings")?,
            }),
            max_pos,
        ),
        other => {
            return Err(p.err(
                "rope_type",
                format!("is `{other}`; Ember imports default, linear, dynamic and llama3"),
            ));
        }
    };
    Ok(RopeSettings {
        theta,
        scaling,
        partial_rotary_factor,
        context,
    })
}

/// `max_position_embeddings` and `rope_scaling` for `model` (YaRN already refused).
pub(super) fn write(model: &TransformerConfig) -> (usize, Value) {
    match model.rope_scaling {
        None => (model.max_seq_len, Value::Null),
        Some(RopeScaling::Linear { factor }) => (
            model.max_seq_len,
            json!({"rope_type": "linear", "factor": factor}),
        ),
        Some(RopeScaling::DynamicNtk {
            factor,
            original_max_seq,
        }) => (
            original_max_seq,
            json!({"rope_type": "dynamic", "factor": factor}),
        ),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_seq,
        }) => (
            model.max_seq_len,
            json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_seq,
            }),
        ),
        Some(RopeScaling::Yarn { .. }) => unreachable!("export_arch rejects YaRN"),
    }
}
