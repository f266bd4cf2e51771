//! Training configuration: a TOML file or a named preset, plus `section.key=value`
//! overrides.

use std::path::Path;

use ember_data::TokenizerKind;
use ember_nn::TransformerConfig;
use serde::{Deserialize, Serialize};

/// Everything a training run is made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: TransformerConfig,
    pub data: DataConfig,
    pub optim: OptimConfig,
    pub train: LoopConfig,
    pub sample: SampleConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `"char"` or `"bpe"`.
    pub tokenizer: String,
    /// Vocabulary size of a trained BPE tokenizer.
    pub bpe_vocab_size: usize,
    /// The held-out tail of the token stream.
    pub val_fraction: f64,
    /// Packed documents: every window carries its documents' ids (no attention across
    /// documents), positions restart at each document, and a document's last position
    /// is not trained to predict the next document's first token. Documents are the
    /// lines of a `.jsonl` file (`text` field) or the files of `--data`.
    #[serde(default)]
    pub packing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate after warmup.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    pub warmup_steps: usize,
    /// Step at which the cosine decay reaches `min_lr`.
    pub decay_steps: usize,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay, applied to matrices only.
    pub weight_decay: f32,
    /// The clipping threshold ([`OptimConfig::clip`]); 0 disables clipping.
    pub grad_clip: f64,
    /// How `grad_clip` applies: `"norm"` (default: the global norm of all gradients is at
    /// most `grad_clip`), `"value"` (each gradient value in `[-grad_clip, grad_clip]`) or
    /// `"agc"` (adaptive, unit-wise: each output unit's gradient norm at most `grad_clip`
    /// (NFNets' `λ`, e.g. 0.01) times its weight norm; the untied LM head is left alone).
    #[serde(default)]
    pub clip: ember_optim::ClipKind,
    /// The learning-rate schedule (see `ember_optim::schedule`); every one but
    /// `"one_cycle"` starts with `warmup_steps` of linear warmup:
    /// - `"cosine"` (default, nanoGPT's): cosine to `min_lr` at `decay_steps`;
    /// - `"linear"`: the same end points on a straight line;
    /// - `"constant"`: `lr` for good;
    /// - `"inverse_sqrt"`: `lr / √((t + timescale) / timescale)` ([`Self::inverse_sqrt`]);
    /// - `"wsd"`: warmup-stable-decay to `min_lr` ([`Self::wsd`]);
    /// - `"one_cycle"`: PyTorch's `OneCycleLR` with its `β1` cycle ([`Self::one_cycle`]);
    /// - `"cosine_restarts"`: PyTorch's `CosineAnnealingWarmRestarts` down to `min_lr`
    ///   ([`Self::cosine_restarts`]).
    #[serde(default)]
    pub schedule: ember_optim::ScheduleKind,
    /// `[optim.inverse_sqrt]`: `timescale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inverse_sqrt: Option<ember_optim::InverseSqrtArgs>,
    /// `[optim.wsd]`: `num_stable_steps`, `num_decay_steps`, `num_cycles`, `decay_type`
    /// (`"cosine"`, `"linear"` or `"1-sqrt"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wsd: Option<ember_optim::WsdArgs>,
    /// `[optim.one_cycle]`: PyTorch's `total_steps`, `pct_start`, `anneal_strategy`,
    /// `div_factor`, `final_div_factor`, `three_phase`, `cycle_momentum`,
    /// `base_momentum`, `max_momentum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_cycle: Option<ember_optim::OneCycleArgs>,
    /// `[optim.cosine_restarts]`: PyTorch's `T_0` (required) and `T_mult`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_restarts: Option<ember_optim::CosineRestartsArgs>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// Optimizer steps to run in total (a resumed run continues up to this step); 0 writes
    /// the freshly initialized model's checkpoint without training.
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Evaluate on the validation split every this many steps (and at the end); 0 = never.
    pub eval_every: usize,
    pub eval_batches: usize,
    pub log_every: usize,
    /// Write a checkpoint every this many steps (and always at the end); 0 = only at the end.
    pub checkpoint_every: usize,
    pub seed: u64,
    /// Precision of the model's matrix products (`"f32"` or `"bf16"`: inputs rounded to
    /// bf16, sums in f32; weights, gradients and optimizer state stay f32). See
    /// `ember_ops::fused::precision`.
    #[serde(default)]
    pub matmul_precision: ember_ops::fused::MatmulPrecision,
    /// Groups of rows each micro-batch is cut into, run at the same time on threads of
    /// their own with single-threaded ops, their gradients summed: data parallelism over
    /// the CPU's cores (see "Batch shards" in `docs/performance.md`). 1 runs each micro-batch whole, every op
    /// spread over all cores; 0 picks one shard per core (at most one per row) on CPU
    /// backends when `model.dropout` is 0, and 1 otherwise. With dropout, shards draw
    /// their masks from the device's one generator in whatever order the threads reach
    /// it, so a sharded run with dropout is not bit-reproducible (nor exactly resumable).
    #[serde(default = "one")]
    pub batch_shards: usize,
    /// Label smoothing of the training loss, in `[0, 1)`: each target keeps `1 - ε` of its
    /// probability and `ε` is spread evenly over the vocabulary (burn's
    /// `CrossEntropyLoss`, as PyTorch's `label_smoothing`). Validation losses stay plain
    /// cross-entropy, so runs with and without it compare.
    #[serde(default)]
    pub label_smoothing: f64,
    /// The token loss: `"cross_entropy"` (default; smoothed by `label_smoothing`) or
    /// `"focal"` (`focal_gamma`, `focal_alpha`); see [`crate::loss::TokenLoss`].
    #[serde(default)]
    pub loss: crate::loss::LossKind,
    /// PaLM's z-loss `coef · (log Z)²` added to the token loss (PaLM: `1e-4`); 0 = off.
    /// Logged as `objective.z_loss`.
    #[serde(default)]
    pub z_loss: f64,
    /// Focal loss's `γ` (Lin et al.'s default 2).
    #[serde(default = "two")]
    pub focal_gamma: f64,
    /// Focal loss's per-class `α`, one weight per vocabulary entry; empty = all 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub focal_alpha: Vec<f32>,
    /// Globs over parameter paths (`layers.0.*`, `tok_embeddings.*`) that do not train:
    /// no gradient, no optimizer state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<String>,
    /// Globs that train only from the given optimizer step on (frozen until then), e.g.
    /// `{ "layers.0.*" = 500 }`; their optimizer state starts then.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub unfreeze: std::collections::BTreeMap<String, usize>,
    /// Modules whose activations and gradients are summarised in `metrics.jsonl` (RMS,
    /// max |x|, dead units, gradient norm), by glob over `layers.N.attn`, `layers.N.mlp`
    /// and `layers.N`, e.g. `["layers.*.mlp"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capture: Vec<String>,
    /// Steps between two captures; 0: every `log_every`.
    #[serde(default)]
    pub capture_every: usize,
    /// An exponential moving average of the weights with this decay (e.g. 0.999), kept in
    /// the checkpoint and evaluated beside the raw weights ([`crate::Ema`]); 0 = off.
    #[serde(default)]
    pub ema_decay: f64,
    /// Gradual magnitude pruning during training: `{ sparsity = 0.5, start = 100, end =
    /// 800, every = 50, scope = "global" }` ([`crate::prune::PruneConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<crate::prune::PruneConfig>,
    /// What training minimises (see [`crate::objective`]): `"causal_lm"` (default),
    /// next-token cross-entropy (label-smoothed by `label_smoothing`) plus, for MoE
    /// models, the load-balancing and z-losses weighted by `model.moe.aux_loss_coef` and
    /// `model.moe.z_loss_coef`. [`crate::train_with`] can supply any other objective.
    #[serde(default)]
    pub objective: crate::objective::ObjectiveKind,
    /// What the backward pass recomputes instead of keeping (see
    /// [`ember_nn::checkpoint`]): `"none"` (default), `"blocks"` (each block keeps only
    /// its input and runs again in the backward pass), `"every:N"` (so do blocks 0, N,
    /// 2N, …) or `"selective"` (norms, activations and reshapes run again; matrix
    /// products' outputs are kept). The gradients are the same with every setting.
    #[serde(default)]
    pub activation_checkpointing: ember_nn::ActivationCheckpointing,
    /// Mixed precision (see `ember_ops::fused::autocast`): `"f32"` (default),
    /// `"bf16-mixed"` or `"f16-mixed"`: activations and matrix products in the low
    /// precision; weights, gradients, norms, softmax, the loss and the optimizer state in
    /// f32. `"f16-mixed"` scales the loss dynamically ([`crate::LossScale`]).
    #[serde(default)]
    pub precision: Precision,
}

/// `train.precision`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    #[default]
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "bf16-mixed")]
    Bf16Mixed,
    #[serde(rename = "f16-mixed")]
    F16Mixed,
}

impl Precision {
    pub const EXPECTED: &'static str = "\"f32\", \"bf16-mixed\" or \"f16-mixed\"";

    /// The dtype layers compute in (`None`: f32).
    pub fn autocast(self) -> Option<burn::tensor::FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16Mixed => Some(burn::tensor::FloatDType::BF16),
            Precision::F16Mixed => Some(burn::tensor::FloatDType::F16),
        }
    }
}

fn one() -> usize {
    1
}

fn two() -> f64 {
    2.0
}

/// A unit enum's serde name.
fn serde_plain<T: Serialize>(value: &T) -> String {
    match toml::Value::try_from(value) {
        Ok(toml::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The `[sample]` section: what `ember generate` does by default with the trained model.
pub use ember_model::SampleConfig;

impl OptimConfig {
    /// Checks the values serde's types cannot; errors name the `optim.` key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, msg: String| Err(ConfigError(format!("{key}: {msg}")));
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return fail("optim.lr", format!("must be positive, got {}", self.lr));
        }
        if !(self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return fail(
                "optim.min_lr",
                format!("must be in [0, optim.lr], got {}", self.min_lr),
            );
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return fail("optim.beta1/beta2", "must be in [0, 1)".into());
        }
        if !(self.eps > 0.0 && self.weight_decay >= 0.0 && self.grad_clip >= 0.0) {
            return fail(
                "optim",
                "eps must be positive; weight_decay and grad_clip non-negative".into(),
            );
        }
        // A schedule's table is only read with that schedule: one set for another is a
        // mistake worth naming.
        for (table, set) in [
            ("inverse_sqrt", self.inverse_sqrt.is_some()),
            ("wsd", self.wsd.is_some()),
            ("one_cycle", self.one_cycle.is_some()),
            ("cosine_restarts", self.cosine_restarts.is_some()),
        ] {
            if set && self.schedule.table() != Some(table) {
                return fail(
                    &format!("optim.{table}"),
                    format!(
                        "is set but optim.schedule = \"{}\"; set optim.schedule = \"{table}\" or remove the table",
                        serde_plain(&self.schedule)
                    ),
                );
            }
        }
        Ok(())
    }

    /// The learning-rate schedule of a run of `total_steps` steps; `Err` names the key.
    pub fn schedule(
        &self,
        total_steps: usize,
    ) -> Result<Box<dyn ember_optim::LrSchedule>, ConfigError> {
        ember_optim::ScheduleSettings {
            kind: self.schedule,
            peak_lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps,
            decay_steps: self.decay_steps,
            total_steps,
            inverse_sqrt: self.inverse_sqrt.clone().unwrap_or_default(),
            wsd: self.wsd.clone().unwrap_or_default(),
            one_cycle: self.one_cycle.clone().unwrap_or_default(),
            cosine_restarts: self.cosine_restarts.clone(),
        }
        .build()
        .map_err(ConfigError)
    }
}

/// A configuration that cannot be used; the message names the file, flag or key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The named presets, embedded in the binary.
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../presets/tiny.toml")),
    ("nanogpt-cpu", include_str!("../presets/nanogpt-cpu.toml")),
    ("gpt2", include_str!("../presets/gpt2.toml")),
    ("llama", include_str!("../presets/llama.toml")),
    ("mistral", include_str!("../presets/mistral.toml")),
    ("mixtral", include_str!("../presets/mixtral.toml")),
];

impl TrainConfig {
    /// A preset by name.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let table = preset_table(name)?;
        Self::from_table(table, &format!("preset `{name}`"))
    }

    /// Builds a configuration: the preset (default `tiny`), then the TOML file merged over
    /// it, then each `section.key=value` override. Unknown keys and bad values are errors.
    pub fn resolve(
        preset: Option<&str>,
        file: Option<&Path>,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        let mut table = preset_table(preset.unwrap_or("tiny"))?;
        let mut origin = format!("preset `{}`", preset.unwrap_or("tiny"));
        if let Some(path) = file {
            let text = ember_data::files::read_regular_text(path)
                .map_err(|e| ConfigError(format!("--config {}: {e}", path.display())))?;
            let file_table: toml::Table = toml::from_str(&text).map_err(|e| {
                ConfigError(format!(
                    "--config {}: malformed TOML: {}",
                    path.display(),
                    e.message()
                ))
            })?;
            merge(&mut table, file_table, "", &path.display().to_string())?;
            origin = path.display().to_string();
        }
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        Self::from_table(table, &origin)
    }

    fn from_table(table: toml::Table, origin: &str) -> Result<Self, ConfigError> {
        // serde's message for a bad enum value does not name the key.
        if let Some(value) = table.get("train").and_then(|t| t.get("matmul_precision")) {
            let valid = value
                .as_str()
                .is_some_and(|v| v.parse::<ember_ops::fused::MatmulPrecision>().is_ok());
            if !valid {
                return Err(ConfigError(format!(
                    "{origin}: train.matmul_precision = {value}: expected \"f32\" or \"bf16\""
                )));
            }
        }
        if let Some(value) = table.get("optim").and_then(|t| t.get("schedule")) {
            let valid = value
                .clone()
                .try_into::<ember_optim::ScheduleKind>()
                .is_ok();
            if !valid {
                return Err(ConfigError(format!(
                    "{origin}: optim.schedule = {value}: expected {}",
                    ember_optim::ScheduleKind::EXPECTED
                )));
            }
        }
        if let Some(value) = table.get("optim").and_then(|t| t.get("clip"))
            && value.clone().try_into::<ember_optim::ClipKind>().is_err()
        {
            return Err(ConfigError(format!(
                "{origin}: optim.clip = {value}: expected {}",
                ember_optim::ClipKind::EXPECTED
            )));
        }
        if let Some(value) = table.get("train").and_then(|t| t.get("objective")) {
            let valid = value
                .clone()
                .try_into::<crate::objective::ObjectiveKind>()
                .is_ok();
            if !valid {
                return Err(ConfigError(format!(
                    "{origin}: train.objective = {value}: expected {}",
                    crate::objective::ObjectiveKind::EXPECTED
                )));
            }
        }
        // The recipe tables: serde's messages inside them do not name the table.
        let sub = |section: &str, key: &str| table.get(section).and_then(|t| t.get(key)).cloned();
        let named = |key: &str, result: Result<(), toml::de::Error>| {
            result.map_err(|e| ConfigError(format!("{origin}: {key}: {}", e.message())))
        };
        if let Some(v) = sub("optim", "one_cycle") {
            named(
                "optim.one_cycle",
                v.try_into::<ember_optim::OneCycleArgs>().map(drop),
            )?;
        }
        if let Some(v) = sub("optim", "wsd") {
            named("optim.wsd", v.try_into::<ember_optim::WsdArgs>().map(drop))?;
        }
        if let Some(v) = sub("optim", "inverse_sqrt") {
            named(
                "optim.inverse_sqrt",
                v.try_into::<ember_optim::InverseSqrtArgs>().map(drop),
            )?;
        }
        if let Some(v) = sub("optim", "cosine_restarts") {
            named(
                "optim.cosine_restarts",
                v.try_into::<ember_optim::CosineRestartsArgs>().map(drop),
            )?;
        }
        if let Some(v) = sub("train", "prune") {
            named(
                "train.prune",
                v.try_into::<crate::prune::PruneConfig>().map(drop),
            )?;
        }
        if let Some(v) = sub("train", "unfreeze") {
            named(
                "train.unfreeze",
                v.try_into::<std::collections::BTreeMap<String, usize>>()
                    .map(drop),
            )?;
        }
        if let Some(value) = table.get("train").and_then(|t| t.get("loss"))
            && value.clone().try_into::<crate::loss::LossKind>().is_err()
        {
            return Err(ConfigError(format!(
                "{origin}: train.loss = {value}: expected {}",
                crate::loss::LossKind::EXPECTED
            )));
        }
        if let Some(value) = table.get("train").and_then(|t| t.get("precision"))
            && value.clone().try_into::<Precision>().is_err()
        {
            return Err(ConfigError(format!(
                "{origin}: train.precision = {value}: expected {}",
                Precision::EXPECTED
            )));
        }
        if let Some(value) = table
            .get("train")
            .and_then(|t| t.get("activation_checkpointing"))
        {
            let valid = value
                .as_str()
                .is_some_and(|v| v.parse::<ember_nn::ActivationCheckpointing>().is_ok());
            if !valid {
                return Err(ConfigError(format!(
                    "{origin}: train.activation_checkpointing = {value}: expected {}",
                    ember_nn::ActivationCheckpointing::EXPECTED
                )));
            }
        }
        let config: TrainConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("{origin}: {}", e.message())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that serde's types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut model = self.model.clone();
        if model.vocab_size == 0 {
            model.vocab_size = 1; // filled in from the tokenizer
        }
        model.validate().map_err(|e| ConfigError(e.to_string()))?;
        // Checkpoints written before this check may say otherwise and still load for
        // sampling (their weights are f32); training refuses it.
        if model.dtype != ember_nn::DTypeName::F32 {
            return Err(ConfigError(format!(
                "model.dtype: {}: parameters are kept in f32 (the only value supported); for bf16 matrix products set train.matmul_precision = \"bf16\", for f16/bf16 files use `ember export --dtype`",
                format!("{:?}", model.dtype).to_lowercase()
            )));
        }
        let fail = |key: &str, msg: String| Err(ConfigError(format!("{key}: {msg}")));
        self.optim.validate()?;
        self.optim.schedule(self.train.steps)?;
        let t = &self.train;
        for (key, v) in [
            ("train.batch_size", t.batch_size),
            ("train.grad_accum", t.grad_accum),
        ] {
            if v == 0 {
                return fail(key, "must be at least 1".into());
            }
        }
        // Counts a run multiplies together or spends threads and time on: bounded so that
        // `batch_size × block × grad_accum` cannot overflow and a typo cannot start a
        // million threads (memory is checked separately, before the model is built).
        for (key, v, max) in [
            ("train.batch_size", t.batch_size, 1 << 24),
            ("train.grad_accum", t.grad_accum, 1 << 20),
            ("train.eval_batches", t.eval_batches, 1 << 20),
            ("train.batch_shards", t.batch_shards, 1 << 10),
            (
                "data.bpe_vocab_size",
                self.data.bpe_vocab_size,
                ember_nn::config::MAX_VOCAB,
            ),
            ("sample.max_new_tokens", self.sample.max_new_tokens, 1 << 24),
        ] {
            if v > max {
                return fail(
                    key,
                    format!("{v} is beyond what Ember supports (at most {max})"),
                );
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
        if t.activation_checkpointing.recomputes_block(0)
            && self.model.dropout > 0.0
            && t.batch_shards > 1
        {
            return fail(
                "train.activation_checkpointing",
                format!(
                    "\"{}\" with model.dropout > 0 needs train.batch_shards = 1: shards share one random generator, so a block run again would draw other dropout masks",
                    t.activation_checkpointing
                ),
            );
        }
        if t.precision != Precision::F32
            && t.matmul_precision != ember_ops::fused::MatmulPrecision::F32
        {
            return fail(
                "train.matmul_precision",
                format!(
                    "\"bf16\" rounds the inputs of f32 products; with train.precision = \"{}\" the products are in low precision already: set one of the two",
                    serde_plain(&t.precision)
                ),
            );
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            return fail(
                "train.label_smoothing",
                format!("must be in [0, 1), got {}", t.label_smoothing),
            );
        }
        if !(0.0..1.0).contains(&t.ema_decay) {
            return fail(
                "train.ema_decay",
                format!("must be in [0, 1) (0: no average), got {}", t.ema_decay),
            );
        }
        if let Some(prune) = &t.prune {
            prune.validate(t.steps).map_err(ConfigError)?;
        }
        for (key, v) in [
            ("train.z_loss", t.z_loss),
            ("train.focal_gamma", t.focal_gamma),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return fail(key, format!("must be a finite number ≥ 0, got {v}"));
            }
        }
        if t.loss == crate::loss::LossKind::Focal && t.label_smoothing > 0.0 {
            return fail(
                "train.label_smoothing",
                "applies to train.loss = \"cross_entropy\"; focal loss takes train.focal_gamma and train.focal_alpha".into(),
            );
        }
        if !t.focal_alpha.is_empty() && t.loss != crate::loss::LossKind::Focal {
            return fail(
                "train.focal_alpha",
                "is set but train.loss is not \"focal\"".into(),
            );
        }
        if let Some(bad) = t
            .focal_alpha
            .iter()
            .find(|a| !(**a >= 0.0 && a.is_finite()))
        {
            return fail(
                "train.focal_alpha",
                format!("weights must be finite and ≥ 0, got {bad}"),
            );
        }
        if t.eval_every > 0 && t.eval_batches == 0 {
            return fail(
                "train.eval_batches",
                "must be at least 1 when train.eval_every > 0".into(),
            );
        }
        if !(self.data.val_fraction > 0.0 && self.data.val_fraction < 1.0) {
            return fail(
                "data.val_fraction",
                format!("must be in (0, 1), got {}", self.data.val_fraction),
            );
        }
        self.tokenizer_kind()?;
        self.sample.validate().map_err(ConfigError)?;
        Ok(())
    }

    /// The tokenizer `data.tokenizer` names.
    pub fn tokenizer_kind(&self) -> Result<TokenizerKind, ConfigError> {
        match self.data.tokenizer.as_str() {
            "char" => Ok(TokenizerKind::Char),
            "bpe" if self.data.bpe_vocab_size >= 257 => Ok(TokenizerKind::Bpe {
                vocab_size: self.data.bpe_vocab_size,
            }),
            "bpe" => Err(ConfigError(format!(
                "data.bpe_vocab_size: must be at least 257 (256 bytes + <|endoftext|>), got {}",
                self.data.bpe_vocab_size
            ))),
            other => Err(ConfigError(format!(
                "data.tokenizer: expected \"char\" or \"bpe\", got {other:?}"
            ))),
        }
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a config serialises")
    }
}

fn preset_table(name: &str) -> Result<toml::Table, ConfigError> {
    let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        ConfigError(format!(
            "--preset {name}: unknown preset (known: {})",
            names.join(", ")
        ))
    })?;
    let table: toml::Table = toml::from_str(text).expect("embedded presets are valid TOML");
    // Round-trip through the typed config so every defaulted key is present and can be
    // overridden by name.
    let config: TrainConfig = toml::Value::Table(table)
        .try_into()
        .expect("embedded presets are valid configs");
    match toml::Value::try_from(&config).expect("configs serialise") {
        toml::Value::Table(table) => Ok(table),
        _ => unreachable!("a struct serialises to a table"),
    }
}

/// Model keys whose default is "absent", so a preset may not list them; a file or
/// `--set` may add them.
const OPTIONAL_MODEL_KEYS: &[&str] = &[
    "rope_scaling",
    "sliding_window",
    "attn_softcap",
    "qkv_bias",
    "moe",
];

/// Keys of the other sections that presets leave out (each schedule's table, the
/// recipes' settings).
const OPTIONAL_KEYS: &[&str] = &[
    "optim.inverse_sqrt",
    "optim.wsd",
    "optim.one_cycle",
    "optim.cosine_restarts",
    "train.focal_alpha",
    "train.capture",
    "train.freeze",
    "train.unfreeze",
    "train.prune",
];

fn is_optional(path: &str) -> bool {
    path.strip_prefix("model.")
        .is_some_and(|key| OPTIONAL_MODEL_KEYS.contains(&key))
        || OPTIONAL_KEYS.contains(&path)
}

/// Merges `from` into `into`; every key must already exist in `into`.
pub(crate) fn merge(
    into: &mut toml::Table,
    from: toml::Table,
    prefix: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    for (key, value) in from {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => {
                merge(dst, src, &path, origin)?
            }
            (Some(dst), value) if !dst.is_table() => *dst = value,
            (Some(_), _) => {
                return Err(ConfigError(format!(
                    "{origin}: `{path}` is a section, not a value"
                )));
            }
            (None, value) if is_optional(&path) => {
                into.insert(key, value);
            }
            (None, _) => return Err(ConfigError(format!("{origin}: unknown key `{path}`"))),
        }
    }
    Ok(())
}

/// Applies one `section.key=value`; the value is read as TOML (`3`, `1e-3`, `true`,
/// `"text"`), falling back to a plain string.
pub(crate) fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), ConfigError> {
    let bad = |msg: &str| ConfigError(format!("--set {item}: {msg}"));
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| bad("expected section.key=value"))?;
    let (section, field) = key
        .trim()
        .split_once('.')
        .ok_or_else(|| bad("expected section.key=value"))?;
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let section_table = match table.get_mut(section) {
        Some(toml::Value::Table(t)) => t,
        _ => return Err(bad(&format!("unknown section `{section}`"))),
    };
    if !section_table.contains_key(field) && is_optional(&format!("{section}.{field}")) {
        section_table.insert(field.to_string(), value);
        return Ok(());
    }
    if !section_table.contains_key(field) {
        let mut known: Vec<&str> = section_table.keys().map(|k| k.as_str()).collect();
        known.sort_unstable();
        return Err(bad(&format!(
            "unknown key `{section}.{field}` (known: {})",
            known.join(", ")
        )));
    }
    let slot = section_table.get_mut(field).expect("checked above");
    // Let an integer stand where a float is expected (`optim.lr=1`).
    let value = match (&*slot, value) {
        (toml::Value::Float(_), toml::Value::Integer(i)) => toml::Value::Float(i as f64),
        (_, v) => v,
    };
    if slot.type_str() != value.type_str() {
        return Err(bad(&format!(
            "expected {} for `{section}.{field}`, got {}",
            slot.type_str(),
            value.type_str()
        )));
    }
    *slot = value;
    Ok(())
}
