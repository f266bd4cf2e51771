//! Opening a Hugging Face model directory and loading its weights into a [`Transformer`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use ember_data::tokenizer::TOKENIZER_FILE;
use ember_data::{BpeTokenizer, Tokenizer};
use ember_nn::{FusedBackend, Transformer, replace_params};

use crate::config::{CONFIG_FILE, HfArch, HfConfig, read_config};
use crate::error::HfError;
use crate::generation::GenerationConfig;
use crate::names::{TensorEntry, is_ignorable, tensor_map};
use crate::safetensors_io::{INDEX_FILE, WEIGHTS_FILE, WeightFiles};

/// Whether `dir` looks like a Hugging Face model directory (a `config.json` or
/// safetensors weights), as opposed to an Ember checkpoint.
pub fn is_hf_dir(dir: &Path) -> bool {
    [CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE]
        .iter()
        .any(|f| dir.join(f).exists())
}

/// A Hugging Face model directory whose metadata, tokenizer and weight headers have been
/// read and checked (weights not loaded yet).
#[derive(Debug, Clone)]
pub struct HfModel {
    pub dir: PathBuf,
    pub config: HfConfig,
    /// `generation_config.json`, or defaults built from `config.json`'s token ids.
    pub generation: GenerationConfig,
    /// `tokenizer.json`, when present.
    pub tokenizer: Option<Tokenizer>,
    pub weights: WeightFiles,
}

impl HfModel {
    /// Reads `config.json`, `generation_config.json`, `tokenizer.json` and the safetensors
    /// headers (checking that each tensor lies inside its file), and checks that the
    /// tokenizer fits the vocabulary.
    pub fn open(dir: &Path) -> Result<Self, HfError> {
        if !dir.is_dir() {
            return Err(HfError::new(dir, "no such directory"));
        }
        let config = read_config(dir)?;
        let generation = GenerationConfig::read(dir)?.unwrap_or_else(|| GenerationConfig {
            bos_token_id: config.bos_token_id,
            eos_token_ids: config.eos_token_ids.clone(),
            ..Default::default()
        });
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        let tokenizer = if tokenizer_path.exists() {
            let tokenizer = BpeTokenizer::load(&tokenizer_path).map_err(|e| {
                HfError::new(&tokenizer_path, format!("cannot read tokenizer: {e}"))
            })?;
            if tokenizer.vocab_size() > config.model.vocab_size {
                return Err(HfError::new(
                    &tokenizer_path,
                    format!(
                        "the tokenizer has {} tokens but config.json's vocab_size is {}: its ids would fall outside the embedding",
                        tokenizer.vocab_size(),
                        config.model.vocab_size
                    ),
                ));
            }
            Some(Tokenizer::Bpe(Box::new(tokenizer)))
        } else {
            None
        };
        let weights = WeightFiles::open(dir)?;
        let model = Self {
            dir: dir.to_path_buf(),
            config,
            generation,
            tokenizer,
            weights,
        };
        Ok(model)
    }

    pub fn arch(&self) -> HfArch {
        self.config.arch
    }

    /// Old GPT-2 exports name tensors without the `transformer.` prefix.
    fn stored_name<'a>(&self, hf: &'a str) -> &'a str {
        if self.config.arch == HfArch::Gpt2
            && !self.weights.contains(hf)
            && let Some(short) = hf.strip_prefix("transformer.")
            && self.weights.contains(short)
        {
            return short;
        }
        hf
    }

    fn entries(&self) -> Vec<TensorEntry> {
        tensor_map(self.config.arch, &self.config.model)
    }

    /// Every parameter's tensor present with the shape config.json implies; nothing else.
    fn check_tensors(&self, shapes: &HashMap<String, Vec<usize>>) -> Result<(), HfError> {
        let mut used = HashSet::new();
        for entry in self.entries() {
            let name = self.stored_name(&entry.hf);
            let ember_shape = shapes.get(&entry.ember).ok_or_else(|| {
                HfError::new(
                    &self.dir,
                    format!("internal: Ember has no parameter `{}`", entry.ember),
                )
            })?;
            let expected = entry.hf_shape(ember_shape);
            let stored = self.weights.shape(name).ok_or_else(|| {
                HfError::new(
                    &self.weights.source,
                    format!(
                        "missing tensor `{name}` (a {} model with this config.json needs it)",
                        self.config.arch.model_type()
                    ),
                )
            })?;
            if stored != expected.as_slice() {
                return Err(HfError::new(
                    &self.weights.source,
                    format!(
                        "tensor `{name}` has shape {stored:?}, but config.json implies {expected:?}"
                    ),
                ));
            }
            used.insert(name.to_string());
        }
        let tied_head = |n: &str| self.config.model.tie_embeddings && n == "lm_head.weight";
        let unexpected: Vec<&str> = self
            .weights
            .names()
            .filter(|n| !used.contains(*n) && !is_ignorable(n) && !tied_head(n))
            .collect();
        if !unexpected.is_empty() {
            return Err(HfError::new(
                &self.weights.source,
                format!(
                    "unexpected tensors {unexpected:?}: not part of a {} model with this config.json",
                    self.config.arch.model_type()
                ),
            ));
        }
        Ok(())
    }

    /// Before anything is allocated: a `config.json` that implies far more parameters than
    /// the weight files hold (an absurd `vocab_size` or `intermediate_size`) is refused, naming
    /// the key that sizes the largest part.
    fn check_size_on_disk(&self) -> Result<(), HfError> {
        let stored: f64 = self
            .weights
            .names()
            .filter(|n| !is_ignorable(n))
            .filter_map(|n| self.weights.shape(n))
            .map(|shape| shape.iter().map(|&d| d as f64).product::<f64>())
            .sum();
        let parts = self.config.model.param_parts();
        let implied: f64 = parts.iter().map(|(_, n)| n).sum();
        // Small differences are left to the tensor-by-tensor check after the model is built
        // (its messages name the tensor); this one stops what would be a large allocation.
        if implied <= 2.0 * stored + SMALL_MODEL_PARAMS {
            return Ok(());
        }
        let (key, largest) = parts
            .iter()
            .copied()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or(("d_model", implied));
        let hf_key = self.config.arch.family().config_key(key).unwrap_or(key);
        Err(HfError::new(
            &self.dir.join(CONFIG_FILE),
            format!(
                "{hf_key}: config.json implies {implied:.0} parameters ({largest:.0} of them sized by {hf_key}), but the weights in {} hold only {stored:.0}",
                self.weights.source.display()
            ),
        ))
    }

    /// The model with this directory's weights (converted to f32). Every tensor is checked
    /// (present, right shape, nothing unknown) before any is read; each parameter's
    /// initial value is released before its replacement is built, so memory peaks near
    /// the size of the f32 model.
    pub fn load_model<B: FusedBackend>(
        &self,
        device: &B::Device,
    ) -> Result<Transformer<B>, HfError> {
        self.check_size_on_disk()?;
        let model = Transformer::<B>::new(&self.config.model, device)
            .map_err(|e| HfError::new(&self.dir.join(CONFIG_FILE), e))?;
        let shapes = ember_nn::param_infos(&model)
            .into_iter()
            .map(|p| (p.path, p.shape))
            .collect();
        self.check_tensors(&shapes)?;
        let entries: HashMap<String, TensorEntry> = self
            .entries()
            .into_iter()
            .map(|e| (e.ember.clone(), e))
            .collect();
        let mut failure = None;
        let loaded = replace_params(model, &mut |path, shape| {
            let result = entries
                .get(path)
                .ok_or_else(|| {
                    HfError::new(
                        &self.dir,
                        format!("internal: no tensor for parameter `{path}`"),
                    )
                })
                .and_then(|entry| self.read_entry(entry, shape));
            result.map_err(|e| {
                let message = e.to_string();
                failure = Some(e);
                message
            })
        });
        match (loaded, failure) {
            (Ok(model), _) => Ok(model),
            (Err(_), Some(e)) => Err(e),
            (Err(message), None) => Err(HfError::new(&self.weights.source, message)),
        }
    }

    /// One Ember parameter of `shape`, from its Hugging Face tensor.
    fn read_entry(&self, entry: &TensorEntry, shape: &[usize]) -> Result<TensorData, HfError> {
        let name = self.stored_name(&entry.hf);
        let values = self.weights.read(name, entry.transpose)?;
        let values = match entry.part {
            None => values,
            Some((index, _)) => {
                let width = *shape.last().unwrap_or(&1);
                let full = entry.hf_shape(shape).last().copied().unwrap_or(1);
                values
                    .chunks_exact(full)
                    .flat_map(|row| row[index * width..(index + 1) * width].iter().copied())
                    .collect()
            }
        };
        Ok(TensorData::new(values, shape.to_vec()))
    }
}

/// Parameters a model may be built with before its tensors are checked one by one.
const SMALL_MODEL_PARAMS: f64 = (1 << 24) as f64;
