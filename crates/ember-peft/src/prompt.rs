//! Prompt learning: trainable vectors in front of the sequence, the model untouched.
//!
//! - [`PrefixTuning`] (Li & Liang 2021): per layer, `n_virtual` keys and values that every
//!   query attends to, in `peft`'s layout (`prompt_embeddings` `[n_virtual, n_layers · 2 ·
//!   n_kv_heads · head_dim]`: for each virtual token, layer 0's key, layer 0's value, layer
//!   1's key, …). As in `peft` + `transformers`, the virtual tokens count as cached
//!   positions: the real tokens start at position `n_virtual`. `peft`'s reparameterisation
//!   MLP (`prefix_projection`) is saved by `peft` as its output, which is what this reads.
//! - [`PromptTuning`] (Lester et al. 2021): `n_virtual` soft-prompt embeddings placed before
//!   the token embeddings (positions `0..n_virtual`, the real tokens after them); the
//!   logits returned are the real tokens' rows only.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use ember_nn::{ForwardOptions, FusedBackend, KvPrefix, Positions, Transformer, TransformerConfig};

use crate::targets::PeftError;

/// Per-layer key/value prefixes (see the module docs).
#[derive(Module, Debug)]
pub struct PrefixTuning<B: Backend> {
    /// `[n_virtual, n_layers · 2 · n_kv_heads · head_dim]`
    pub embeddings: Param<Tensor<B, 2>>,
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl<B: FusedBackend> PrefixTuning<B> {
    /// `n_virtual` prefixes for `config`'s model, drawn as `peft` draws its embedding
    /// (standard normal).
    pub fn new(config: &TransformerConfig, n_virtual: usize, device: &B::Device) -> Self {
        let width = config.n_layers * 2 * config.n_kv_heads * config.head_dim();
        Self {
            embeddings: Initializer::Normal {
                mean: 0.0,
                std: 1.0,
            }
            .init([n_virtual, width], device),
            n_layers: config.n_layers,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim(),
        }
    }

    /// From `peft`'s `prompt_embeddings`; `Err` when its width is not `config`'s
    /// `n_layers · 2 · n_kv_heads · head_dim`.
    pub fn from_embeddings(
        config: &TransformerConfig,
        embeddings: Tensor<B, 2>,
    ) -> Result<Self, PeftError> {
        let width = config.n_layers * 2 * config.n_kv_heads * config.head_dim();
        let [n_virtual, found] = embeddings.dims();
        if found != width || n_virtual == 0 {
            return Err(PeftError(format!(
                "prompt_embeddings: shape [{n_virtual}, {found}], expected [n_virtual ≥ 1, {width}] \
                 (n_layers {} · 2 · n_kv_heads {} · head_dim {})",
                config.n_layers,
                config.n_kv_heads,
                config.head_dim()
            )));
        }
        Ok(Self {
            embeddings: Param::from_tensor(embeddings),
            n_layers: config.n_layers,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim(),
        })
    }

    pub fn n_virtual(&self) -> usize {
        self.embeddings.dims()[0]
    }

    /// Layer `l`'s keys and values for a batch of `batch` rows, `[batch, n_kv_heads,
    /// n_virtual, head_dim]` each.
    pub fn prefixes(&self, batch: usize) -> Vec<KvPrefix<B>> {
        let n = self.n_virtual();
        let (kv, hd) = (self.n_kv_heads, self.head_dim);
        // `[n, layers · 2, kv, hd]` → `[layers · 2, kv, n, hd]`
        let all = self
            .embeddings
            .val()
            .reshape([n, self.n_layers * 2, kv, hd])
            .permute([1, 2, 0, 3]);
        let part = |i: usize| all.clone().narrow(0, i, 1).expand([batch, kv, n, hd]);
        (0..self.n_layers)
            .map(|l| KvPrefix {
                key: part(2 * l),
                value: part(2 * l + 1),
            })
            .collect()
    }

    /// Logits `[batch, seq, vocab]` of `tokens` after the prefixes.
    pub fn forward(&self, model: &Transformer<B>, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let prefixes = self.prefixes(tokens.dims()[0]);
        model.forward(
            tokens,
            ForwardOptions {
                prefixes: Some(&prefixes),
                position_offset: self.n_virtual(),
                ..Default::default()
            },
        )
    }
}

/// Soft-prompt embeddings before the tokens (see the module docs).
#[derive(Module, Debug)]
pub struct PromptTuning<B: Backend> {
    /// `[n_virtual, d_model]`
    pub embeddings: Param<Tensor<B, 2>>,
}

impl<B: FusedBackend> PromptTuning<B> {
    /// `n_virtual` vectors drawn from `peft`'s `RANDOM` init (standard normal).
    pub fn new(config: &TransformerConfig, n_virtual: usize, device: &B::Device) -> Self {
        Self {
            embeddings: Initializer::Normal {
                mean: 0.0,
                std: 1.0,
            }
            .init([n_virtual, config.d_model], device),
        }
    }

    /// From `peft`'s `prompt_embeddings` `[n_virtual, d_model]`.
    pub fn from_embeddings(
        config: &TransformerConfig,
        embeddings: Tensor<B, 2>,
    ) -> Result<Self, PeftError> {
        let [n_virtual, width] = embeddings.dims();
        if width != config.d_model || n_virtual == 0 {
            return Err(PeftError(format!(
                "prompt_embeddings: shape [{n_virtual}, {width}], expected [n_virtual ≥ 1, {}] \
                 (d_model)",
                config.d_model
            )));
        }
        Ok(Self {
            embeddings: Param::from_tensor(embeddings),
        })
    }

    pub fn n_virtual(&self) -> usize {
        self.embeddings.dims()[0]
    }

    /// Logits `[batch, seq, vocab]` of `tokens` (their rows only) after the soft prompt.
    pub fn forward(&self, model: &Transformer<B>, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        let n = self.n_virtual();
        let d = model.config().d_model;
        let prompt = self.embeddings.val().unsqueeze::<3>().expand([batch, n, d]);
        let prompt = model.add_positions(prompt, &Positions::Uniform(0));
        let real = model.embed_at(tokens, &Positions::Uniform(n));
        let hidden = model.hidden(
            Tensor::cat(vec![prompt, real], 1),
            ForwardOptions::default(),
        );
        model.logits(hidden.narrow(1, n, seq))
    }
}
