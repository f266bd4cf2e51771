//! Building a configuration: the preset, the file merged over it, the overrides, then
//! the checks serde's types cannot make.

use std::path::Path;

use ember_data::TokenizerKind;

use super::overrides::{apply_override, merge, preset_table};
use super::sections::serde_plain;
use super::{ConfigError, Precision, TrainConfig};

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
        if let Some(v) = sub("train", "contrastive") {
            named(
                "train.contrastive",
                v.try_into::<crate::objective::ContrastiveConfig>()
                    .map(drop),
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
        let mut config: TrainConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("{origin}: {}", e.message())))?;
        // A head width equal to d_model / n_heads is the default one, so that configurations
        // (and `--init-from` a model read from Hugging Face) compare equal.
        let m = &config.model;
        if m.head_dim
            .is_some_and(|h| h.checked_mul(m.n_heads) == Some(m.d_model))
        {
            config.model.head_dim = None;
        }
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
        if let Some(mb) = t.ddp_bucket_mb
            && !(mb.is_finite() && (0.0..=1024.0).contains(&mb))
        {
            return fail(
                "train.ddp_bucket_mb",
                format!("must be between 0 and 1024 MiB, got {mb}"),
            );
        }
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
        self.validate_contrastive()?;
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

    /// `train.objective = "contrastive"` and its settings: in-batch negatives need the
    /// whole batch in one pass and unpacked pairs.
    fn validate_contrastive(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, msg: String| Err(ConfigError(format!("{key}: {msg}")));
        let t = &self.train;
        let contrastive = t.objective == crate::objective::ObjectiveKind::Contrastive;
        if !contrastive {
            return match t.contrastive {
                Some(_) => fail(
                    "train.contrastive",
                    "is set but train.objective is not \"contrastive\"".into(),
                ),
                None => Ok(()),
            };
        }
        let temperature = t.contrastive.unwrap_or_default().temperature;
        if !(temperature > 0.0 && temperature.is_finite()) {
            return fail(
                "train.contrastive.temperature",
                format!("must be a finite number > 0, got {temperature}"),
            );
        }
        if t.batch_size < 2 {
            return fail(
                "train.batch_size",
                "a contrastive batch needs at least 2 pairs (the other pairs are the negatives)"
                    .into(),
            );
        }
        if t.batch_shards > 1 {
            return fail(
                "train.batch_shards",
                "must be 1 (or 0, which then means 1) with train.objective = \"contrastive\": every pair's negatives are the rest of its batch, so a batch runs whole".into(),
            );
        }
        if self.data.packing {
            return fail(
                "data.packing",
                "does not apply to train.objective = \"contrastive\" (each text is a row of its own)".into(),
            );
        }
        if self.model.moe.is_some() {
            return fail(
                "model.moe",
                "train.objective = \"contrastive\" trains dense models (padding would compete for expert capacity and the routers' losses would go untrained)".into(),
            );
        }
        for (key, set) in [
            ("train.label_smoothing", t.label_smoothing > 0.0),
            ("train.z_loss", t.z_loss > 0.0),
            ("train.loss", t.loss != crate::loss::LossKind::CrossEntropy),
        ] {
            if set {
                return fail(
                    key,
                    "is a token loss; train.objective = \"contrastive\" predicts no token".into(),
                );
            }
        }
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
