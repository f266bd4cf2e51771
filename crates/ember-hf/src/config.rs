//! `config.json`: the Hugging Face architectures Ember reads and writes, and their mapping
//! to [`TransformerConfig`].
//!
//! Both config generations are read: transformers 4's `rope_theta` + `rope_scaling`
//! (with `type` or `rope_type`) and transformers 5's `rope_parameters`. Ember writes the
//! 4.x spelling, which both generations load.

use std::path::Path;

use ember_nn::{MlpKind, MoeConfig, NormKind, PositionKind, TransformerConfig};
use ember_nn::{NormPlacement, config::DTypeName};
use ember_ops::{RopeLayout, RopeScaling};
use serde_json::{Map, Value, json};

use crate::error::HfError;

/// File name of the model configuration.
pub const CONFIG_FILE: &str = "config.json";

/// The `model_type`s Ember imports and exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfArch {
    /// Llama 1/2/3 (GQA, RoPE scaling, tied or untied embeddings).
    Llama,
    /// Llama with a sliding attention window.
    Mistral,
    /// Llama with q/k/v biases.
    Qwen2,
    /// GPT-2: learned positions, LayerNorm, GELU, fused `c_attn` Conv1D weights.
    Gpt2,
    /// Mistral with a top-k Mixture of SwiGLU experts.
    Mixtral,
}

impl HfArch {
    pub const ALL: [HfArch; 5] = [
        HfArch::Llama,
        HfArch::Mistral,
        HfArch::Qwen2,
        HfArch::Gpt2,
        HfArch::Mixtral,
    ];

    /// The `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            HfArch::Llama => "llama",
            HfArch::Mistral => "mistral",
            HfArch::Qwen2 => "qwen2",
            HfArch::Gpt2 => "gpt2",
            HfArch::Mixtral => "mixtral",
        }
    }

    /// The `transformers` class that loads it.
    pub fn class_name(self) -> &'static str {
        match self {
            HfArch::Llama => "LlamaForCausalLM",
            HfArch::Mistral => "MistralForCausalLM",
            HfArch::Qwen2 => "Qwen2ForCausalLM",
            HfArch::Gpt2 => "GPT2LMHeadModel",
            HfArch::Mixtral => "MixtralForCausalLM",
        }
    }

    fn from_model_type(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.model_type() == name)
    }
}

/// A parsed `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    pub arch: HfArch,
    pub model: TransformerConfig,
    pub bos_token_id: Option<u32>,
    /// Generation stops after any of these.
    pub eos_token_ids: Vec<u32>,
}

/// Typed access to a JSON object; errors name the key.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
    /// Prefix for nested objects (`rope_scaling.`).
    prefix: &'static str,
}

impl<'a> Keys<'a> {
    fn err(&self, key: &str, message: impl std::fmt::Display) -> HfError {
        HfError::new(self.path, format!("`{}{key}` {message}", self.prefix))
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.err(key, format!("must be a non-negative integer, got {v}"))),
        }
    }

    fn usize(&self, key: &str) -> Result<usize, HfError> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(key, "is missing"))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("must be a number, got {v}"))),
        }
    }

    fn f64(&self, key: &str) -> Result<f64, HfError> {
        self.opt_f64(key)?
            .ok_or_else(|| self.err(key, "is missing"))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, HfError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, format!("must be true or false, got {v}"))),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("must be a string, got {v}"))),
        }
    }

    /// A token id or a list of them (each a 32-bit unsigned integer).
    fn token_ids(&self, key: &str) -> Result<Vec<u32>, HfError> {
        let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    id(v).ok_or_else(|| {
                        self.err(key, format!("must hold token ids below 2^32, got {v}"))
                    })
                })
                .collect(),
            Some(v) => id(v)
                .map(|n| vec![n])
                .ok_or_else(|| self.err(key, format!("must be a token id below 2^32, got {v}"))),
        }
    }
}

/// Reads and maps `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<HfConfig, HfError> {
    let path = dir.join(CONFIG_FILE);
    if !path.exists() {
        return Err(HfError::new(&path, "missing"));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| HfError::new(&path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| HfError::new(&path, format!("malformed JSON: {e}")))?;
    parse_config(&value, &path)
}

/// Maps a parsed `config.json` (read from `path`, named in errors).
pub fn parse_config(value: &Value, path: &Path) -> Result<HfConfig, HfError> {
    let map = value
        .as_object()
        .ok_or_else(|| HfError::new(path, "expected a JSON object"))?;
    let keys = Keys {
        map,
        path,
        prefix: "",
    };
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
    let mut model = match arch {
        HfArch::Gpt2 => gpt2_model(&keys)?,
        _ => llama_model(&keys, arch)?,
    };
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
fn hf_key(arch: HfArch, field: &str, dynamic_rope: bool) -> Option<&'static str> {
    let gpt2 = arch == HfArch::Gpt2;
    Some(match field {
        "vocab_size" => "`vocab_size`",
        "d_model" if gpt2 => "`n_embd`",
        "d_model" => "`hidden_size`",
        "n_layers" if gpt2 => "`n_layer`",
        "n_layers" => "`num_hidden_layers`",
        "n_heads" if gpt2 => "`n_head`",
        "n_heads" => "`num_attention_heads`",
        "n_kv_heads" if gpt2 => "`n_head`",
        "n_kv_heads" => "`num_key_value_heads`",
        "d_ff" if gpt2 => "`n_inner`",
        "d_ff" => "`intermediate_size`",
        "max_seq_len" if gpt2 => "`n_positions`",
        "max_seq_len" if dynamic_rope => "`max_position_embeddings` × `rope_scaling.factor`",
        "max_seq_len" => "`max_position_embeddings`",
        "norm_eps" if gpt2 => "`layer_norm_epsilon`",
        "norm_eps" => "`rms_norm_eps`",
        "rope_theta" => "`rope_theta`",
        "partial_rotary_factor" => "`partial_rotary_factor`",
        "rope_scaling" => "`rope_scaling`",
        "sliding_window" => "`sliding_window`",
        "moe.n_experts" => "`num_local_experts`",
        "moe.top_k" => "`num_experts_per_tok`",
        "moe.aux_loss_coef" => "`router_aux_loss_coef`",
        _ => return None,
    })
}

fn gpt2_model(keys: &Keys) -> Result<TransformerConfig, HfError> {
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

fn llama_model(keys: &Keys, arch: HfArch) -> Result<TransformerConfig, HfError> {
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
    if n_heads > 0
        && let Some(head_dim) = keys.opt_usize("head_dim")?
        && head_dim.checked_mul(n_heads) != Some(d_model)
    {
        return Err(keys.err(
            "head_dim",
            format!(
                "is {head_dim}, but Ember needs hidden_size / num_attention_heads = {}",
                d_model / n_heads
            ),
        ));
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
    match arch {
        HfArch::Qwen2 => model.qkv_bias = Some(true),
        _ if keys.bool_or("attention_bias", false)? => {
            return Err(keys.err(
                "attention_bias",
                "is true (a bias on o_proj too), which Ember does not support",
            ));
        }
        _ => {}
    }
    let rope = rope_settings(keys, max_pos)?;
    model.rope_theta = rope.theta;
    model.rope_scaling = rope.scaling;
    model.partial_rotary_factor = rope.partial_rotary_factor;
    model.max_seq_len = rope.context;
    model.rope_layout = RopeLayout::RotateHalf;
    model.sliding_window = sliding_window(keys, arch, n_layers)?;
    if arch == HfArch::Mixtral {
        model.moe = Some(MoeConfig {
            n_experts: keys.usize("num_local_experts")?,
            top_k: keys.usize("num_experts_per_tok")?,
            renormalize: true,
            capacity_factor: None,
            aux_loss_coef: keys.opt_f64("router_aux_loss_coef")?.unwrap_or(0.02),
            z_loss_coef: 0.0,
        });
    }
    Ok(model)
}

struct RopeSettings {
    theta: f64,
    scaling: Option<RopeScaling>,
    partial_rotary_factor: f64,
    /// The longest sequence the model is meant for.
    context: usize,
}

fn rope_settings(keys: &Keys, max_pos: usize) -> Result<RopeSettings, HfError> {
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
    let p = Keys {
        map: params,
        path: keys.path,
        prefix: if prefix.is_empty() {
            "rope_scaling."
        } else {
            prefix
        },
    };
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

fn sliding_window(keys: &Keys, arch: HfArch, n_layers: usize) -> Result<Option<usize>, HfError> {
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
    match arch {
        HfArch::Mistral | HfArch::Mixtral => Ok(window),
        HfArch::Qwen2 if keys.bool_or("use_sliding_window", false)? => {
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
        _ => Ok(None),
    }
}

/// The Hugging Face architecture an Ember model exports as, or why it has none.
pub fn export_arch(model: &TransformerConfig) -> Result<HfArch, String> {
    let unsupported = |what: String| {
        Err(format!(
            "{what}: no Hugging Face architecture Ember exports (llama, mistral, qwen2, gpt2, mixtral) has it"
        ))
    };
    if model.norm_placement != NormPlacement::Pre {
        return unsupported(format!("model.norm_placement = {:?}", model.norm_placement));
    }
    if model.parallel_residual {
        return unsupported("model.parallel_residual = true".into());
    }
    if model.qk_norm {
        return unsupported("model.qk_norm = true".into());
    }
    if let Some(cap) = model.attn_softcap {
        return unsupported(format!("model.attn_softcap = {cap}"));
    }
    match model.position {
        PositionKind::Learned => {
            // Missing biases export as zeros.
            if model.norm != NormKind::LayerNorm
                || !matches!(model.mlp, MlpKind::Gelu | MlpKind::GeluTanh)
                || model.n_kv_heads != model.n_heads
                || model.sliding_window.is_some()
                || model.moe.is_some()
            {
                return unsupported(
                    "learned positions without GPT-2's LayerNorm, GELU MLP and multi-head attention"
                        .into(),
                );
            }
            Ok(HfArch::Gpt2)
        }
        PositionKind::Rope => {
            if model.norm != NormKind::RmsNorm {
                return unsupported(format!("model.norm = {:?} with RoPE", model.norm));
            }
            if model.bias {
                return unsupported("model.bias = true with RoPE".into());
            }
            if model.moe.is_none() && model.mlp != MlpKind::SwiGlu {
                return unsupported(format!("model.mlp = {:?} with RoPE", model.mlp));
            }
            if model.rope_layout != RopeLayout::RotateHalf {
                return unsupported(format!("model.rope_layout = {:?}", model.rope_layout));
            }
            if let Some(RopeScaling::Yarn { .. }) = model.rope_scaling {
                return unsupported("model.rope_scaling of type yarn".into());
            }
            match (model.moe.is_some(), model.qkv_bias(), model.sliding_window) {
                (true, false, _) => Ok(HfArch::Mixtral),
                (false, true, None) => Ok(HfArch::Qwen2),
                (false, false, Some(_)) => Ok(HfArch::Mistral),
                (false, false, None) => Ok(HfArch::Llama),
                (true, true, _) => unsupported("MoE with q/k/v biases".into()),
                (false, true, Some(_)) => unsupported("q/k/v biases with a sliding window".into()),
            }
        }
        other => unsupported(format!("model.position = {other:?}")),
    }
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
    if arch == HfArch::Gpt2 {
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
        return Value::Object(map);
    }
    let (max_pos, rope_scaling) = match model.rope_scaling {
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
    };
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
    match arch {
        HfArch::Llama => {
            map.insert("attention_bias".into(), json!(false));
            map.insert("mlp_bias".into(), json!(false));
        }
        HfArch::Mistral => {
            map.insert("sliding_window".into(), json!(model.sliding_window));
        }
        HfArch::Qwen2 => {
            map.insert("use_sliding_window".into(), json!(false));
            map.insert("sliding_window".into(), Value::Null);
            map.insert("max_window_layers".into(), json!(model.n_layers));
        }
        HfArch::Mixtral => {
            let moe = model.moe.as_ref().expect("export_arch checked the MoE");
            map.insert("sliding_window".into(), json!(model.sliding_window));
            map.insert("num_local_experts".into(), json!(moe.n_experts));
            map.insert("num_experts_per_tok".into(), json!(moe.top_k));
            map.insert("router_aux_loss_coef".into(), json!(moe.aux_loss_coef));
            map.insert("output_router_logits".into(), json!(false));
        }
        HfArch::Gpt2 => unreachable!(),
    }
    Value::Object(map)
}
