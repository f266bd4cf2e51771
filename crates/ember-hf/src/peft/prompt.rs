//! Prefix-tuning and prompt-tuning adapter directories: `adapter_config.json`
//! (`peft_type` `PREFIX_TUNING` or `PROMPT_TUNING`, `num_virtual_tokens`, `num_layers`,
//! `token_dim`, `num_attention_heads`) and `prompt_embeddings` in
//! `adapter_model.safetensors`.

use std::path::Path;

use burn::tensor::{Int, Tensor, TensorData};
use ember_nn::{FusedBackend, Transformer, TransformerConfig};
use ember_peft::{PrefixTuning, PromptTuning};
use serde_json::{Value, json};

use super::common::{read_vector, values_of, write_adapter};
use super::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::error::{HfError, at};
use crate::safetensors_io::{NamedTensor, WeightFiles};

/// The tensor `peft` saves for prompt learning.
const EMBEDDINGS: &str = "prompt_embeddings";

/// A prompt-learning adapter.
#[derive(Debug)]
pub enum PromptAdapter<B: FusedBackend> {
    Prefix(PrefixTuning<B>),
    Prompt(PromptTuning<B>),
}

impl<B: FusedBackend> PromptAdapter<B> {
    /// Logits `[batch, seq, vocab]` of `tokens` (their own rows) with the adapter.
    pub fn forward(&self, model: &Transformer<B>, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match self {
            PromptAdapter::Prefix(p) => p.forward(model, tokens),
            PromptAdapter::Prompt(p) => p.forward(model, tokens),
        }
    }

    /// Virtual tokens before the sequence.
    pub fn n_virtual(&self) -> usize {
        match self {
            PromptAdapter::Prefix(p) => p.n_virtual(),
            PromptAdapter::Prompt(p) => p.n_virtual(),
        }
    }

    /// Trainable parameters.
    pub fn num_params(&self) -> usize {
        let dims = match self {
            PromptAdapter::Prefix(p) => p.embeddings.dims(),
            PromptAdapter::Prompt(p) => p.embeddings.dims(),
        };
        dims[0] * dims[1]
    }
}

/// Reads the prefix- or prompt-tuning adapter in `dir` for a model of `config`. `Err`
/// names the file and the key or tensor that does not fit the model.
pub fn load_prompt_adapter<B: FusedBackend>(
    dir: &Path,
    config: &TransformerConfig,
    device: &B::Device,
) -> Result<PromptAdapter<B>, HfError> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = ember_data::files::read_regular_text(&path).map_err(at(&path))?;
    let value: Value = serde_json::from_str(&text).map_err(at(&path))?;
    let prefix = match value["peft_type"].as_str() {
        Some("PREFIX_TUNING") => true,
        Some("PROMPT_TUNING") => false,
        _ => {
            return Err(HfError::new(
                &path,
                format!(
                    "peft_type = {}: expected \"PREFIX_TUNING\" or \"PROMPT_TUNING\"",
                    value["peft_type"]
                ),
            ));
        }
    };
    let (token_dim, heads) = if prefix {
        (config.n_kv_heads * config.head_dim(), config.n_kv_heads)
    } else {
        (config.d_model, config.n_heads)
    };
    let n_virtual = value["num_virtual_tokens"].as_u64().unwrap_or(0) as usize;
    let expect = [
        ("num_layers", config.n_layers),
        ("token_dim", token_dim),
        ("num_attention_heads", heads),
        ("num_transformer_submodules", 1),
    ];
    for (key, want) in expect {
        if value[key].as_u64() != Some(want as u64) {
            return Err(HfError::new(
                &path,
                format!("{key} = {}: this model needs {want}", value[key]),
            ));
        }
    }
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let files = WeightFiles::open_file(&weights_path)?;
    let width = if prefix {
        config.n_layers * 2 * token_dim
    } else {
        token_dim
    };
    let values = read_vector(&files, EMBEDDINGS, &[n_virtual, width], &weights_path)?;
    if let Some(extra) = files.names().find(|n| *n != EMBEDDINGS) {
        return Err(HfError::new(
            &weights_path,
            format!("`{extra}`: a prompt-learning adapter holds only `{EMBEDDINGS}`"),
        ));
    }
    let tensor = Tensor::from_data(TensorData::new(values, [n_virtual, width]), device);
    let err = |e: ember_peft::PeftError| HfError::new(&weights_path, e.0);
    Ok(if prefix {
        PromptAdapter::Prefix(PrefixTuning::from_embeddings(config, tensor).map_err(err)?)
    } else {
        PromptAdapter::Prompt(PromptTuning::from_embeddings(config, tensor).map_err(err)?)
    })
}

/// Writes `adapter` to `dir` in `peft`'s format (each file atomically).
pub fn save_prompt_adapter<B: FusedBackend>(
    dir: &Path,
    adapter: &PromptAdapter<B>,
    config: &TransformerConfig,
) -> Result<(), HfError> {
    let (embeddings, settings) = match adapter {
        PromptAdapter::Prefix(p) => (
            p.embeddings.val(),
            json!({
                "peft_type": "PREFIX_TUNING",
                "token_dim": config.n_kv_heads * config.head_dim(),
                "num_attention_heads": config.n_kv_heads,
                "prefix_projection": false,
                "encoder_hidden_size": config.n_kv_heads * config.head_dim(),
            }),
        ),
        PromptAdapter::Prompt(p) => (
            p.embeddings.val(),
            json!({
                "peft_type": "PROMPT_TUNING",
                "token_dim": config.d_model,
                "num_attention_heads": config.n_heads,
                "prompt_tuning_init": "RANDOM",
            }),
        ),
    };
    let [n_virtual, width] = embeddings.dims();
    let config_path = dir.join(ADAPTER_CONFIG);
    let values = values_of(embeddings, EMBEDDINGS, &config_path)?;
    let tensor = NamedTensor {
        name: EMBEDDINGS.to_string(),
        shape: vec![n_virtual, width],
        values,
    };
    let mut value = json!({
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": null,
        "num_virtual_tokens": n_virtual,
        "num_layers": config.n_layers,
        "num_transformer_submodules": 1,
        "inference_mode": true,
    });
    for (k, v) in settings.as_object().expect("an object") {
        value[k] = v.clone();
    }
    write_adapter(dir, &[tensor], &value)
}
