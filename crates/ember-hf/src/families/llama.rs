//! Llama (`llama`): RoPE (rotate-half), RMSNorm, SwiGLU, MHA/GQA/MQA by
//! `num_key_value_heads`, tied or untied embeddings. Mistral, Qwen2 and Mixtral are Llama
//! with small differences: what they share (reading and writing `config.json`, the tensor
//! names) is here, and each adds its own in its file.

use ember_nn::{MlpKind, NormKind, TransformerConfig};
use ember_ops::{RopeLayout, RopeScaling};
use serde_json::{Map, Value, json};

use super::keys::Keys;
use super::registry::Family;
use super::rope_scaling;
use crate::error::HfError;
use crate::names::TensorEntry;

pub(super) struct Llama;

impl Family for Llama {
    fn read(&self, keys: &Keys) -> Result<TransformerConfig, HfError> {
        read_llama_like(keys, false, |_, _, _| Ok(None))
    }

    fn write(&self, model: &TransformerConfig, map: &mut Map<String, Value>) {
        write_llama_like(model, map);
        map.insert("attention_bias".into(), json!(false));
        map.insert("mlp_bias".into(), json!(false));
    }

    fn tensor_map(&self, config: &TransformerConfig) -> Vec<TensorEntry> {
        tensors_with_mlp(config, |map, ember, hf| {
            for proj in ["gate_proj", "up_proj", "down_proj"] {
                map.push(TensorEntry::new(
                    format!("{ember}.mlp.{proj}.weight"),
                    format!("{hf}.mlp.{proj}.weight"),
                    true,
                ));
            }
        })
    }

    fn config_key(&self, field: &str) -> Option<&'static str> {
        Some(match field {
            "vocab_size" => "vocab_size",
            "d_model" => "hidden_size",
            "n_layers" => "num_hidden_layers",
            "n_heads" => "num_attention_heads",
            "n_kv_heads" => "num_key_value_heads",
            "d_ff" => "intermediate_size",
            "max_seq_len" => "max_position_embeddings",
            "norm_eps" => "rms_norm_eps",
            "rope_theta" => "rope_theta",
            "partial_rotary_factor" => "partial_rotary_factor",
            "rope_scaling" => "rope_scaling",
            "sliding_window" => "sliding_window",
            _ => return None,
        })
    }
}

/// A Llama-like family's sliding window when transformers 5's `layer_types` does not say,
/// from the config, its `sliding_window` and the number of layers.
pub(super) type DefaultWindow = fn(&Keys, Option<usize>, usize) -> Result<Option<usize>, HfError>;

/// The model every Llama-like family describes. With `qkv_bias` (Qwen2) it has q/k/v
/// biases; otherwise `attention_bias` (a bias on o_proj too) is refused.
pub(super) fn read_llama_like(
    keys: &Keys,
    qkv_bias: bool,
    window: DefaultWindow,
) -> Result<TransformerConfig, HfError> {
    let d_model = keys.usize("hidden_size")?;
    let n_heads = keys.usize("num_attention_heads")?;
    let n_kv_heads = keys.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
    let n_layers = keys.usize("num_hidden_layers")?;
    let max_pos = keys.usize("max_position_embeddings")?;
    let mut model = TransformerConfig::llama(
        keys.usize("vocab_size")?,
        d_model,
        n_layers,
        n_heads,
        n_kv_heads,
        keys.usize("intermediate_size")?,
        max_pos,
    );
    // An explicit head width (Qwen 3, Mistral-Nemo, models with pruned heads) is kept
    // when it is not hidden_size / num_attention_heads.
    if n_heads > 0
        && let Some(head_dim) = keys.opt_usize("head_dim")?
        && head_dim.checked_mul(n_heads) != Some(d_model)
    {
        model.head_dim = Some(head_dim);
    }
    model.norm_eps = keys.opt_f64("rms_norm_eps")?.unwrap_or(1e-6);
    let act = keys.opt_str("hidden_act")?.unwrap_or("silu");
    if act != "silu" {
        return Err(keys.err("hidden_act", format!("is `{act}`; Ember supports silu")));
    }
    model.tie_embeddings = keys.bool_or("tie_word_embeddings", false)?;
    if keys.bool_or("mlp_bias", false)? {
        return Err(keys.err("mlp_bias", "is true, which Ember does not support"));
    }
    if qkv_bias {
        model.qkv_bias = Some(true);
    } else if keys.bool_or("attention_bias", false)? {
        return Err(keys.err(
            "attention_bias",
            "is true (a bias on o_proj too), which Ember does not support",
        ));
    }
    let rope = rope_scaling::read(keys, max_pos)?;
    model.rope_theta = rope.theta;
    model.rope_scaling = rope.scaling;
    model.partial_rotary_factor = rope.partial_rotary_factor;
    model.max_seq_len = rope.context;
    model.rope_layout = RopeLayout::RotateHalf;
    model.sliding_window = sliding_window(keys, n_layers, window)?;
    Ok(model)
}

fn sliding_window(
    keys: &Keys,
    n_layers: usize,
    default: DefaultWindow,
) -> Result<Option<usize>, HfError> {
    let window = keys.opt_usize("sliding_window")?;
    // transformers 5 lists each layer's kind.
    if let Some(types) = keys.get("layer_types") {
        let types: Vec<&str> = types
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let sliding = types.iter().filter(|t| **t == "sliding_attention").count();
        let full = types.iter().filter(|t| **t == "full_attention").count();
        if sliding + full != types.len() || types.len() != n_layers {
            return Err(keys.err(
                "layer_types",
                "must list full_attention or sliding_attention for every layer",
            ));
        }
        return match (sliding, full) {
            (0, _) => Ok(None),
            (_, 0) => window.map(Some).ok_or_else(|| {
                keys.err("sliding_window", "is missing for sliding_attention layers")
            }),
            _ => Err(keys.err(
                "layer_types",
                "mixes sliding and full attention layers, which Ember does not support",
            )),
        };
    }
    default(keys, window, n_layers)
}

/// The `config.json` keys every Llama-like family writes.
pub(super) fn write_llama_like(model: &TransformerConfig, map: &mut Map<String, Value>) {
    let (max_pos, rope_scaling) = rope_scaling::write(model);
    for (key, value) in [
        ("hidden_size", json!(model.d_model)),
        ("intermediate_size", json!(model.d_ff)),
        ("num_hidden_layers", json!(model.n_layers)),
        ("num_attention_heads", json!(model.n_heads)),
        ("num_key_value_heads", json!(model.n_kv_heads)),
        ("head_dim", json!(model.head_dim())),
        ("max_position_embeddings", json!(max_pos)),
        ("rms_norm_eps", json!(model.norm_eps)),
        ("hidden_act", json!("silu")),
        ("rope_theta", json!(model.rope_theta)),
        ("rope_scaling", rope_scaling),
        ("attention_dropout", json!(0.0)),
    ] {
        map.insert(key.into(), value);
    }
    if model.partial_rotary_factor != 1.0 {
        map.insert(
            "partial_rotary_factor".into(),
            json!(model.partial_rotary_factor),
        );
    }
}

/// The tensors of a Llama-like model, with `mlp(map, ember, hf)` adding each layer's MLP
/// entries under the layer prefixes `layers.{i}` and `model.layers.{i}`. The q/k/v biases
/// of a model that has them (Qwen2) sit beside their weights.
pub(super) fn tensors_with_mlp(
    config: &TransformerConfig,
    mlp: impl Fn(&mut Vec<TensorEntry>, &str, &str),
) -> Vec<TensorEntry> {
    let mut map = vec![TensorEntry::new(
        "tok_embeddings.weight",
        "model.embed_tokens.weight",
        false,
    )];
    for i in 0..config.n_layers {
        let (ember, hf) = (format!("layers.{i}"), format!("model.layers.{i}"));
        map.push(TensorEntry::new(
            format!("{ember}.attn_norm.gamma"),
            format!("{hf}.input_layernorm.weight"),
            false,
        ));
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            map.push(TensorEntry::new(
                format!("{ember}.attn.{proj}.weight"),
                format!("{hf}.self_attn.{proj}.weight"),
                true,
            ));
            if config.qkv_bias() && proj != "o_proj" {
                map.push(TensorEntry::new(
                    format!("{ember}.attn.{proj}.bias"),
                    format!("{hf}.self_attn.{proj}.bias"),
                    false,
                ));
            }
        }
        map.push(TensorEntry::new(
            format!("{ember}.mlp_norm.gamma"),
            format!("{hf}.post_attention_layernorm.weight"),
            false,
        ));
        mlp(&mut map, &ember, &hf);
    }
    map.push(TensorEntry::new(
        "final_norm.gamma",
        "model.norm.weight",
        false,
    ));
    if !config.tie_embeddings {
        map.push(TensorEntry::new("lm_head.weight", "lm_head.weight", true));
    }
    map
}

/// Why a RoPE model cannot be written as a Llama-like family, if it cannot.
pub(super) fn export_problem(model: &TransformerConfig) -> Option<String> {
    if model.norm != NormKind::RmsNorm {
        return Some(format!("model.norm = {:?} with RoPE", model.norm));
    }
    if model.bias {
        return Some("model.bias = true with RoPE".into());
    }
    if model.moe.is_none() && model.mlp != MlpKind::SwiGlu {
        return Some(format!("model.mlp = {:?} with RoPE", model.mlp));
    }
    if model.rope_layout != RopeLayout::RotateHalf {
        return Some(format!("model.rope_layout = {:?}", model.rope_layout));
    }
    if let Some(RopeScaling::Yarn { .. }) = model.rope_scaling {
        return Some("model.rope_scaling of type yarn".into());
    }
    None
}
