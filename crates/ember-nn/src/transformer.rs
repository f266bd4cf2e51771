//! The decoder-only transformer language model.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, Initializer, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use ember_ops::FusedBackend;
use ember_ops::RopeTables;

use crate::attention::{KvPrefix, linear};
use crate::block::Block;
use crate::config::{ConfigError, PositionKind, TransformerConfig};
use crate::kv_cache::KvCache;
use crate::norm::Norm;

/// Token embedding → blocks → final norm → logits.
#[derive(Module, Debug)]
pub struct Transformer<B: Backend> {
    /// `[vocab_size, d_model]`
    pub tok_embeddings: Embedding<B>,
    /// `[max_seq_len, d_model]`, learned positions only.
    pub pos_embeddings: Option<Embedding<B>>,
    pub layers: Vec<Block<B>>,
    pub final_norm: Norm<B>,
    /// `[d_model, vocab_size]`; `None` when tied to `tok_embeddings`.
    pub lm_head: Option<Linear<B>>,
    pub dropout: Dropout,
    /// Rotary tables (constants, not parameters), RoPE only.
    pub rope: Option<RopeTables<B>>,
    #[module(skip)]
    config: TransformerConfig,
}

/// Optional inputs of a forward pass beyond the token ids.
pub struct ForwardOptions<'a, B: Backend> {
    /// Past keys/values; the pass starts at position `cache.len()` and appends to it.
    pub cache: Option<&'a mut dyn KvCache<B>>,
    /// Per-layer extra leading keys/values (prefix tuning), one per layer.
    pub prefixes: Option<&'a [KvPrefix<B>]>,
}

impl<B: Backend> Default for ForwardOptions<'_, B> {
    fn default() -> Self {
        Self {
            cache: None,
            prefixes: None,
        }
    }
}

impl<B: FusedBackend> Transformer<B> {
    /// A freshly initialised model (see [`crate::init`]); the config is validated first.
    pub fn new(config: &TransformerConfig, device: &B::Device) -> Result<Self, ConfigError> {
        config.validate()?;
        let std = config.init_std;
        let embedding = |rows: usize| Embedding {
            weight: Initializer::Normal { mean: 0.0, std }.init([rows, config.d_model], device),
        };
        let learned = config.position == PositionKind::Learned;
        let model = Self {
            tok_embeddings: embedding(config.vocab_size),
            pos_embeddings: learned.then(|| embedding(config.max_seq_len)),
            layers: (0..config.n_layers)
                .map(|_| Block::new(config, device))
                .collect(),
            final_norm: Norm::new(
                config.norm,
                config.d_model,
                config.norm_eps,
                config.bias,
                device,
            ),
            lm_head: (!config.tie_embeddings)
                .then(|| linear(config.d_model, config.vocab_size, false, std, device)),
            dropout: DropoutConfig::new(config.dropout).init(),
            rope: (!learned).then(|| {
                RopeTables::new(
                    config.head_dim(),
                    config.max_seq_len,
                    config.rope_theta,
                    device,
                )
            }),
            config: config.clone(),
        };
        Ok(crate::params::assign_stable_ids(model))
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// Token (and learned position) embeddings.
    ///
    /// - `tokens`: `[batch, seq]`, the first at absolute position `start`
    /// - returns `[batch, seq, d_model]`
    pub fn embed(&self, tokens: Tensor<B, 2, Int>, start: usize) -> Tensor<B, 3> {
        let [_, seq] = tokens.dims();
        let x = self.tok_embeddings.forward(tokens);
        match &self.pos_embeddings {
            Some(pos) => {
                let rows = pos.weight.val().narrow(0, start, seq);
                x + rows.unsqueeze::<3>()
            }
            None => x,
        }
    }

    /// Runs the blocks and the final norm over embeddings (from [`Self::embed`], possibly
    /// with learned soft-prompt vectors prepended).
    ///
    /// - `x`: `[batch, seq, d_model]`
    /// - returns the final hidden states `[batch, seq, d_model]`
    pub fn hidden(&self, x: Tensor<B, 3>, options: ForwardOptions<'_, B>) -> Tensor<B, 3> {
        let ForwardOptions {
            mut cache,
            prefixes,
        } = options;
        let start = cache.as_ref().map_or(0, |c| c.len());
        let mut x = self.dropout.forward(x);
        for (layer, block) in self.layers.iter().enumerate() {
            let prefix = prefixes.map(|p| &p[layer]);
            let cache: Option<&mut dyn KvCache<B>> = match cache {
                Some(ref mut c) => Some(&mut **c),
                None => None,
            };
            x = block.forward(x, start, self.rope.as_ref(), cache, layer, prefix);
        }
        self.final_norm.forward(x)
    }

    /// Output projection: `[batch, seq, d_model]` → `[batch, seq, vocab_size]`.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d_model] = hidden.dims();
        let hidden = hidden.reshape([batch * seq, d_model]);
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(self.tok_embeddings.weight.val().transpose()),
        };
        logits.reshape([batch, seq, self.config.vocab_size])
    }

    /// Logits for every position.
    ///
    /// - `tokens`: `[batch, seq]` with `cache.len() + seq <= max_seq_len`
    /// - returns `[batch, seq, vocab_size]`
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        options: ForwardOptions<'_, B>,
    ) -> Tensor<B, 3> {
        let start = options.cache.as_ref().map_or(0, |c| c.len());
        let x = self.embed(tokens, start);
        self.logits(self.hidden(x, options))
    }
}
