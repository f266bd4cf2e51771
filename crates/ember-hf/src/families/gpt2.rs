//! GPT-2 (`gpt2`): learned positions, LayerNorm, `gelu_new` (tanh GELU) or `gelu`, and
//! `Conv1D` weights, already `[in, out]`, with q, k and v fused side by side in `c_attn`.

use ember_nn::{MlpKind, NormKind, TransformerConfig};
use serde_json::{Map, Value, json};

use super::keys::Keys;
use super::registry::Family;
use crate::error::HfError;
use crate::names::TensorEntry;

pub(super) struct Gpt2;

impl Family for Gpt2 {
    fn read(&self, keys: &Keys) -> Result<TransformerConfig, HfError> {
        let d_model = keys.usize("n_embd")?;
        // `TransformerConfig::gpt2` sets d_ff = 4 * d_model: check it cannot overflow first.
        let default_d_ff = d_model
            .checked_mul(4)
            .ok_or_else(|| keys.err("n_embd", format!("is {d_model}, too large")))?;
        let mut model = TransformerConfig::gpt2(
            keys.usize("vocab_size")?,
            d_model,
            keys.usize("n_layer")?,
            keys.usize("n_head")?,
            keys.usize("n_positions")?,
        );
        model.d_ff = keys.opt_usize("n_inner")?.unwrap_or(default_d_ff);
        model.norm_eps = keys.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5);
        model.mlp = match keys.opt_str("activation_function")?.unwrap_or("gelu_new") {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => MlpKind::GeluTanh,
            "gelu" => MlpKind::Gelu,
            other => {
                return Err(keys.err(
                    "activation_function",
                    format!("is `{other}`; Ember supports gelu_new, gelu_pytorch_tanh and gelu"),
                ));
            }
        };
        model.tie_embeddings = keys.bool_or("tie_word_embeddings", true)?;
        if !keys.bool_or("scale_attn_weights", true)? {
            return Err(keys.err(
                "scale_attn_weights",
                "is false, which Ember does not support",
            ));
        }
        if keys.bool_or("scale_attn_by_inverse_layer_idx", false)? {
            return Err(keys.err(
                "scale_attn_by_inverse_layer_idx",
                "is true, which Ember does not support",
            ));
        }
        if keys.bool_or("add_cross_attention", false)? {
            return Err(keys.err("add_cross_attention", "is true: not a decoder-only model"));
        }
        Ok(model)
    }

    fn write(&self, model: &TransformerConfig, map: &mut Map<String, Value>) {
        for (key, value) in [
            ("n_embd", json!(model.d_model)),
            ("n_layer", json!(model.n_layers)),
            ("n_head", json!(model.n_heads)),
            ("n_positions", json!(model.max_seq_len)),
            ("n_inner", json!(model.d_ff)),
            ("layer_norm_epsilon", json!(model.norm_eps)),
            (
                "activation_function",
                json!(if model.mlp == MlpKind::Gelu {
                    "gelu"
                } else {
                    "gelu_new"
                }),
            ),
            ("scale_attn_weights", json!(true)),
            ("resid_pdrop", json!(0.0)),
            ("embd_pdrop", json!(0.0)),
            ("attn_pdrop", json!(0.0)),
        ] {
            map.insert(key.into(), value);
        }
    }

    fn tensor_map(&self, config: &TransformerConfig) -> Vec<TensorEntry> {
        let mut map = vec![
            TensorEntry::new("tok_embeddings.weight", "transformer.wte.weight", false),
            TensorEntry::new("pos_embeddings.weight", "transformer.wpe.weight", false),
        ];
        let norm = |map: &mut Vec<TensorEntry>, ember: String, hf: String| {
            map.push(TensorEntry::new(
                format!("{ember}.gamma"),
                format!("{hf}.weight"),
                false,
            ));
            map.push(TensorEntry::new(
                format!("{ember}.beta"),
                format!("{hf}.bias"),
                false,
            ));
        };
        let linear = |map: &mut Vec<TensorEntry>, ember: String, hf: String| {
            for p in ["weight", "bias"] {
                map.push(TensorEntry::new(
                    format!("{ember}.{p}"),
                    format!("{hf}.{p}"),
                    false,
                ));
            }
        };
        for i in 0..config.n_layers {
            let (ember, hf) = (format!("layers.{i}"), format!("transformer.h.{i}"));
            norm(&mut map, format!("{ember}.attn_norm"), format!("{hf}.ln_1"));
            for (index, proj) in ["q_proj", "k_proj", "v_proj"].into_iter().enumerate() {
                for p in ["weight", "bias"] {
                    map.push(TensorEntry {
                        part: Some((index, 3)),
                        ..TensorEntry::new(
                            format!("{ember}.attn.{proj}.{p}"),
                            format!("{hf}.attn.c_attn.{p}"),
                            false,
                        )
                    });
                }
            }
            linear(
                &mut map,
                format!("{ember}.attn.o_proj"),
                format!("{hf}.attn.c_proj"),
            );
            norm(&mut map, format!("{ember}.mlp_norm"), format!("{hf}.ln_2"));
            linear(
                &mut map,
                format!("{ember}.mlp.up_proj"),
                format!("{hf}.mlp.c_fc"),
            );
            linear(
                &mut map,
                format!("{ember}.mlp.down_proj"),
                format!("{hf}.mlp.c_proj"),
            );
        }
        norm(&mut map, "final_norm".into(), "transformer.ln_f".into());
        if !config.tie_embeddings {
            map.push(TensorEntry::new("lm_head.weight", "lm_head.weight", true));
        }
        map
    }

    fn config_key(&self, field: &str) -> Option<&'static str> {
        Some(match field {
            "vocab_size" => "vocab_size",
            "d_model" => "n_embd",
            "n_layers" => "n_layer",
            "n_heads" | "n_kv_heads" => "n_head",
            "d_ff" => "n_inner",
            "max_seq_len" => "n_positions",
            "norm_eps" => "layer_norm_epsilon",
            _ => return None,
        })
    }
}

/// Why a model with learned positions cannot be written as GPT-2, if it cannot.
pub(super) fn export_problem(model: &TransformerConfig) -> Option<String> {
    // Missing biases export as zeros.
    let fits = model.norm == NormKind::LayerNorm
        && matches!(model.mlp, MlpKind::Gelu | MlpKind::GeluTanh)
        && model.n_kv_heads == model.n_heads
        && model.sliding_window.is_none()
        && model.moe.is_none();
    if !fits {
        return Some(
            "learned positions without GPT-2's LayerNorm, GELU MLP and multi-head attention".into(),
        );
    }
    // GPT-2's config.json has no head width: it is always n_embd / n_head.
    (model.n_heads * model.head_dim() != model.d_model).then(|| {
        format!(
            "GPT-2 heads are n_embd / n_head wide; these are {} wide ({} heads, d_model {})",
            model.head_dim(),
            model.n_heads,
            model.d_model
        )
    })
}
