//! The model configuration shared by the GPT-2 and Llama families.

use serde::{Deserialize, Serialize};

/// Which normalisation the blocks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// LayerNorm with a learned scale (and bias when `bias = true`), GPT-2 style.
    LayerNorm,
    /// RMSNorm with a learned scale, Llama style.
    RmsNorm,
}

/// Which feed-forward network the blocks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    /// `down(gelu(up(x)))` with exact (erf) GELU.
    Gelu,
    /// `down(silu(gate(x)) * up(x))`.
    SwiGlu,
}

/// How positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionKind {
    /// A learned `[max_seq_len, d_model]` table added to the token embeddings.
    Learned,
    /// Rotary embeddings on queries and keys (rotate-half layout, `rope_theta`).
    Rope,
}

/// Floating-point type of the model's parameters and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DTypeName {
    F32,
    F16,
    Bf16,
}

/// Shape and family of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Vocabulary size; `0` in a training config means "take it from the tokenizer".
    #[serde(default)]
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads: `n_heads` for MHA, fewer for GQA, 1 for MQA.
    pub n_kv_heads: usize,
    /// Hidden width of the feed-forward network.
    pub d_ff: usize,
    /// Longest sequence the model accepts (the context / block size).
    pub max_seq_len: usize,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub mlp: MlpKind,
    pub position: PositionKind,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Biases on every projection and on LayerNorm.
    pub bias: bool,
    /// Share the token embedding with the output projection.
    pub tie_embeddings: bool,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_dtype")]
    pub dtype: DTypeName,
    /// Standard deviation of the normal initialisation (GPT-2: 0.02).
    #[serde(default = "default_init_std")]
    pub init_std: f64,
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_dtype() -> DTypeName {
    DTypeName::F32
}
fn default_init_std() -> f64 {
    0.02
}

/// A configuration value that cannot describe a working model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("model.{field}: {message}")]
pub struct ConfigError {
    /// The offending key, as written in a config file (`model.<field>`).
    pub field: &'static str,
    pub message: String,
}

impl TransformerConfig {
    /// A GPT-2-shaped model (learned positions, LayerNorm, GELU, biases, tied embeddings).
    pub fn gpt2(
        vocab_size: usize,
        d_model: usize,
        n_layers: usize,
        n_heads: usize,
        max_seq_len: usize,
    ) -> Self {
        Self {
            vocab_size,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads: n_heads,
            d_ff: 4 * d_model,
            max_seq_len,
            norm: NormKind::LayerNorm,
            norm_eps: 1e-5,
            mlp: MlpKind::Gelu,
            position: PositionKind::Learned,
            rope_theta: default_rope_theta(),
            bias: true,
            tie_embeddings: true,
            dropout: 0.0,
            dtype: DTypeName::F32,
            init_std: 0.02,
        }
    }

    /// A Llama-shaped model (RoPE, RMSNorm, SwiGLU, no biases, untied embeddings).
    pub fn llama(
        vocab_size: usize,
        d_model: usize,
        n_layers: usize,
        n_heads: usize,
        n_kv_heads: usize,
        d_ff: usize,
        max_seq_len: usize,
    ) -> Self {
        Self {
            vocab_size,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads,
            d_ff,
            max_seq_len,
            norm: NormKind::RmsNorm,
            norm_eps: 1e-5,
            mlp: MlpKind::SwiGlu,
            position: PositionKind::Rope,
            rope_theta: default_rope_theta(),
            bias: false,
            tie_embeddings: false,
            dropout: 0.0,
            dtype: DTypeName::F32,
            init_std: 0.02,
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Checks every value; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, message: String| Err(ConfigError { field, message });
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("d_ff", self.d_ff),
            ("max_seq_len", self.max_seq_len),
        ] {
            if value == 0 {
                return err(field, "must be at least 1".into());
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return err(
                "d_model",
                format!(
                    "{} is not divisible by n_heads = {}",
                    self.d_model, self.n_heads
                ),
            );
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return err(
                "n_kv_heads",
                format!(
                    "n_heads = {} is not divisible by n_kv_heads = {}",
                    self.n_heads, self.n_kv_heads
                ),
            );
        }
        if self.position == PositionKind::Rope && !self.head_dim().is_multiple_of(2) {
            return err(
                "n_heads",
                format!(
                    "RoPE needs an even head dimension, d_model / n_heads = {}",
                    self.head_dim()
                ),
            );
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return err(
                "norm_eps",
                format!("must be positive, got {}", self.norm_eps),
            );
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return err(
                "rope_theta",
                format!("must be positive, got {}", self.rope_theta),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return err(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            );
        }
        if !(self.init_std > 0.0 && self.init_std.is_finite()) {
            return err(
                "init_std",
                format!("must be positive, got {}", self.init_std),
            );
        }
        Ok(())
    }

    /// Number of parameters the model will have.
    pub fn num_params(&self) -> usize {
        let d = self.d_model;
        let kv = self.n_kv_heads * self.head_dim();
        let b = usize::from(self.bias);
        let norm = d * (1 + usize::from(self.bias && self.norm == NormKind::LayerNorm));
        let attn = d * d + 2 * d * kv + d * d + b * (2 * d + 2 * kv);
        let mlp = match self.mlp {
            MlpKind::Gelu => 2 * d * self.d_ff + b * (self.d_ff + d),
            MlpKind::SwiGlu => 3 * d * self.d_ff + b * (2 * self.d_ff + d),
        };
        let per_layer = 2 * norm + attn + mlp;
        let embed = self.vocab_size * d;
        let pos = if self.position == PositionKind::Learned {
            self.max_seq_len * d
        } else {
            0
        };
        let head = if self.tie_embeddings {
            0
        } else {
            d * self.vocab_size
        };
        embed + pos + self.n_layers * per_layer + norm + head
    }
}
