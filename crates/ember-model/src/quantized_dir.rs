//! A directory `ember quantize` wrote: the host decoder's weights (int8 or 4-bit) in
//! `host_decoder.safetensors` with the model's configuration in its metadata, the
//! tokenizer, `generation_config.json`, and the chat template's `tokenizer_config.json`
//! when the source had one. Only the host decoder reads it (`generate`, `serve`).

use std::path::{Path, PathBuf};

use ember_data::Tokenizer;
use ember_hf::GenerationConfig;
use ember_nn::TransformerConfig;

use crate::model_dir::ModelError;

/// The weights file of a quantized directory.
pub const HOST_DECODER_FILE: &str = "host_decoder.safetensors";

/// Whether `dir` holds a quantized model.
pub fn is_quantized_dir(dir: &Path) -> bool {
    dir.join(HOST_DECODER_FILE).is_file()
}

/// A quantized model directory, opened.
pub struct QuantizedDir {
    pub dir: PathBuf,
    pub config: TransformerConfig,
    /// `int8` or `int4` (or `f32`).
    pub weights: String,
    pub tokenizer: Option<Tokenizer>,
    pub generation: GenerationConfig,
}

impl QuantizedDir {
    /// Reads the configuration from the weights file's header, and the tokenizer and
    /// generation defaults beside it.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(HOST_DECODER_FILE);
        let bad = |m: String| ModelError::NotAModel(format!("{}: {m}", path.display()));
        let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let config: TransformerConfig = serde_json::from_str(
            meta.get("config")
                .ok_or_else(|| bad("no `config` in the metadata".into()))?,
        )
        .map_err(|e| bad(format!("metadata `config`: {e}")))?;
        let weights = meta
            .get("weights")
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let has_tokenizer = dir.join("tokenizer.json").exists()
            || dir.join(ember_data::tokenizer::CHAR_VOCAB_FILE).exists();
        let tokenizer = if has_tokenizer {
            Some(Tokenizer::load(dir).map_err(|e| ModelError::NotAModel(e.to_string()))?)
        } else {
            None
        };
        let generation = GenerationConfig::read(dir)?.unwrap_or_default();
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
            generation,
        })
    }

    /// The weights file.
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(HOST_DECODER_FILE)
    }
}
