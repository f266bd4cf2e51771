//! The model configuration shared by the GPT-2 and Llama families.

use ember_ops::{RopeConfig, RopeLayout, RopeScaling};
use serde::{Deserialize, Serialize};

/// Which normalisation the blocks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// LayerNorm with a learned scale (and bias when `bias = true`), GPT-2 style.
    LayerNorm,
    /// RMSNorm with a learned scale, Llama style.
    RmsNorm,
    /// Per-token GroupNorm: the channels of each position split into `norm_groups`
    /// groups, each normalised to zero mean and unit variance, then a learned per-channel
    /// scale (and bias when `bias = true`). Statistics never mix positions.
    GroupNorm,
}

/// Where the block's norms sit relative to the residual additions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormPlacement {
    /// `x + f(norm(x))` (GPT-2, Llama).
    #[default]
    Pre,
    /// `norm(x + f(x))` (the original Transformer, BERT).
    Post,
    /// `x + post_norm(f(pre_norm(x)))` (Gemma 2's sandwich).
    Sandwich,
}

/// How weights are initialised; biases start at zero and norm scales at one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitScheme {
    /// Every weight normal(0, `init_std`).
    Normal,
    /// GPT-2: normal(0, `init_std`), the residual output projections (`o_proj`,
    /// `down_proj`) normal(0, `init_std / sqrt(2 n_layers)`).
    #[default]
    Gpt2,
    /// Glorot/Xavier uniform: `U(±sqrt(6 / (fan_in + fan_out)))` for projections.
    Xavier,
    /// He/Kaiming normal for projections: normal(0, `sqrt(2 / fan_in)`).
    Kaiming,
}

/// Mixture-of-Experts feed-forward settings (replaces the dense MLP of every block).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeConfig {
    /// Number of SwiGLU experts, each `d_model → d_ff → d_model`.
    pub n_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Renormalise the top-k router probabilities to sum to one (Mixtral).
    #[serde(default = "default_true")]
    pub renormalize: bool,
    /// Tokens per expert at most `ceil(capacity_factor · tokens · top_k / n_experts)`;
    /// assignments beyond it are dropped (first choices are served first). `None`: no limit.
    #[serde(default)]
    pub capacity_factor: Option<f64>,
    /// Weight of the Switch load-balancing loss in the training loss.
    #[serde(default = "default_aux_coef")]
    pub aux_loss_coef: f64,
    /// Weight of the router z-loss in the training loss.
    #[serde(default = "default_z_coef")]
    pub z_loss_coef: f64,
}

fn default_true() -> bool {
    true
}
fn default_aux_coef() -> f64 {
    0.01
}
fn default_z_coef() -> f64 {
    0.001
}

/// Which feed-forward network the blocks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    /// `down(gelu(up(x)))` with exact (erf) GELU.
    Gelu,
    /// `down(gelu_tanh(up(x)))` with the tanh approximation of GELU (GPT-2's `gelu_new`).
    GeluTanh,
    /// `down(silu(gate(x)) * up(x))`.
    SwiGlu,
    /// `down(gelu(gate(x)) * up(x))`.
    GeGlu,
}

/// How positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionKind {
    /// A learned `[max_seq_len, d_model]` table added to the token embeddings.
    Learned,
    /// Rotary embeddings on queries and keys (`rope_theta`, `rope_layout`,
    /// `partial_rotary_factor`, `rope_scaling`).
    Rope,
    /// ALiBi: a per-head linear distance penalty on the attention scores.
    Alibi,
    /// The fixed sinusoidal table added to the token embeddings.
    Sinusoidal,
    /// No position information (causal masking alone, "NoPE").
    None,
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
    /// Width of one attention head when it is not `d_model / n_heads` (Hugging Face's
    /// `head_dim`; a model whose heads were pruned); `None`: `d_model / n_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
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
    #[serde(default)]
    pub rope_layout: RopeLayout,
    /// Fraction of each head's features that RoPE rotates.
    #[serde(default = "default_one")]
    pub partial_rotary_factor: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Each query sees at most this many keys, itself included (Mistral).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Tanh soft-cap of the attention scores (Gemma 2).
    #[serde(default)]
    pub attn_softcap: Option<f64>,
    /// RMSNorm over each query and key head before RoPE (Qwen 3, OLMo 2).
    #[serde(default)]
    pub qk_norm: bool,
    /// Biases on the q/k/v projections; `None` follows `bias` (Qwen 2: `true` with
    /// `bias = false`).
    #[serde(default)]
    pub qkv_bias: Option<bool>,
    /// Groups of the per-token GroupNorm (`norm = "groupnorm"`).
    #[serde(default = "default_groups")]
    pub norm_groups: usize,
    #[serde(default)]
    pub norm_placement: NormPlacement,
    /// `x + attn(norm1(x)) + mlp(norm2(x))` (GPT-J / GPT-NeoX).
    #[serde(default)]
    pub parallel_residual: bool,
    /// Mixture-of-Experts in place of the dense MLP.
    #[serde(default)]
    pub moe: Option<MoeConfig>,
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
    #[serde(default)]
    pub init: InitScheme,
    /// Start the residual output projections (`o_proj`, `down_proj`) at zero.
    #[serde(default)]
    pub zero_init_output: bool,
}

fn default_one() -> f64 {
    1.0
}
fn default_groups() -> usize {
    1
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

/// Upper bounds on the sizes a configuration may ask for: far above any published model,
/// low enough that products of them cannot overflow and a typo (`vocab_size =
/// 320000000000`) is refused before anything is allocated.
pub const MAX_VOCAB: usize = 1 << 24;
pub const MAX_WIDTH: usize = 1 << 20;
pub const MAX_LAYERS: usize = 1 << 12;
pub const MAX_POSITIONS: usize = 1 << 24;
pub const MAX_EXPERTS: usize = 1 << 12;

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
            d_ff: d_model.saturating_mul(4),
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
            ..Self::defaults()
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
            ..Self::defaults()
        }
    }

    /// The optional settings at their defaults, for the constructors.
    fn defaults() -> Self {
        Self {
            vocab_size: 0,
            d_model: 0,
            n_layers: 0,
            n_heads: 0,
            n_kv_heads: 0,
            d_ff: 0,
            max_seq_len: 0,
            norm: NormKind::RmsNorm,
            norm_eps: 1e-5,
            mlp: MlpKind::SwiGlu,
            position: PositionKind::Rope,
            rope_theta: default_rope_theta(),
            rope_layout: RopeLayout::RotateHalf,
            partial_rotary_factor: 1.0,
            rope_scaling: None,
            sliding_window: None,
            attn_softcap: None,
            qk_norm: false,
            qkv_bias: None,
            norm_groups: 1,
            norm_placement: NormPlacement::Pre,
            parallel_residual: false,
            moe: None,
            bias: false,
            tie_embeddings: false,
            dropout: 0.0,
            dtype: DTypeName::F32,
            init_std: 0.02,
            init: InitScheme::Gpt2,
            zero_init_output: false,
            head_dim: None,
        }
    }

    /// A Mistral-shaped model: Llama with grouped-query attention and a sliding window.
    #[allow(clippy::too_many_arguments)]
    pub fn mistral(
        vocab_size: usize,
        d_model: usize,
        n_layers: usize,
        n_heads: usize,
        n_kv_heads: usize,
        d_ff: usize,
        max_seq_len: usize,
        sliding_window: usize,
    ) -> Self {
        Self {
            sliding_window: Some(sliding_window),
            ..Self::llama(
                vocab_size,
                d_model,
                n_layers,
                n_heads,
                n_kv_heads,
                d_ff,
                max_seq_len,
            )
        }
    }

    /// A Mixtral-shaped model: Mistral with a top-k Mixture of SwiGLU experts.
    #[allow(clippy::too_many_arguments)]
    pub fn mixtral(
        vocab_size: usize,
        d_model: usize,
        n_layers: usize,
        n_heads: usize,
        n_kv_heads: usize,
        d_ff: usize,
        max_seq_len: usize,
        n_experts: usize,
        top_k: usize,
    ) -> Self {
        Self {
            sliding_window: None,
            moe: Some(MoeConfig {
                n_experts,
                top_k,
                renormalize: true,
                capacity_factor: None,
                aux_loss_coef: default_aux_coef(),
                z_loss_coef: default_z_coef(),
            }),
            ..Self::llama(
                vocab_size,
                d_model,
                n_layers,
                n_heads,
                n_kv_heads,
                d_ff,
                max_seq_len,
            )
        }
    }

    /// Features per head that RoPE rotates (`partial_rotary_factor · head_dim`).
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim() as f64 * self.partial_rotary_factor).round() as usize
    }

    /// The rotary embedding this config describes.
    pub fn rope_config(&self) -> RopeConfig {
        RopeConfig {
            head_dim: self.head_dim(),
            rotary_dim: self.rotary_dim(),
            theta: self.rope_theta,
            layout: self.rope_layout,
            scaling: self.rope_scaling,
        }
    }

    /// Whether the q/k/v projections carry biases.
    pub fn qkv_bias(&self) -> bool {
        self.qkv_bias.unwrap_or(self.bias)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.d_model / self.n_heads.max(1))
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
        for (field, value, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("d_model", self.d_model, MAX_WIDTH),
            ("d_ff", self.d_ff, MAX_WIDTH),
            ("n_layers", self.n_layers, MAX_LAYERS),
            ("max_seq_len", self.max_seq_len, MAX_POSITIONS),
        ] {
            if value > max {
                return err(
                    field,
                    format!("{value} is beyond what Ember supports (at most {max})"),
                );
            }
        }
        if let Some(head_dim) = self.head_dim {
            if head_dim == 0 || head_dim > MAX_WIDTH {
                return err(
                    "head_dim",
                    format!("must be in [1, {MAX_WIDTH}], got {head_dim}"),
                );
            }
        } else if !self.d_model.is_multiple_of(self.n_heads) {
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
        if self.position == PositionKind::Rope {
            if !(self.partial_rotary_factor > 0.0 && self.partial_rotary_factor <= 1.0) {
                return err(
                    "partial_rotary_factor",
                    format!("must be in (0, 1], got {}", self.partial_rotary_factor),
                );
            }
            let rotary = self.rotary_dim();
            if rotary == 0 || !rotary.is_multiple_of(2) {
                return err(
                    "n_heads",
                    format!(
                        "RoPE rotates feature pairs and needs an even rotary dimension; head dimension {} (head_dim, or d_model / n_heads) times partial_rotary_factor {} gives {rotary}",
                        self.head_dim(),
                        self.partial_rotary_factor
                    ),
                );
            }
            if let Some(scaling) = &self.rope_scaling
                && let Err(e) = scaling.check()
            {
                return err("rope_scaling", e);
            }
        } else if self.rope_scaling.is_some() {
            return err(
                "rope_scaling",
                format!("set, but position = {:?} does not use RoPE", self.position),
            );
        }
        if self.sliding_window == Some(0) {
            return err("sliding_window", "must be at least 1".into());
        }
        if let Some(cap) = self.attn_softcap
            && !(cap > 0.0 && cap.is_finite())
        {
            return err("attn_softcap", format!("must be positive, got {cap}"));
        }
        if self.norm == NormKind::GroupNorm
            && (self.norm_groups == 0 || !self.d_model.is_multiple_of(self.norm_groups))
        {
            return err(
                "norm_groups",
                format!(
                    "{} groups do not divide d_model = {}",
                    self.norm_groups, self.d_model
                ),
            );
        }
        if let Some(moe) = &self.moe {
            if moe.n_experts == 0 || moe.n_experts > MAX_EXPERTS {
                return err(
                    "moe.n_experts",
                    format!("must be between 1 and {MAX_EXPERTS}, got {}", moe.n_experts),
                );
            }
            if moe.top_k == 0 || moe.top_k > moe.n_experts {
                return err(
                    "moe.top_k",
                    format!(
                        "must be between 1 and n_experts = {}, got {}",
                        moe.n_experts, moe.top_k
                    ),
                );
            }
            if let Some(cf) = moe.capacity_factor
                && !(cf > 0.0 && cf.is_finite())
            {
                return err("moe.capacity_factor", format!("must be positive, got {cf}"));
            }
            for (field, v) in [
                ("moe.aux_loss_coef", moe.aux_loss_coef),
                ("moe.z_loss_coef", moe.z_loss_coef),
            ] {
                if !(v >= 0.0 && v.is_finite()) {
                    return err(field, format!("must be zero or positive, got {v}"));
                }
            }
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
        let total: f64 = self.param_parts().iter().map(|(_, n)| n).sum();
        total as usize
    }

    /// The model's parameters by the key that sizes each part: `vocab_size` (embedding and
    /// head), `max_seq_len` (learned positions), `d_model` (attention and norms of every
    /// layer), `d_ff` or `moe.n_experts` (feed-forward of every layer). Counted in `f64`,
    /// so absurd configurations give huge numbers instead of overflowing.
    pub fn param_parts(&self) -> Vec<(&'static str, f64)> {
        let f = |v: usize| v as f64;
        let d = f(self.d_model);
        let d_ff = f(self.d_ff);
        let head_dim = f(self.head_dim());
        let q = f(self.n_heads) * head_dim;
        let kv = f(self.n_kv_heads) * head_dim;
        let b = f(usize::from(self.bias));
        let qkv_b = f(usize::from(self.qkv_bias()));
        let norm = d * f(1 + usize::from(self.bias && self.norm != NormKind::RmsNorm));
        let qk_norm = if self.qk_norm { 2.0 * head_dim } else { 0.0 };
        let attn = d * q + 2.0 * d * kv + q * d + qkv_b * (q + 2.0 * kv) + b * d + qk_norm;
        let dense = |kind: MlpKind| match kind {
            MlpKind::Gelu | MlpKind::GeluTanh => 2.0 * d * d_ff + b * (d_ff + d),
            MlpKind::SwiGlu | MlpKind::GeGlu => 3.0 * d * d_ff + b * (2.0 * d_ff + d),
        };
        let (ffn_key, ffn) = match &self.moe {
            Some(moe) => (
                "moe.n_experts",
                d * f(moe.n_experts) + f(moe.n_experts) * dense(MlpKind::SwiGlu),
            ),
            None => ("d_ff", dense(self.mlp)),
        };
        let norms = match self.norm_placement {
            NormPlacement::Sandwich => 4.0,
            NormPlacement::Post if self.parallel_residual => 1.0,
            _ => 2.0,
        };
        let layers = f(self.n_layers);
        let head = if self.tie_embeddings {
            0.0
        } else {
            d * f(self.vocab_size)
        };
        let pos = if self.position == PositionKind::Learned {
            f(self.max_seq_len) * d
        } else {
            0.0
        };
        vec![
            ("vocab_size", f(self.vocab_size) * d + head),
            ("max_seq_len", pos),
            ("d_model", layers * (norms * norm + attn) + norm),
            (ffn_key, layers * ffn),
        ]
    }

    /// Bytes the model allocates when built: its f32 parameters and its constant
    /// position tables (RoPE's cos/sin, the sinusoidal table), by the key that sizes each.
    pub fn allocation_parts(&self) -> Vec<(&'static str, f64)> {
        let mut parts: Vec<(&'static str, f64)> = self
            .param_parts()
            .into_iter()
            .map(|(key, n)| (key, n * 4.0))
            .collect();
        let tables = match self.position {
            PositionKind::Rope => 2.0 * self.max_seq_len as f64 * self.rotary_dim() as f64 * 4.0,
            PositionKind::Sinusoidal => self.max_seq_len as f64 * self.d_model as f64 * 4.0,
            _ => 0.0,
        };
        parts.push(("max_seq_len", tables));
        parts
    }

    /// Fails, naming the key that asks for the most, when building this model would need
    /// more memory than the machine has available (see [`crate::memory`]).
    pub fn check_memory(&self) -> Result<(), ConfigError> {
        let parts = self.allocation_parts();
        let total: f64 = parts.iter().map(|(_, b)| b).sum();
        let Some(available) = crate::memory::available_bytes() else {
            return Ok(());
        };
        if total <= available as f64 {
            return Ok(());
        }
        let (key, largest) = parts
            .iter()
            .copied()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or(("d_model", total));
        Err(ConfigError {
            field: key,
            message: format!(
                "the model would need {} of memory ({} of it sized by {key}), but only {} is available",
                crate::memory::human_bytes(total),
                crate::memory::human_bytes(largest),
                crate::memory::human_bytes(available as f64)
            ),
        })
    }
}
