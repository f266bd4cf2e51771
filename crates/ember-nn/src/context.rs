//! What a layer's forward pass reads besides its input: [`LayerContext`], built per layer
//! by [`crate::Transformer::hidden`] from the model-level [`crate::ForwardOptions`].

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ember_ops::{MaskMod, RopeTables};

use crate::attention::KvPrefix;
use crate::kv_cache::KvCache;
use crate::moe::MoeLosses;

/// The absolute position of each row's first token in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Positions {
    /// Every row starts at the same position.
    Uniform(usize),
    /// Row `r` starts at `starts[r]` (a cache holding sequences of different lengths).
    PerRow(Vec<usize>),
    /// Every token's own position, `[batch][seq]`: packed documents, each restarting at 0.
    PerToken(Vec<Vec<usize>>),
}

impl Positions {
    /// From the lengths a cache holds per row (none: position 0).
    pub fn from_lengths(lengths: &[usize]) -> Self {
        match lengths.first() {
            None => Positions::Uniform(0),
            Some(&first) if lengths.iter().all(|&l| l == first) => Positions::Uniform(first),
            Some(_) => Positions::PerRow(lengths.to_vec()),
        }
    }

    /// Row `r`'s start (its first token's position).
    pub fn row(&self, r: usize) -> usize {
        match self {
            Positions::Uniform(start) => *start,
            Positions::PerRow(starts) => starts[r],
            Positions::PerToken(rows) => rows[r].first().copied().unwrap_or(0),
        }
    }

    /// Row `r`'s positions when they are given token by token.
    pub fn tokens(&self, r: usize) -> Option<&[usize]> {
        match self {
            Positions::PerToken(rows) => Some(&rows[r]),
            _ => None,
        }
    }

    /// Every row `offset` positions later.
    pub fn shifted(self, offset: usize) -> Self {
        match self {
            _ if offset == 0 => self,
            Positions::Uniform(start) => Positions::Uniform(start + offset),
            Positions::PerRow(starts) => {
                Positions::PerRow(starts.iter().map(|s| s + offset).collect())
            }
            Positions::PerToken(rows) => Positions::PerToken(
                rows.into_iter()
                    .map(|row| row.into_iter().map(|p| p + offset).collect())
                    .collect(),
            ),
        }
    }

    /// The start shared by every row, if there is one.
    pub fn uniform(&self) -> Option<usize> {
        match self {
            Positions::Uniform(start) => Some(*start),
            Positions::PerRow(_) | Positions::PerToken(_) => None,
        }
    }
}

/// Observes or changes a forward pass at the seams between sub-layers: activation
/// capture, attention analysis, bottleneck adapters. Every method's default leaves the
/// pass unchanged. Tensors are `[batch, seq, d_model]`.
pub trait ForwardHooks<B: Backend> {
    /// `layer`'s attention branch output, before the residual add.
    fn attention_output(&mut self, layer: usize, out: Tensor<B, 3>) -> Tensor<B, 3> {
        let _ = layer;
        out
    }

    /// `layer`'s feed-forward branch output, before the residual add (where bottleneck
    /// adapters go).
    fn ffn_output(&mut self, layer: usize, out: Tensor<B, 3>) -> Tensor<B, 3> {
        let _ = layer;
        out
    }

    /// `layer`'s output, the input of the next layer.
    fn block_output(&mut self, layer: usize, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let _ = layer;
        x
    }

    /// Whether [`Self::attention_probs`] wants `layer`'s probabilities (computing them
    /// costs a `[seq_q, seq_kv]` matrix per head; attention's fast paths never form it).
    fn wants_attention_probs(&self, layer: usize) -> bool {
        let _ = layer;
        false
    }

    /// `layer`'s attention probabilities, `[batch, n_heads, seq_q, seq_kv]` (keys: the
    /// prefix, the cache, then this pass; rows padded on the left when cached lengths
    /// differ), when [`Self::wants_attention_probs`] says so.
    fn attention_probs(&mut self, layer: usize, probs: Tensor<B, 4>) {
        let _ = (layer, probs);
    }
}

/// Everything one layer reads besides its input.
pub struct LayerContext<'a, B: Backend> {
    /// The layer's index (the cache slot and the hooks' key).
    pub layer: usize,
    /// Where each row's first token sits.
    pub positions: &'a Positions,
    /// Rotary tables when the model uses RoPE.
    pub rope: Option<&'a RopeTables<B>>,
    /// Past keys/values; this pass's are appended.
    pub cache: Option<&'a mut dyn KvCache<B>>,
    /// Extra leading keys/values visible to every query (prefix tuning).
    pub prefix: Option<&'a KvPrefix<B>>,
    /// A mask combined with the causal one (packed documents), by absolute position.
    pub documents: Option<&'a MaskMod>,
    /// Collects MoE auxiliary losses and expert loads.
    pub moe: Option<&'a mut MoeLosses<B>>,
    /// Observers and modifiers of sub-layer outputs.
    pub hooks: Option<&'a mut dyn ForwardHooks<B>>,
}

impl<'a, B: Backend> LayerContext<'a, B> {
    /// A context for a plain pass: position 0, no cache, prefix, mask, tally or hooks.
    pub fn plain(layer: usize, positions: &'a Positions, rope: Option<&'a RopeTables<B>>) -> Self {
        Self {
            layer,
            positions,
            rope,
            cache: None,
            prefix: None,
            documents: None,
            moe: None,
            hooks: None,
        }
    }

    /// Passes `out` through the hooks' [`ForwardHooks::attention_output`].
    pub fn hook_attention(&mut self, out: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.hooks.as_deref_mut() {
            Some(hooks) => hooks.attention_output(self.layer, out),
            None => out,
        }
    }

    /// Passes `out` through the hooks' [`ForwardHooks::ffn_output`].
    pub fn hook_ffn(&mut self, out: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.hooks.as_deref_mut() {
            Some(hooks) => hooks.ffn_output(self.layer, out),
            None => out,
        }
    }
}
