//! The configuration's sections and their types, with the checks of `[optim]`.

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
    /// Data-parallel runs: the gradient all-reduce's bucket size in MiB (PyTorch DDP's
    /// `bucket_cap_mb`; unset: 25); 0 sends one tensor per all-reduce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ddp_bucket_mb: Option<f64>,
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
    /// `model.moe.z_loss_coef`; or `"contrastive"`, InfoNCE on `{"anchor", "positive"}`
    /// pairs (`contrastive`), validated by held-out loss and retrieval accuracy. [`crate::train_with`] can supply any other objective.
    #[serde(default)]
    pub objective: crate::objective::ObjectiveKind,
    /// `train.objective = "contrastive"`: `{ temperature = 0.05, pooling = "mean" }`
    /// ([`crate::objective::ContrastiveConfig`]; `pooling` is `"mean"` or `"last"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrastive: Option<crate::objective::ContrastiveConfig>,
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

pub(super) fn one() -> usize {
    1
}

pub(super) fn two() -> f64 {
    2.0
}

/// A unit enum's serde name.
pub(super) fn serde_plain<T: Serialize>(value: &T) -> String {
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
    ("tiny", include_str!("../../presets/tiny.toml")),
    (
        "nanogpt-cpu",
        include_str!("../../presets/nanogpt-cpu.toml"),
    ),
    ("gpt2", include_str!("../../presets/gpt2.toml")),
    ("llama", include_str!("../../presets/llama.toml")),
    ("mistral", include_str!("../../presets/mistral.toml")),
    ("mixtral", include_str!("../../presets/mixtral.toml")),
];
