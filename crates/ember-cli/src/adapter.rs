//! `--adapter DIR`: a `peft` adapter directory, or an `ember finetune` run (whose base
//! fingerprint must match the loaded model's), applied to the model a command loaded.
//!
//! Projection adapters (LoRA, rsLoRA, DoRA, IA³) are merged into the weights, so the
//! model runs as fast as the base (the host decoder included). Prefix- and prompt-tuning
//! adapters stay beside the model and run through [`PromptAdapter::forward`].

use std::path::Path;

use ember_hf::peft::{self, PromptAdapter};
use ember_hf::{HfError, export_arch};
use ember_model::ModelDir;
use ember_nn::{FusedBackend, Transformer};
use ember_peft::BottleneckAdapters;
use ember_train::finetune::{FinetuneCheckpoint, PeftMethod};

use crate::error::CliError;

/// The model with the adapter applied, and the adapter itself when it is prompt learning
/// or bottleneck adapters (which run beside the weights, not in them).
pub struct Adapted<B: FusedBackend> {
    pub model: Transformer<B>,
    pub prompt: Option<PromptAdapter<B>>,
    pub bottleneck: Option<BottleneckAdapters<B>>,
}

impl<B: FusedBackend> Adapted<B> {
    /// Refuses bottleneck adapters for a command (`what`) that cannot run them.
    pub fn without_bottleneck(self, what: &str) -> Result<Self, CliError> {
        if self.bottleneck.is_some() {
            return Err(CliError::Usage(format!(
                "--adapter: bottleneck adapters run beside the weights and cannot be merged; {what} does not take them yet (`ember logits` does)"
            )));
        }
        Ok(self)
    }
}

fn usage(e: HfError) -> CliError {
    CliError::Usage(format!("--adapter {e}"))
}

/// Applies the adapter in `adapter` (if any) to `model`, loaded from `dir`.
pub fn apply<B: FusedBackend>(
    dir: &ModelDir,
    mut model: Transformer<B>,
    adapter: Option<&Path>,
    device: &B::Device,
) -> Result<Adapted<B>, CliError> {
    let Some(path) = adapter else {
        return Ok(Adapted {
            model,
            prompt: None,
            bottleneck: None,
        });
    };
    // An `ember finetune` run (or its checkpoint): the adapter inside it, once the base
    // is known to be the one it was trained on.
    let finetuned = ember_model::checkpoint::is_checkpoint(path)
        .then(|| FinetuneCheckpoint::open(path))
        .transpose()
        .map_err(|e| CliError::Usage(format!("--adapter {e}")))?;
    let resolved;
    let path = match &finetuned {
        Some(ckpt) => {
            ckpt.check_base(&ember_model::base_fingerprint(&model), "--model")
                .map_err(|e| CliError::Usage(format!("--adapter {e}")))?;
            if ckpt.config.peft.method == PeftMethod::Full {
                // A full fine-tune: its weights replace the base's.
                let model = ckpt
                    .load_full_weights(model)
                    .map_err(|e| CliError::Runtime(format!("--adapter {e}")))?;
                return Ok(Adapted {
                    model,
                    prompt: None,
                    bottleneck: None,
                });
            }
            resolved = ckpt.dir.clone();
            resolved.as_path()
        }
        None => path,
    };
    if !path.join(peft::ADAPTER_CONFIG).is_file() {
        return Err(CliError::Usage(format!(
            "--adapter {}: no {} (not a peft adapter directory)",
            path.display(),
            peft::ADAPTER_CONFIG
        )));
    }
    if matches!(
        peft::peft_type(path).map_err(usage)?.as_str(),
        "PREFIX_TUNING" | "PROMPT_TUNING"
    ) {
        let prompt = peft::load_prompt_adapter::<B>(path, dir.config(), device).map_err(usage)?;
        return Ok(Adapted {
            model,
            prompt: Some(prompt),
            bottleneck: None,
        });
    }
    if peft::peft_type(path).map_err(usage)? == peft::BOTTLENECK_TYPE {
        let adapters =
            peft::load_bottleneck_adapter::<B>(path, dir.config(), device).map_err(usage)?;
        return Ok(Adapted {
            model,
            prompt: None,
            bottleneck: Some(adapters),
        });
    }
    let arch = match dir {
        ModelDir::Hf(hf) => hf.arch(),
        ModelDir::Quantized(q) => {
            return Err(CliError::Usage(format!(
                "--adapter: {} holds quantized weights; apply the adapter when quantizing (`ember quantize --adapter`)",
                q.dir.display()
            )));
        }
        ModelDir::Ember(_) => export_arch(dir.config())
            .map_err(|e| CliError::Usage(format!("--adapter {}: {e}", path.display())))?,
    };
    let (adapted, _) = peft::load_adapter(path, model, arch, device).map_err(usage)?;
    model = adapted;
    for (_, projection) in model.projections_mut() {
        *projection = ember_peft::merged(projection);
    }
    Ok(Adapted {
        model,
        prompt: None,
        bottleneck: None,
    })
}
