//! A fine-tune's checkpoint: the adapter and its optimizer state only, never the base.
//!
//! Written atomically under the same CRC manifest as training checkpoints
//! ([`ember_model::checkpoint::save`]):
//!
//! - `adapter_config.json`, `adapter_model.safetensors`: the adapter in `peft`'s format,
//!   loadable by `PeftModel.from_pretrained` and by `--adapter` (none for a full
//!   fine-tune, whose weights are all in `trainable.safetensors`);
//! - `trainable.safetensors`: every trainable tensor by Ember path, f32 (what a resume
//!   loads, bit for bit);
//! - `base.json`: the base model's [fingerprint](ember_model::base_fingerprint), so the
//!   adapter is never loaded onto other weights;
//! - `finetune.toml`, `train_state.json`, `optim-decay.bin`, `optim-no-decay.bin`;
//! - AdaLoRA: `adalora.json` and `adalora.safetensors`, the rank allocator's state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use ember_data::sft::RowSampler;
use ember_hf::HfArch;
use ember_hf::peft::{
    PromptAdapter, save_adalora_adapter, save_bottleneck_adapter, save_ia3_adapter,
    save_lora_adapter, save_prompt_adapter,
};
use ember_model::checkpoint::format::FileDigest;
use ember_model::checkpoint::format::error;
use ember_model::checkpoint::{CheckpointError, locate};
use ember_nn::{FusedBackend, replace_params_where, trainable_values};
use ember_optim::AdamWGroups;
use ember_peft::RankAllocator;
use serde::{Deserialize, Serialize};

use super::config::{FinetuneConfig, PeftMethod};
use super::method::Tuned;
use crate::checkpoint::{read_optimizer, write_optimizer};

/// The base a fine-tune's adapter belongs to (`base.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRecord {
    /// SHA-256 of the base weights (see [`ember_model::base_fingerprint`]).
    pub fingerprint: String,
    /// `--model` as given when the run started.
    pub model: String,
    /// Parameters of the base.
    pub params: usize,
}

/// Where a fine-tune stands (`train_state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneState {
    /// Optimizer steps completed.
    pub step: usize,
    pub sampler: RowSampler,
    /// Positions fed to the model (padding included).
    pub tokens_seen: u64,
    /// Targets the loss covered.
    pub trained_tokens_seen: u64,
    pub last_train_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    pub elapsed_s: f64,
    /// The `--data` file the rows were built from.
    pub data: FileDigest,
}

/// The files a fine-tune checkpoint keeps the trainable tensors in.
pub const TRAINABLE: &str = "trainable.safetensors";
/// The file naming the base model.
pub const BASE: &str = "base.json";
/// The configuration file.
pub const CONFIG: &str = "finetune.toml";

/// What [`save`] writes.
pub struct SaveParts<'a, B: AutodiffBackend + FusedBackend> {
    pub config: &'a FinetuneConfig,
    pub state: &'a FinetuneState,
    pub base: &'a BaseRecord,
    pub tuned: &'a Tuned<B>,
    pub optim: &'a AdamWGroups<Tuned<B>, B>,
    /// The Hugging Face family the `peft` files name modules by.
    pub arch: HfArch,
    /// AdaLoRA's rank allocator (its importance scores and rank pattern).
    pub allocator: Option<&'a RankAllocator>,
}

/// AdaLoRA's allocator state: `adalora.json` and its tensors in `adalora.safetensors`.
const ALLOCATOR_JSON: &str = "adalora.json";
const ALLOCATOR_TENSORS: &str = "adalora.safetensors";

fn write_allocator(dir: &Path, allocator: &RankAllocator) -> Result<(), CheckpointError> {
    let (state, tensors) = allocator.state();
    let json = dir.join(ALLOCATOR_JSON);
    std::fs::write(&json, serde_json::to_string(&state).expect("serialises"))
        .map_err(|e| error(&json, e))?;
    let path = dir.join(ALLOCATOR_TENSORS);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| error(&path, e))
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize_to_file(views, None, &path).map_err(|e| error(&path, e))
}

/// Writes a complete checkpoint to `dir` atomically.
pub fn save<B>(dir: &Path, parts: SaveParts<'_, B>) -> Result<(), CheckpointError>
where
    B: AutodiffBackend + FusedBackend,
    B::InnerBackend: FusedBackend,
{
    ember_model::checkpoint::save(dir, parts.state.step, |tmp| {
        let write = |file: &str, text: String| {
            let path = tmp.join(file);
            std::fs::write(&path, text).map_err(|e| error(&path, e))
        };
        write(CONFIG, parts.config.to_toml())?;
        write(
            BASE,
            serde_json::to_string_pretty(parts.base).expect("serialises"),
        )?;
        write(
            "train_state.json",
            serde_json::to_string_pretty(parts.state).expect("serialises"),
        )?;
        write_trainable(&tmp.join(TRAINABLE), parts.tuned)?;
        let pattern = parts.allocator.and_then(RankAllocator::rank_pattern);
        write_peft(tmp, parts.config, &parts.tuned.valid(), parts.arch, pattern)?;
        if let Some(allocator) = parts.allocator {
            write_allocator(tmp, allocator)?;
        }
        write_optimizer(tmp, parts.optim)
    })
}

/// The trainable tensors of `tuned`, by Ember path, as f32 safetensors.
fn write_trainable<B: AutodiffBackend>(
    path: &Path,
    tuned: &Tuned<B>,
) -> Result<(), CheckpointError> {
    let values: Vec<(String, Vec<usize>, Vec<u8>)> = trainable_values(tuned)
        .into_iter()
        .map(|(name, data)| {
            let shape = data.shape.to_vec();
            let data = data.convert::<f32>();
            (name, shape, data.as_bytes().to_vec())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = values
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| error(path, e))
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| error(path, e))
}

/// The adapter in `peft`'s format.
fn write_peft<B: FusedBackend>(
    dir: &Path,
    config: &FinetuneConfig,
    tuned: &Tuned<B>,
    arch: HfArch,
    rank_pattern: Option<&BTreeMap<String, Vec<bool>>>,
) -> Result<(), CheckpointError> {
    let p = &config.peft;
    let hf = |e: ember_hf::HfError| error(dir, e);
    let model_config = tuned.model.config();
    match p.method {
        // QLoRA's adapter is a LoRA one (peft keeps the base's quantization elsewhere).
        PeftMethod::Lora | PeftMethod::Dora | PeftMethod::Qlora => {
            save_lora_adapter(dir, &tuned.model, &config.lora(), arch).map_err(hf)
        }
        PeftMethod::Adalora => {
            let mut adalora = config.adalora();
            adalora.rank_pattern = rank_pattern.cloned();
            save_adalora_adapter(dir, &tuned.model, &adalora, arch).map_err(hf)
        }
        PeftMethod::Ia3 => save_ia3_adapter(dir, &tuned.model, arch).map_err(hf),
        PeftMethod::Prefix | PeftMethod::Prompt => {
            let adapter = match (&tuned.prefix, &tuned.prompt) {
                (Some(prefix), _) => PromptAdapter::Prefix(prefix.clone()),
                (_, Some(prompt)) => PromptAdapter::Prompt(prompt.clone()),
                _ => return Err(error(dir, "the prompt-learning tensors are missing")),
            };
            save_prompt_adapter(dir, &adapter, model_config).map_err(hf)
        }
        PeftMethod::Bottleneck => match &tuned.bottleneck {
            Some(adapters) => save_bottleneck_adapter(dir, adapters, model_config).map_err(hf),
            None => Err(error(dir, "the bottleneck adapters are missing")),
        },
        // No adapter: the weights themselves are `trainable.safetensors`.
        PeftMethod::Full => Ok(()),
    }
}

/// A fine-tune checkpoint, read and checked (no tensors yet).
#[derive(Debug, Clone)]
pub struct FinetuneCheckpoint {
    /// The directory read (`checkpoint/`, or the previous save it fell back to).
    pub dir: PathBuf,
    pub config: FinetuneConfig,
    pub state: FinetuneState,
    pub base: BaseRecord,
}

/// Whether `dir` (a checkpoint directory) is a fine-tune's.
pub fn is_finetune(dir: &Path) -> bool {
    dir.join(BASE).is_file() && dir.join(CONFIG).is_file()
}

impl FinetuneCheckpoint {
    /// Opens the checkpoint at `path` (a checkpoint or its run directory), its files'
    /// sizes and checksums verified.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let (dir, note) = locate(path)?;
        if let Some(note) = note {
            eprintln!("warning: {note}");
        }
        if !is_finetune(&dir) {
            return Err(error(
                &dir,
                "not a fine-tune checkpoint (no base.json and finetune.toml); `ember train` checkpoints resume with `ember train --resume`",
            ));
        }
        let read = |file: &str| {
            let path = dir.join(file);
            ember_data::files::read_regular_text(&path)
                .map(|text| (path.clone(), text))
                .map_err(|e| error(&path, e))
        };
        let (config_path, text) = read(CONFIG)?;
        let config = FinetuneConfig::from_toml(&text, &config_path.display().to_string())
            .map_err(|e| error(&config_path, e))?;
        let (state_path, text) = read("train_state.json")?;
        let state = serde_json::from_str(&text).map_err(|e| error(&state_path, e))?;
        let (base_path, text) = read(BASE)?;
        let base = serde_json::from_str(&text).map_err(|e| error(&base_path, e))?;
        Ok(Self {
            dir,
            config,
            state,
            base,
        })
    }

    /// Refuses a base whose fingerprint is not the one the adapter was trained on.
    pub fn check_base(&self, fingerprint: &str, flag: &str) -> Result<(), CheckpointError> {
        if fingerprint == self.base.fingerprint {
            return Ok(());
        }
        Err(error(
            &self.dir.join(BASE),
            format!(
                "this adapter was trained on other base weights ({}, fingerprint {}…); {flag} has fingerprint {}…",
                self.base.model,
                &self.base.fingerprint[..self.base.fingerprint.len().min(16)],
                &fingerprint[..fingerprint.len().min(16)]
            ),
        ))
    }

    /// `tuned` with the saved trainable tensors; every trainable tensor must be in the
    /// file with its shape, and nothing else.
    pub fn load_trainable<B: AutodiffBackend + FusedBackend>(
        &self,
        tuned: Tuned<B>,
    ) -> Result<Tuned<B>, CheckpointError> {
        let wanted: BTreeMap<String, Vec<usize>> = trainable_values(&tuned)
            .into_iter()
            .map(|(name, data)| (name, data.shape.to_vec()))
            .collect();
        self.replace_from_file(tuned, &wanted, |name| name.to_string())
    }

    /// A full fine-tune's weights in `model` (the base), which must have every one of
    /// them (`Err` for an adapter fine-tune).
    pub fn load_full_weights<B: FusedBackend>(
        &self,
        model: ember_nn::Transformer<B>,
    ) -> Result<ember_nn::Transformer<B>, CheckpointError> {
        if self.config.peft.method != PeftMethod::Full {
            return Err(error(&self.dir, "not a full fine-tune"));
        }
        let wanted: BTreeMap<String, Vec<usize>> = ember_nn::param_infos::<B, _>(&model)
            .into_iter()
            .map(|p| (format!("model.{}", p.path), p.shape))
            .collect();
        self.replace_from_file(model, &wanted, |name| format!("model.{name}"))
    }

    /// `module` with the tensors of `trainable.safetensors`; `wanted` lists each file
    /// name and shape, `file_name` maps a parameter path of `module` to its file name.
    fn replace_from_file<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(
        &self,
        module: M,
        wanted: &BTreeMap<String, Vec<usize>>,
        file_name: impl Fn(&str) -> String,
    ) -> Result<M, CheckpointError> {
        let path = self.dir.join(TRAINABLE);
        let bytes = std::fs::read(&path).map_err(|e| error(&path, e))?;
        let file = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| error(&path, format!("not a safetensors file: {e}")))?;
        if let Some(extra) = file.names().into_iter().find(|n| !wanted.contains_key(*n)) {
            return Err(error(
                &path,
                format!("`{extra}` is not a trainable tensor of this fine-tune"),
            ));
        }
        let only = |name: &str| wanted.contains_key(&file_name(name));
        replace_params_where(module, &only, &mut |name, shape| {
            let name = file_name(name);
            let view = file
                .tensor(&name)
                .map_err(|_| format!("`{name}` is missing"))?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape() != shape {
                return Err(format!(
                    "`{name}` is {:?} {:?}, expected F32 {shape:?}",
                    view.dtype(),
                    view.shape()
                ));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok(TensorData::new(values, shape.to_vec()))
        })
        .map_err(|message| error(&path, message))
    }

    /// Restores AdaLoRA's allocator from this checkpoint.
    pub fn load_allocator(&self, allocator: &mut RankAllocator) -> Result<(), CheckpointError> {
        let json = self.dir.join(ALLOCATOR_JSON);
        let text = ember_data::files::read_regular_text(&json).map_err(|e| error(&json, e))?;
        let state: serde_json::Value = serde_json::from_str(&text).map_err(|e| error(&json, e))?;
        let path = self.dir.join(ALLOCATOR_TENSORS);
        let bytes = std::fs::read(&path).map_err(|e| error(&path, e))?;
        let file = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| error(&path, format!("not a safetensors file: {e}")))?;
        let mut tensors = Vec::new();
        for (name, view) in file.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(error(&path, format!("`{name}` is not F32")));
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.push((name, view.shape().to_vec(), values));
        }
        allocator
            .load_state(&state, &tensors)
            .map_err(|e| error(&json, e))
    }

    /// The optimizer state saved beside the adapter.
    pub fn load_optimizer<B: AutodiffBackend + FusedBackend>(
        &self,
        optim: AdamWGroups<Tuned<B>, B>,
        device: &B::Device,
    ) -> Result<AdamWGroups<Tuned<B>, B>, CheckpointError> {
        read_optimizer(&self.dir, optim, device)
    }
}
