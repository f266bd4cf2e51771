//! The architectures Ember reads and writes: their `model_type` and class names, which
//! family maps each, and which one an Ember model exports as.

use ember_nn::{NormPlacement, PositionKind, TransformerConfig};
use serde_json::{Map, Value};

use super::keys::Keys;
use super::{gpt2, llama, mistral, mixtral, qwen2};
use crate::error::HfError;
use crate::names::TensorEntry;

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

    pub(crate) fn from_model_type(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.model_type() == name)
    }

    /// The mapping of this architecture's `config.json` and tensors.
    pub(crate) fn family(self) -> &'static dyn Family {
        match self {
            HfArch::Llama => &llama::Llama,
            HfArch::Mistral => &mistral::Mistral,
            HfArch::Qwen2 => &qwen2::Qwen2,
            HfArch::Gpt2 => &gpt2::Gpt2,
            HfArch::Mixtral => &mixtral::Mixtral,
        }
    }
}

/// One architecture's mapping between Hugging Face and Ember, in both directions.
pub(crate) trait Family {
    /// `config.json` → Ember's model (validated by the caller).
    fn read(&self, keys: &Keys) -> Result<TransformerConfig, HfError>;

    /// Writes this architecture's `config.json` keys for `model` into `map`, after the
    /// keys every architecture has (`model_type`, `vocab_size`, token ids, …).
    fn write(&self, model: &TransformerConfig, map: &mut Map<String, Value>);

    /// Every parameter of an Ember model with `config`, as this architecture stores it.
    fn tensor_map(&self, config: &TransformerConfig) -> Vec<TensorEntry>;

    /// The `config.json` key behind a [`TransformerConfig`] field (`d_model`), for errors.
    fn config_key(&self, field: &str) -> Option<&'static str>;
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
        PositionKind::Learned => match gpt2::export_problem(model) {
            Some(what) => unsupported(what),
            None => Ok(HfArch::Gpt2),
        },
        PositionKind::Rope => {
            if let Some(what) = llama::export_problem(model) {
                return unsupported(what);
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
