//! `--model DIR`: an Ember checkpoint (or run directory) or a Hugging Face model
//! directory, behind one interface.

use std::path::Path;

use ember_data::Tokenizer;
use ember_hf::{GenerationConfig, HfError, HfModel};
use ember_nn::{FusedBackend, Transformer, TransformerConfig};

use crate::checkpoint::{CheckpointDir, CheckpointError, is_checkpoint};
use crate::quantized_dir::{QuantizedDir, is_quantized_dir};

/// Where a model's weights and metadata come from.
pub enum ModelDir {
    Ember(Box<CheckpointDir>),
    Hf(Box<HfModel>),
    /// Host-decoder weights written by `ember quantize`.
    Quantized(Box<QuantizedDir>),
}

/// A model directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The caller's input is at fault (a prompt the tokenizer cannot encode, text for a
    /// model without a tokenizer); the message names the flag or input.
    #[error("{0}")]
    BadInput(String),
    /// Not a model directory at all.
    #[error("{0}")]
    NotAModel(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Hf(#[from] HfError),
}

/// Sampling settings a model directory suggests.
pub struct SampleDefaults {
    pub prompt: Option<String>,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
}

impl ModelDir {
    /// Opens `dir`: an Ember checkpoint when it (or `dir/checkpoint`) holds `ember.json`,
    /// else a Hugging Face directory when it holds `config.json` or safetensors weights.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        if is_checkpoint(dir) {
            if let Some(base) = adapter_base(dir) {
                return Err(ModelError::BadInput(format!(
                    "--model {}: holds an adapter trained by `ember finetune` on {base}; pass the base model as --model and this directory as --adapter",
                    dir.display()
                )));
            }
            return Ok(Self::Ember(Box::new(CheckpointDir::open(dir)?)));
        }
        if is_quantized_dir(dir) {
            return Ok(Self::Quantized(Box::new(QuantizedDir::open(dir)?)));
        }
        if !dir.is_dir() {
            return Err(ModelError::NotAModel(format!(
                "--model {}: no such directory",
                dir.display()
            )));
        }
        if ember_hf::is_hf_dir(dir) {
            return Ok(Self::Hf(Box::new(HfModel::open(dir)?)));
        }
        Err(ModelError::NotAModel(format!(
            "--model {}: neither an Ember checkpoint (ember.json) nor a Hugging Face model directory (config.json with model.safetensors)",
            dir.display()
        )))
    }

    pub fn config(&self) -> &TransformerConfig {
        match self {
            Self::Ember(c) => &c.model,
            Self::Hf(h) => &h.config.model,
            Self::Quantized(q) => &q.config,
        }
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        match self {
            Self::Ember(c) => Some(&c.tokenizer),
            Self::Hf(h) => h.tokenizer.as_ref(),
            Self::Quantized(q) => q.tokenizer.as_ref(),
        }
    }

    /// The model with its weights.
    pub fn load<B: FusedBackend>(&self, device: &B::Device) -> Result<Transformer<B>, ModelError> {
        match self {
            Self::Ember(c) => Ok(c.load_model(device)?),
            Self::Hf(h) => Ok(h.load_model(device)?),
            Self::Quantized(q) => Err(ModelError::BadInput(format!(
                "--model {}: holds {} weights for the host decoder (`ember quantize`); only `ember generate` and `ember serve` run it",
                q.dir.display(),
                q.weights
            ))),
        }
    }

    /// Token ids of `text`, with the tokenizer's special markers (a Llama tokenizer's
    /// `<s>`), as `transformers` encodes prompts. `flag` names the source in errors.
    pub fn encode(&self, text: &str, flag: &str) -> Result<Vec<u32>, ModelError> {
        let tokenizer = self.tokenizer().ok_or_else(|| {
            ModelError::BadInput(format!(
                "{flag}: this model directory has no tokenizer.json; pass token ids with --ids"
            ))
        })?;
        tokenizer
            .encode_with_special(text)
            .map_err(|e| ModelError::BadInput(format!("{flag}: {e}")))
    }

    /// Text of `ids`, leaving out special tokens.
    pub fn decode(&self, ids: &[u32]) -> Option<String> {
        match self.tokenizer()? {
            Tokenizer::Bpe(t) => t.decode_with(ids, true).ok(),
            t => t.decode(ids).ok(),
        }
    }

    /// Generation stops after these (the model's end-of-sequence ids).
    pub fn stop_tokens(&self) -> Vec<u32> {
        match self {
            Self::Ember(_) => Vec::new(),
            Self::Hf(h) => h.generation.eos_token_ids.clone(),
            Self::Quantized(q) => q.generation.eos_token_ids.clone(),
        }
    }

    pub fn sample_defaults(&self) -> SampleDefaults {
        match self {
            Self::Ember(c) => {
                let s = &c.sample;
                SampleDefaults {
                    prompt: Some(s.prompt.clone()),
                    max_new_tokens: s.max_new_tokens,
                    temperature: s.temperature,
                    top_k: s.top_k,
                    top_p: s.top_p,
                }
            }
            Self::Hf(_) | Self::Quantized(_) => {
                // transformers decodes greedily unless `do_sample` is set.
                let g = match self {
                    Self::Hf(h) => &h.generation,
                    Self::Quantized(q) => &q.generation,
                    Self::Ember(_) => unreachable!(),
                };
                SampleDefaults {
                    prompt: None,
                    max_new_tokens: g.max_new_tokens.unwrap_or(100),
                    temperature: if g.do_sample {
                        g.temperature.unwrap_or(1.0)
                    } else {
                        0.0
                    },
                    top_k: if g.do_sample {
                        g.top_k.unwrap_or(50)
                    } else {
                        0
                    },
                    top_p: g.top_p.unwrap_or(1.0),
                }
            }
        }
    }

    /// The `generation_config.json` an export writes.
    pub fn generation_config(&self) -> GenerationConfig {
        match self {
            Self::Hf(h) => h.generation.clone(),
            Self::Quantized(q) => q.generation.clone(),
            Self::Ember(c) => {
                let s = &c.sample;
                let sampled = s.temperature > 0.0;
                GenerationConfig {
                    do_sample: sampled,
                    temperature: sampled.then_some(s.temperature),
                    top_k: (sampled && s.top_k > 0).then_some(s.top_k),
                    top_p: (sampled && s.top_p < 1.0).then_some(s.top_p),
                    max_new_tokens: Some(s.max_new_tokens),
                    ..Default::default()
                }
            }
        }
    }
}

/// When `dir` (a checkpoint or its run directory) holds a fine-tune's adapter rather than
/// a model: the base it names (`base.json`'s `model`).
pub fn adapter_base(dir: &Path) -> Option<String> {
    let found = crate::checkpoint::resolve_dir(dir).ok()?;
    let text = ember_data::files::read_regular_text(&found.join("base.json")).ok()?;
    let record: serde_json::Value = serde_json::from_str(&text).ok()?;
    found.join("adapter_config.json").is_file().then(|| {
        record["model"]
            .as_str()
            .unwrap_or("another model")
            .to_string()
    })
}
