//! The decoder-only transformer language model.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_ops::{FusedBackend, MaskMod, RopeTables};

use crate::context::{ForwardHooks, LayerContext, Positions};

use crate::attention::KvPrefix;
use crate::block::Block;
use crate::checkpoint::BlockCheckpoints;
use crate::config::{ConfigError, PositionKind, TransformerConfig};
use crate::init::{Init, Role};
use crate::kv_cache::KvCache;
use crate::mlp::Mlp;
use crate::moe::MoeLosses;
use crate::norm::Norm;
use crate::projection::Projection;

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
    pub lm_head: Option<Projection<B>>,
    pub dropout: Dropout,
    /// Rotary tables (constants, not parameters), RoPE only.
    pub rope: Option<RopeTables<B>>,
    /// `[max_seq_len, d_model]` sinusoidal table (a constant), sinusoidal positions only.
    pub sinusoidal: Option<Tensor<B, 2>>,
    #[module(skip)]
    config: TransformerConfig,
}

/// Optional inputs of a forward pass beyond the token ids.
pub struct ForwardOptions<'a, B: Backend> {
    /// Past keys/values; each row continues after its cached positions and appends to
    /// them.
    pub cache: Option<&'a mut dyn KvCache<B>>,
    /// Per-layer extra leading keys/values (prefix tuning), one per layer.
    pub prefixes: Option<&'a [KvPrefix<B>]>,
    /// A mask combined with the causal one in every layer, e.g. [`MaskMod::Document`]
    /// for packed sequences (indexed by absolute position).
    pub documents: Option<&'a MaskMod>,
    /// Collects the auxiliary losses and expert loads of MoE layers.
    pub moe: Option<&'a mut MoeLosses<B>>,
    /// Observers and modifiers of every layer's sub-layer outputs.
    pub hooks: Option<&'a mut dyn ForwardHooks<B>>,
    /// Added to every row's position: the number of positions before the first token
    /// that are not in the cache (prefix tuning's virtual tokens, which `transformers`
    /// counts as cached positions).
    pub position_offset: usize,
    /// Every token's position, in place of those the cache implies: packed documents
    /// ([`Positions::PerToken`]), with [`MaskMod::Document`] in `documents`.
    pub positions: Option<Positions>,
    /// Activation checkpointing: the blocks its policy chooses run without autodiff
    /// records and are recorded here to run again in [`BlockCheckpoints::backward`].
    pub checkpoints: Option<&'a mut BlockCheckpoints<B>>,
}

impl<B: Backend> Default for ForwardOptions<'_, B> {
    fn default() -> Self {
        Self {
            cache: None,
            prefixes: None,
            documents: None,
            moe: None,
            hooks: None,
            position_offset: 0,
            positions: None,
            checkpoints: None,
        }
    }
}

impl<B: FusedBackend> Transformer<B> {
    /// A freshly initialised model (see [`crate::init`]); the config is validated first.
    pub fn new(config: &TransformerConfig, device: &B::Device) -> Result<Self, ConfigError> {
        config.validate()?;
        config.check_memory()?;
        let init = Init::new(config);
        let d_model = config.d_model;
        let model = Self {
            tok_embeddings: init.embedding(config.vocab_size, d_model, device),
            pos_embeddings: (config.position == PositionKind::Learned)
                .then(|| init.embedding(config.max_seq_len, d_model, device)),
            layers: (0..config.n_layers)
                .map(|_| Block::new(config, device))
                .collect(),
            final_norm: Norm::from_config(config, device),
            lm_head: (!config.tie_embeddings)
                .then(|| init.linear(d_model, config.vocab_size, false, Role::Input, device)),
            dropout: DropoutConfig::new(config.dropout).init(),
            rope: (config.position == PositionKind::Rope)
                .then(|| RopeTables::with_config(config.rope_config(), config.max_seq_len, device)),
            sinusoidal: (config.position == PositionKind::Sinusoidal).then(|| {
                let table = ember_ops::positions::sinusoidal_table(config.max_seq_len, d_model);
                Tensor::from_data(
                    TensorData::new(table, [config.max_seq_len, d_model]),
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

    /// Replaces the configuration after surgery that changed the shapes it describes
    /// (see [`crate::prune_heads`]).
    pub(crate) fn set_config(&mut self, config: TransformerConfig) {
        self.config = config;
    }

    /// Token (and learned position) embeddings.
    ///
    /// - `tokens`: `[batch, seq]`, the first at absolute position `start`
    /// - returns `[batch, seq, d_model]`
    pub fn embed(&self, tokens: Tensor<B, 2, Int>, start: usize) -> Tensor<B, 3> {
        self.embed_at(tokens, &Positions::Uniform(start))
    }

    /// [`Self::embed`] with each row's first token at its own position.
    pub fn embed_at(&self, tokens: Tensor<B, 2, Int>, positions: &Positions) -> Tensor<B, 3> {
        self.add_positions(self.tok_embeddings.forward(tokens), positions)
    }

    /// Adds the learned or sinusoidal position embeddings (nothing for RoPE, ALiBi or no
    /// positions) to `x`: `[batch, seq, d_model]`, row `r` starting at
    /// `positions.row(r)`. Soft prompts go through this like token embeddings.
    pub fn add_positions(&self, x: Tensor<B, 3>, positions: &Positions) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let table = match (&self.pos_embeddings, &self.sinusoidal) {
            (Some(pos), _) => pos.weight.val(),
            (None, Some(table)) => table.clone(),
            (None, None) => return x,
        };
        let rows = |start: usize| table.clone().narrow(0, start, seq).unsqueeze::<3>();
        if let Positions::PerToken(at) = positions {
            let ids: Vec<i64> = at.iter().flatten().map(|&p| p as i64).collect();
            let index =
                Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [batch * seq]), &x.device());
            let d_model = x.dims()[2];
            return x + table.select(0, index).reshape([batch, seq, d_model]);
        }
        match positions.uniform() {
            Some(start) => x + rows(start),
            None => x + Tensor::cat((0..batch).map(|r| rows(positions.row(r))).collect(), 0),
        }
    }

    /// The positions a pass over `cache` starts at (0 without one).
    pub fn positions(cache: Option<&dyn KvCache<B>>) -> Positions {
        cache.map_or(Positions::Uniform(0), |c| {
            Positions::from_lengths(&c.lengths())
        })
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
            documents,
            mut moe,
            mut hooks,
            position_offset: options_offset,
            positions,
            mut checkpoints,
        } = options;
        let positions =
            positions.unwrap_or_else(|| Self::positions(cache.as_deref()).shifted(options_offset));
        let mut x = self.dropout.forward(x);
        for (layer, block) in self.layers.iter().enumerate() {
            let mut ctx = LayerContext {
                layer,
                positions: &positions,
                rope: self.rope.as_ref(),
                // Explicit reborrows: each shortens the trait object's lifetime to this layer's.
                cache: match cache {
                    Some(ref mut c) => Some(&mut **c),
                    None => None,
                },
                prefix: prefixes.map(|p| &p[layer]),
                documents,
                moe: moe.as_deref_mut(),
                hooks: match hooks {
                    Some(ref mut h) => Some(&mut **h),
                    None => None,
                },
            };
            x = match checkpoints.as_deref_mut() {
                Some(checkpoints) => {
                    let seed = checkpoints.before_block(layer, &x.device());
                    if checkpoints.recomputes(&ctx, self.layers.len()) {
                        checkpoints.forward(block, x, &mut ctx, seed)
                    } else {
                        checkpoints.plain(block, x, &mut ctx, self.layers.len())
                    }
                }
                None => block.forward(x, &mut ctx),
            };
            if let Some(hooks) = &mut hooks {
                x = hooks.block_output(layer, x);
            }
        }
        if let Some(checkpoints) = checkpoints {
            checkpoints.after_blocks(self.layers.len(), &x.device());
        }
        self.final_norm.forward(x)
    }

    /// Every [`Projection`] with its module path (`layers.0.attn.q_proj`, …,
    /// `layers.1.moe.experts.0.up_proj`, `layers.1.moe.router`, `lm_head`), in model order:
    /// where fine-tuning methods attach adapters.
    pub fn projections_mut(&mut self) -> Vec<(String, &mut Projection<B>)> {
        fn mlp<'m, B: Backend>(
            prefix: String,
            mlp: &'m mut Mlp<B>,
            out: &mut Vec<(String, &'m mut Projection<B>)>,
        ) {
            if let Some(gate) = mlp.gate_proj.as_mut() {
                out.push((format!("{prefix}.gate_proj"), gate));
            }
            out.push((format!("{prefix}.up_proj"), &mut mlp.up_proj));
            out.push((format!("{prefix}.down_proj"), &mut mlp.down_proj));
        }
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let attn = &mut layer.attn;
            out.push((format!("layers.{i}.attn.q_proj"), &mut attn.q_proj));
            out.push((format!("layers.{i}.attn.k_proj"), &mut attn.k_proj));
            out.push((format!("layers.{i}.attn.v_proj"), &mut attn.v_proj));
            out.push((format!("layers.{i}.attn.o_proj"), &mut attn.o_proj));
            if let Some(dense) = layer.mlp.as_mut() {
                mlp(format!("layers.{i}.mlp"), dense, &mut out);
            }
            if let Some(moe) = layer.moe.as_mut() {
                out.push((format!("layers.{i}.moe.router"), &mut moe.router));
                for (e, expert) in moe.experts.iter_mut().enumerate() {
                    mlp(format!("layers.{i}.moe.experts.{e}"), expert, &mut out);
                }
            }
        }
        if let Some(head) = self.lm_head.as_mut() {
            out.push(("lm_head".to_string(), head));
        }
        out
    }

    /// Output projection: `[batch, seq, d_model]` → `[batch, seq, vocab_size]`.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d_model] = hidden.dims();
        let hidden = hidden.reshape([batch * seq, d_model]);
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => ember_ops::fused::matmul(hidden, self.tok_embeddings.weight.val().transpose()),
        };
        // f32 logits under mixed precision: the loss is computed in f32.
        ember_ops::fused::autocast::to_f32(logits).reshape([batch, seq, self.config.vocab_size])
    }

    /// Logits for every position.
    ///
    /// - `tokens`: `[batch, seq]`; each row's cached length `+ seq <= max_seq_len`
    /// - returns `[batch, seq, vocab_size]`
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        options: ForwardOptions<'_, B>,
    ) -> Tensor<B, 3> {
        let positions = options.positions.clone().unwrap_or_else(|| {
            Self::positions(options.cache.as_deref()).shifted(options.position_offset)
        });
        let x = self.embed_at(tokens, &positions);
        self.logits(self.hidden(x, options))
    }
}
