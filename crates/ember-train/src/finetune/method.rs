//! The model a fine-tune trains: the frozen base with the method's trainable tensors
//! (adapters in its projections, or prefixes / a soft prompt beside it).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_data::SplitMix64;
use ember_nn::{ForwardOptions, FusedBackend, Transformer, assign_stable_ids, freeze_matching};
use ember_ops::MaskMod;
use ember_peft::{
    BottleneckAdapters, BottleneckConfig, Ia3Config, PeftReport, PrefixTuning, PromptTuning,
    QloraConfig, apply_adalora, apply_ia3, apply_lora, apply_qlora,
};

use super::config::{FinetuneConfig, PeftMethod, PromptInit, targets_of};
use crate::config::ConfigError;

/// A base model with one method's trainable tensors; only those require gradients.
#[derive(Module, Debug)]
pub struct Tuned<B: Backend> {
    /// The base, its projections carrying LoRA / DoRA / IA3 adapters when the method has
    /// them.
    pub model: Transformer<B>,
    /// Prefix tuning's per-layer keys and values.
    pub prefix: Option<PrefixTuning<B>>,
    /// Prompt tuning's soft prompt.
    pub prompt: Option<PromptTuning<B>>,
    /// Bottleneck adapters, applied through the model's forward hooks.
    pub bottleneck: Option<BottleneckAdapters<B>>,
}

impl<B: FusedBackend> Tuned<B> {
    /// Logits of the real tokens, `[batch, seq, vocab]`, for `tokens` `[batch, seq]`;
    /// `documents` keeps packed examples apart (projection methods only: prompt-learning
    /// rows hold one example).
    /// `checkpoints` (activation checkpointing) applies to projection methods.
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        documents: Option<&MaskMod>,
        checkpoints: Option<&mut ember_nn::BlockCheckpoints<B>>,
    ) -> Tensor<B, 3> {
        if let Some(prefix) = &self.prefix {
            return prefix.forward(&self.model, tokens);
        }
        if let Some(prompt) = &self.prompt {
            return prompt.forward(&self.model, tokens);
        }
        let mut hooks = self.bottleneck.as_ref().map(BottleneckAdapters::hooks);
        self.model.forward(
            tokens,
            ForwardOptions {
                documents,
                hooks: hooks
                    .as_mut()
                    .map(|h| h as &mut dyn ember_nn::ForwardHooks<B>),
                checkpoints,
                ..Default::default()
            },
        )
    }
}

/// Attaches `config`'s method to `model` (freezing the base) and reports what trains, as
/// `peft`'s `print_trainable_parameters` counts it. `tokenize` gives prompt tuning's
/// `prompt_init_text` its tokens. Errors name the `peft.` key at fault.
pub fn attach<B: FusedBackend>(
    model: Transformer<B>,
    config: &FinetuneConfig,
    tokenize: &dyn Fn(&str) -> Result<Vec<u32>, String>,
    device: &B::Device,
) -> Result<(Tuned<B>, PeftReport), ConfigError> {
    let p = &config.peft;
    let peft_error = |e: ember_peft::PeftError| ConfigError(e.0);
    // Adapter tensors are drawn from the backend's generator: seeded, so a resumed run
    // rebuilds the same structure (its values then come from the checkpoint).
    B::seed(device, config.train.seed ^ 0xada7_7e55);
    let mut bottleneck = None;
    let (model, prefix, prompt, report) = match p.method {
        PeftMethod::Lora | PeftMethod::Dora => {
            let (model, report) = apply_lora(model, &config.lora(), device).map_err(peft_error)?;
            (model, None, None, report)
        }
        PeftMethod::Qlora => {
            let qlora = QloraConfig {
                lora: config.lora(),
                format: p.quant_format,
                block_size: p.quant_block_size,
            };
            let (model, report) = apply_qlora(model, &qlora, device).map_err(peft_error)?;
            (model, None, None, report)
        }
        PeftMethod::Adalora => {
            let adalora = config.adalora();
            adalora.validate_schedule().map_err(peft_error)?;
            let (model, report) = apply_adalora(model, &adalora, device).map_err(peft_error)?;
            (model, None, None, report)
        }
        PeftMethod::Ia3 => {
            let ia3 = Ia3Config {
                targets: config.targets(),
                feedforward: targets_of(&p.feedforward_modules),
            };
            let (model, report) = apply_ia3(model, &ia3, device).map_err(peft_error)?;
            (model, None, None, report)
        }
        PeftMethod::Prefix => {
            let prefix = PrefixTuning::new(model.config(), p.num_virtual_tokens, device);
            let trainable = prefix.embeddings.shape().num_elements();
            let (model, total) = frozen(model);
            let report = PeftReport {
                adapted: Vec::new(),
                trainable,
                total: total + trainable,
            };
            (model, Some(prefix), None, report)
        }
        PeftMethod::Bottleneck => {
            let settings = BottleneckConfig {
                placement: p.placement,
                reduction_factor: p.reduction_factor,
                non_linearity: p.non_linearity,
            };
            let adapters =
                BottleneckAdapters::new(model.config(), &settings, device).map_err(peft_error)?;
            let trainable = adapters.num_params();
            let (model, total) = frozen(model);
            bottleneck = Some(adapters);
            let report = PeftReport {
                adapted: Vec::new(),
                trainable,
                total: total + trainable,
            };
            (model, None, None, report)
        }
        PeftMethod::Full => {
            let total = ember_nn::param_infos::<B, _>(&model)
                .iter()
                .map(|p| p.shape.iter().product::<usize>())
                .sum();
            let report = PeftReport {
                adapted: Vec::new(),
                trainable: total,
                total,
            };
            (model, None, None, report)
        }
        PeftMethod::Prompt => {
            let prompt = soft_prompt(&model, config, tokenize, device)?;
            let trainable = prompt.embeddings.shape().num_elements();
            let (model, total) = frozen(model);
            let report = PeftReport {
                adapted: Vec::new(),
                trainable,
                total: total + trainable,
            };
            (model, None, Some(prompt), report)
        }
    };
    // Ids from paths: optimizer state saved under them finds its tensors after a restart.
    let tuned = assign_stable_ids(Tuned {
        model,
        prefix,
        prompt,
        bottleneck,
    });
    Ok((tuned, report))
}

/// `model` with every parameter frozen, and its parameter count.
fn frozen<B: FusedBackend>(model: Transformer<B>) -> (Transformer<B>, usize) {
    let infos = ember_nn::param_infos::<B, _>(&model);
    let total = infos
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum();
    let paths: Vec<&str> = infos.iter().map(|p| p.path.as_str()).collect();
    (freeze_matching(model, &paths).0, total)
}

/// Prompt tuning's starting soft prompt, per `peft.prompt_init`.
fn soft_prompt<B: FusedBackend>(
    model: &Transformer<B>,
    config: &FinetuneConfig,
    tokenize: &dyn Fn(&str) -> Result<Vec<u32>, String>,
    device: &B::Device,
) -> Result<PromptTuning<B>, ConfigError> {
    let p = &config.peft;
    let n = p.num_virtual_tokens;
    let vocab = model.config().vocab_size;
    let ids: Vec<u32> = match p.prompt_init {
        PromptInit::Random => return Ok(PromptTuning::new(model.config(), n, device)),
        PromptInit::Vocab => {
            let mut rng = SplitMix64::new(config.train.seed ^ 0x50f7_9c0d);
            (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
        }
        PromptInit::Text => {
            let ids = tokenize(&p.prompt_init_text)
                .map_err(|e| ConfigError(format!("peft.prompt_init_text: {e}")))?;
            if ids.is_empty() {
                return Err(ConfigError(
                    "peft.prompt_init_text: encodes to no tokens".into(),
                ));
            }
            // peft repeats the text's tokens to fill the prompt, then cuts it.
            ids.iter().copied().cycle().take(n).collect()
        }
    };
    let ids = Tensor::<B, 1, Int>::from_data(
        TensorData::new(ids.iter().map(|&i| i64::from(i)).collect(), [n]),
        device,
    );
    // Word embeddings only, as peft takes them (positions are added in the forward pass).
    let rows = model
        .tok_embeddings
        .forward(ids.unsqueeze::<2>())
        .squeeze_dim::<2>(0)
        .detach();
    PromptTuning::from_embeddings(model.config(), rows)
        .map(|mut prompt| {
            prompt.embeddings = Param::from_tensor(prompt.embeddings.val().require_grad());
            prompt
        })
        .map_err(|e| ConfigError(e.0))
}
