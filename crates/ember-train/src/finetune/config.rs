//! A fine-tune's configuration: the base preset, a method preset (`--method`), a TOML file
//! (`--config`), a `peft` `adapter_config.json` (`--adapter-config`) and `--set
//! section.key=value` overrides, merged in that order with every key checked.

use std::path::Path;

use ember_peft::{LoraBias, LoraInit, Targets};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, OptimConfig, apply_override, merge};

/// Everything a fine-tuning run is made from (the base model and data come from flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    pub peft: PeftSettings,
    pub data: SftDataConfig,
    pub optim: OptimConfig,
    pub train: FinetuneLoop,
}

/// The parameter-efficient method and its settings; names follow `peft`'s configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeftSettings {
    pub method: PeftMethod,
    /// Module names, `["all-linear"]`, or one glob over Ember's projection paths.
    pub target_modules: Vec<String>,
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub use_rslora: bool,
    pub init: LoraInit,
    pub bias: LoraBias,
    /// IA3: the targets scaled on their input side.
    pub feedforward_modules: Vec<String>,
    /// Prefix and prompt tuning.
    pub num_virtual_tokens: usize,
    pub prompt_init: PromptInit,
    pub prompt_init_text: String,
    /// QLoRA: the base's storage (`nf4` or `int8`) and its block size.
    pub quant_format: ember_peft::QuantFormat,
    pub quant_block_size: usize,
    /// AdaLoRA: ranks `init_r` → `target_r`, the schedule's `tinit`, `tfinal` and
    /// `delta_t`, the importance smoothing `beta1`/`beta2`, the penalty's weight.
    pub init_r: usize,
    pub target_r: usize,
    pub tinit: usize,
    pub tfinal: usize,
    pub delta_t: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub orth_reg_weight: f64,
    /// Bottleneck adapters: where they go, their width and non-linearity.
    pub placement: ember_peft::Placement,
    pub reduction_factor: usize,
    pub non_linearity: ember_peft::NonLinearity,
}

/// The methods `peft.method` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeftMethod {
    Lora,
    Dora,
    /// LoRA on a base held in NF4 or int8.
    Qlora,
    /// AdaLoRA (`P Λ Q` adapters pruned to a rank budget during training).
    Adalora,
    Ia3,
    Prefix,
    Prompt,
    /// Bottleneck adapters (Houlsby or Pfeiffer) on the sub-layer outputs.
    Bottleneck,
    /// No adapter: every weight trains (a full fine-tune).
    Full,
}

impl PeftMethod {
    /// Every value `peft.method` (and `--method`) accepts.
    pub const NAMES: &'static [&'static str] = &[
        "lora",
        "dora",
        "qlora",
        "adalora",
        "ia3",
        "prefix",
        "prompt",
        "bottleneck",
        "full",
    ];

    /// Whether the method puts vectors before the sequence instead of into projections.
    pub fn is_prompt_learning(self) -> bool {
        matches!(self, PeftMethod::Prefix | PeftMethod::Prompt)
    }
}

/// How prompt tuning's soft prompt starts (`peft`'s `prompt_tuning_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptInit {
    /// Standard normal (`RANDOM`).
    Random,
    /// Embeddings of tokens drawn uniformly from the vocabulary (`SAMPLE_VOCAB`).
    Vocab,
    /// Embeddings of `prompt_init_text`'s tokens, repeated to fill (`TEXT`).
    Text,
}

/// How examples become training rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftDataConfig {
    /// Positions per row; 0 = the model's `max_seq_len`, at most 1024.
    pub seq_len: usize,
    /// Pack short examples into full rows, a document mask keeping them apart.
    pub pack: bool,
    /// Cut examples longer than a row (counted); `false` makes them an error.
    pub truncate: bool,
    /// Share of the examples held out for the validation loss; 0 = none.
    pub val_fraction: f64,
    /// Shuffle examples before the split and rows every epoch (by `train.seed`);
    /// `false` keeps the file's order.
    pub shuffle: bool,
}

/// The loop's settings (as `ember train`'s `[train]`, without the pretraining keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneLoop {
    pub steps: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Validation loss every this many steps (and at the end); 0 = never.
    pub eval_every: usize,
    pub log_every: usize,
    /// A checkpoint every this many steps (and always at the end); 0 = only at the end.
    pub checkpoint_every: usize,
    pub seed: u64,
    pub matmul_precision: ember_ops::fused::MatmulPrecision,
    /// As `ember train`'s `train.batch_shards` (0: one per core on CPU backends without
    /// dropout).
    pub batch_shards: usize,
    /// As `ember train`'s `train.activation_checkpointing` (adapter methods on the
    /// projections, and `full`; not prefix, prompt or bottleneck tuning).
    #[serde(default)]
    pub activation_checkpointing: ember_nn::ActivationCheckpointing,
}

const BASE: &str = include_str!("../../presets/finetune/base.toml");

/// The method presets, embedded in the binary: `--method NAME`.
pub const METHOD_PRESETS: &[(&str, &str)] = &[
    ("lora", include_str!("../../presets/finetune/lora.toml")),
    ("dora", include_str!("../../presets/finetune/dora.toml")),
    ("qlora", include_str!("../../presets/finetune/qlora.toml")),
    (
        "adalora",
        include_str!("../../presets/finetune/adalora.toml"),
    ),
    ("ia3", include_str!("../../presets/finetune/ia3.toml")),
    ("prefix", include_str!("../../presets/finetune/prefix.toml")),
    ("prompt", include_str!("../../presets/finetune/prompt.toml")),
    (
        "bottleneck",
        include_str!("../../presets/finetune/bottleneck.toml"),
    ),
    ("full", include_str!("../../presets/finetune/full.toml")),
];

/// Where a fine-tune's settings come from, in the order they are merged.
#[derive(Debug, Clone, Default)]
pub struct FinetuneSources<'a> {
    /// `--method`: a method preset (default `lora`).
    pub method: Option<&'a str>,
    /// `--config`: a TOML file with any of the sections.
    pub file: Option<&'a Path>,
    /// `--adapter-config`: a `peft` `adapter_config.json` giving the `[peft]` section.
    pub adapter_config: Option<&'a Path>,
    /// `--set section.key=value`.
    pub overrides: &'a [String],
    /// A resumed run's saved configuration: the starting point instead of the presets
    /// (`method` must then be `None`).
    pub saved: Option<&'a FinetuneConfig>,
}

impl FinetuneConfig {
    /// The configuration `sources` describe; unknown keys and bad values are errors
    /// naming the file, flag or key.
    pub fn resolve(sources: &FinetuneSources<'_>) -> Result<Self, ConfigError> {
        if let Some(saved) = sources.saved {
            if let Some(method) = sources.method {
                return Err(ConfigError(format!(
                    "--method {method}: a resumed fine-tune keeps its method; leave --method out"
                )));
            }
            let table = match toml::Value::try_from(saved) {
                Ok(toml::Value::Table(table)) => table,
                _ => unreachable!("a struct serialises to a table"),
            };
            let adapter_peft = sources
                .adapter_config
                .map(super::adapter_config::peft_table)
                .transpose()?;
            return Self::resolve_from(
                table,
                "the checkpoint's finetune.toml",
                sources,
                adapter_peft,
            );
        }
        let mut table: toml::Table = toml::from_str(BASE).expect("the embedded base preset");
        // An adapter config's method picks its preset when --method does not.
        let adapter_peft = sources
            .adapter_config
            .map(super::adapter_config::peft_table)
            .transpose()?;
        let from_adapter = adapter_peft
            .as_ref()
            .and_then(|t| t.get("method"))
            .and_then(|m| m.as_str())
            .map(str::to_string);
        let method = sources.method.or(from_adapter.as_deref()).unwrap_or("lora");
        let (_, preset) = METHOD_PRESETS
            .iter()
            .find(|(name, _)| *name == method)
            .ok_or_else(|| {
                ConfigError(format!(
                    "--method {method}: unknown method (known: {})",
                    PeftMethod::NAMES.join(", ")
                ))
            })?;
        let preset: toml::Table = toml::from_str(preset).expect("embedded method presets");
        merge(&mut table, preset, "", &format!("--method {method}"))?;
        Self::resolve_from(table, &format!("--method {method}"), sources, adapter_peft)
    }

    /// `table` with the file, adapter config and overrides of `sources` merged over it.
    fn resolve_from(
        mut table: toml::Table,
        origin: &str,
        sources: &FinetuneSources<'_>,
        adapter_peft: Option<toml::Table>,
    ) -> Result<Self, ConfigError> {
        let mut origin = origin.to_string();
        if let Some(path) = sources.file {
            let text = ember_data::files::read_regular_text(path)
                .map_err(|e| ConfigError(format!("--config {}: {e}", path.display())))?;
            let file: toml::Table = toml::from_str(&text).map_err(|e| {
                ConfigError(format!(
                    "--config {}: malformed TOML: {}",
                    path.display(),
                    e.message()
                ))
            })?;
            merge(&mut table, file, "", &path.display().to_string())?;
            origin = path.display().to_string();
        }
        if let (Some(path), Some(peft)) = (sources.adapter_config, adapter_peft) {
            let mut wrapped = toml::Table::new();
            wrapped.insert("peft".into(), toml::Value::Table(peft));
            merge(&mut table, wrapped, "", &path.display().to_string())?;
            origin = path.display().to_string();
        }
        for item in sources.overrides {
            apply_override(&mut table, item)?;
        }
        Self::from_table(table, &origin)
    }

    /// Reads a configuration written by [`Self::to_toml`] (a checkpoint's).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError(format!("{origin}: malformed TOML: {}", e.message())))?;
        Self::from_table(table, origin)
    }

    fn from_table(table: toml::Table, origin: &str) -> Result<Self, ConfigError> {
        // serde's message for a bad enum value does not name the key.
        for (section, key, expected) in [
            (
                "peft",
                "method",
                "\"lora\", \"dora\", \"ia3\", \"prefix\" or \"prompt\"",
            ),
            ("peft", "init", "\"kaiming\" or \"gaussian\""),
            ("peft", "bias", "\"none\", \"all\" or \"lora_only\""),
            ("peft", "prompt_init", "\"random\", \"vocab\" or \"text\""),
            ("train", "matmul_precision", "\"f32\" or \"bf16\""),
            (
                "train",
                "activation_checkpointing",
                ember_nn::ActivationCheckpointing::EXPECTED,
            ),
            ("optim", "schedule", ember_optim::ScheduleKind::EXPECTED),
            ("optim", "clip", ember_optim::ClipKind::EXPECTED),
        ] {
            if let Some(value) = table.get(section).and_then(|t| t.get(key)) {
                let valid = match (section, key) {
                    ("peft", "method") => value.clone().try_into::<PeftMethod>().is_ok(),
                    ("peft", "init") => value.clone().try_into::<LoraInit>().is_ok(),
                    ("peft", "bias") => value.clone().try_into::<LoraBias>().is_ok(),
                    ("peft", "prompt_init") => value.clone().try_into::<PromptInit>().is_ok(),
                    ("peft", "quant_format") => {
                        value.clone().try_into::<ember_peft::QuantFormat>().is_ok()
                    }
                    ("peft", "placement") => {
                        value.clone().try_into::<ember_peft::Placement>().is_ok()
                    }
                    ("peft", "non_linearity") => {
                        value.clone().try_into::<ember_peft::NonLinearity>().is_ok()
                    }
                    ("train", "activation_checkpointing") => value
                        .as_str()
                        .is_some_and(|v| v.parse::<ember_nn::ActivationCheckpointing>().is_ok()),
                    ("train", _) => value
                        .as_str()
                        .is_some_and(|v| v.parse::<ember_ops::fused::MatmulPrecision>().is_ok()),
                    ("optim", "clip") => value.clone().try_into::<ember_optim::ClipKind>().is_ok(),
                    _ => value
                        .clone()
                        .try_into::<ember_optim::ScheduleKind>()
                        .is_ok(),
                };
                if !valid {
                    return Err(ConfigError(format!(
                        "{origin}: {section}.{key} = {value}: expected {expected}"
                    )));
                }
            }
        }
        let config: FinetuneConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("{origin}: {}", e.message())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values serde's types cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, msg: String| Err(ConfigError(format!("{key}: {msg}")));
        let p = &self.peft;
        if p.target_modules.is_empty()
            && matches!(
                p.method,
                PeftMethod::Lora
                    | PeftMethod::Dora
                    | PeftMethod::Qlora
                    | PeftMethod::Adalora
                    | PeftMethod::Ia3
            )
        {
            return fail("peft.target_modules", "names no module".into());
        }
        if p.bias != LoraBias::None
            && matches!(
                p.method,
                PeftMethod::Lora | PeftMethod::Dora | PeftMethod::Qlora
            )
        {
            return fail(
                "peft.bias",
                "biases that train are not yet written to the adapter's peft files; use \"none\""
                    .into(),
            );
        }
        if p.method.is_prompt_learning() {
            if p.num_virtual_tokens == 0 || p.num_virtual_tokens > 4096 {
                return fail(
                    "peft.num_virtual_tokens",
                    format!("expected 1 to 4096, got {}", p.num_virtual_tokens),
                );
            }
            if self.data.pack {
                return fail(
                    "data.pack",
                    format!(
                        "prefix and prompt tuning put their virtual tokens before each row, so rows cannot hold several examples; set data.pack = false (peft.method = \"{}\")",
                        format!("{:?}", p.method).to_lowercase()
                    ),
                );
            }
            if p.method == PeftMethod::Prompt
                && p.prompt_init == PromptInit::Text
                && p.prompt_init_text.trim().is_empty()
            {
                return fail(
                    "peft.prompt_init_text",
                    "is empty; prompt_init = \"text\" starts the soft prompt from this text's tokens".into(),
                );
            }
        }
        self.optim.validate()?;
        self.optim.schedule(self.train.steps)?;
        if self.optim.clip == ember_optim::ClipKind::Agc {
            return fail(
                "optim.clip",
                "\"agc\" scales each unit's gradient by its weight norm, which stalls adapters whose matrices start at zero (LoRA's B); use \"norm\" or \"value\" for fine-tuning".into(),
            );
        }
        if self.optim.clip == ember_optim::ClipKind::Agc {
            return fail(
                "optim.clip",
                "\"agc\" scales each unit's gradient by its weight norm, which stalls adapters whose matrices start at zero (LoRA's B); use \"norm\" or \"value\" for fine-tuning".into(),
            );
        }
        let t = &self.train;
        for (key, v, max) in [
            ("train.batch_size", t.batch_size, 1 << 20),
            ("train.grad_accum", t.grad_accum, 1 << 20),
            ("train.batch_shards", t.batch_shards, 1 << 10),
            ("data.seq_len", self.data.seq_len, 1 << 24),
        ] {
            if v > max {
                return fail(
                    key,
                    format!("{v} is beyond what Ember supports (at most {max})"),
                );
            }
        }
        for (key, v) in [
            ("train.batch_size", t.batch_size),
            ("train.grad_accum", t.grad_accum),
        ] {
            if v == 0 {
                return fail(key, "must be at least 1".into());
            }
        }
        if t.batch_shards > t.batch_size {
            return fail(
                "train.batch_shards",
                format!(
                    "{} shards cannot split train.batch_size = {} rows (0 picks one per core)",
                    t.batch_shards, t.batch_size
                ),
            );
        }
        let checkpointing = t.activation_checkpointing;
        if checkpointing != ember_nn::ActivationCheckpointing::None
            && matches!(
                self.peft.method,
                PeftMethod::Prefix | PeftMethod::Prompt | PeftMethod::Bottleneck
            )
        {
            return fail(
                "train.activation_checkpointing",
                format!(
                    "\"{checkpointing}\" is for methods on the projections (lora, dora, qlora, adalora, ia3, full), not peft.method = {:?}",
                    format!("{:?}", self.peft.method).to_lowercase()
                ),
            );
        }
        if checkpointing.recomputes_block(0) && self.peft.lora_dropout > 0.0 && t.batch_shards > 1 {
            return fail(
                "train.activation_checkpointing",
                format!(
                    "\"{checkpointing}\" with peft.lora_dropout > 0 needs train.batch_shards = 1: shards share one random generator, so a block run again would draw other dropout masks"
                ),
            );
        }
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return fail(
                "data.val_fraction",
                format!("must be in [0, 1), got {}", self.data.val_fraction),
            );
        }
        Ok(())
    }

    /// The LoRA settings (`lora`, `dora` and `qlora`).
    pub fn lora(&self) -> ember_peft::LoraConfig {
        let p = &self.peft;
        ember_peft::LoraConfig {
            r: p.r,
            alpha: p.lora_alpha,
            dropout: p.lora_dropout,
            use_rslora: p.use_rslora,
            use_dora: p.method == PeftMethod::Dora,
            init: p.init,
            bias: p.bias,
            targets: self.targets(),
        }
    }

    /// The AdaLoRA settings (`total_step` is `train.steps`).
    pub fn adalora(&self) -> ember_peft::AdaLoraConfig {
        let p = &self.peft;
        ember_peft::AdaLoraConfig {
            init_r: p.init_r,
            target_r: p.target_r,
            tinit: p.tinit,
            tfinal: p.tfinal,
            delta_t: p.delta_t,
            beta1: p.beta1,
            beta2: p.beta2,
            orth_reg_weight: p.orth_reg_weight,
            total_step: Some(self.train.steps),
            lora_alpha: p.lora_alpha,
            lora_dropout: p.lora_dropout,
            targets: self.targets(),
            rank_pattern: None,
        }
    }

    /// `peft.target_modules` as [`Targets`].
    pub fn targets(&self) -> Targets {
        targets_of(&self.peft.target_modules)
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a config serialises")
    }
}

/// A `target_modules` list as [`Targets`]: `["all-linear"]`, one glob (with `*` or a
/// dot), or module names.
pub fn targets_of(list: &[String]) -> Targets {
    match list {
        [one] if one == "all-linear" => Targets::AllLinear,
        [one] if one.contains('*') || one.contains('.') => Targets::Glob(one.clone()),
        names => Targets::Names(names.to_vec()),
    }
}
