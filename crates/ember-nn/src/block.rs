//! One transformer block: attention and a feed-forward network (dense or MoE), with pre-,
//! post- or sandwich norms and an optional parallel residual.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ember_ops::FusedBackend;
use ember_ops::fused::autocast;

use crate::attention::Attention;
use crate::config::{NormPlacement, TransformerConfig};
use crate::context::LayerContext;
use crate::init::Init;
use crate::mlp::Mlp;
use crate::moe::Moe;
use crate::norm::Norm;

/// With `f` the attention, then the feed-forward network:
/// - pre-norm: `x = x + drop(f(norm(x)))`
/// - post-norm: `x = norm(x + drop(f(x)))`
/// - sandwich: `x = x + drop(post_norm(f(norm(x))))`
/// - parallel residual: both branches read the block input,
///   `x = x + drop(attn(attn_norm(x))) + drop(ffn(mlp_norm(x)))` (GPT-NeoX).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub attn_norm: Norm<B>,
    pub attn: Attention<B>,
    /// Sandwich placement only.
    pub post_attn_norm: Option<Norm<B>>,
    /// Absent with post-norm and a parallel residual, where one norm follows the sum.
    pub mlp_norm: Option<Norm<B>>,
    /// The dense feed-forward network (absent with MoE).
    pub mlp: Option<Mlp<B>>,
    /// The Mixture-of-Experts feed-forward network.
    pub moe: Option<Moe<B>>,
    /// Sandwich placement only.
    pub post_mlp_norm: Option<Norm<B>>,
    pub dropout: Dropout,
    /// `true` for post-norm placement.
    pub post_norm: bool,
    pub parallel_residual: bool,
}

impl<B: FusedBackend> Block<B> {
    /// A block initialised per [`crate::init`].
    pub fn new(config: &TransformerConfig, device: &B::Device) -> Self {
        let init = Init::new(config);
        let norm = || Norm::from_config(config, device);
        let sandwich = config.norm_placement == NormPlacement::Sandwich;
        Self {
            attn_norm: norm(),
            attn: Attention::new(config, &init, device),
            post_attn_norm: sandwich.then(norm),
            mlp_norm: (config.norm_placement != NormPlacement::Post || !config.parallel_residual)
                .then(norm),
            mlp: config.moe.is_none().then(|| {
                Mlp::new(
                    config.mlp,
                    config.d_model,
                    config.d_ff,
                    config.bias,
                    &init,
                    device,
                )
            }),
            moe: config
                .moe
                .as_ref()
                .map(|moe| Moe::new(moe, config.d_model, config.d_ff, config.bias, &init, device)),
            post_mlp_norm: sandwich.then(norm),
            dropout: DropoutConfig::new(config.dropout).init(),
            post_norm: config.norm_placement == NormPlacement::Post,
            parallel_residual: config.parallel_residual,
        }
    }

    /// The feed-forward network on `[batch, seq, d_model]`; MoE layers report their
    /// auxiliary losses to `ctx.moe`; the output passes through `ctx`'s hooks.
    fn ffn(&self, x: Tensor<B, 3>, ctx: &mut LayerContext<'_, B>) -> Tensor<B, 3> {
        let residual_dtype = x.dtype();
        let out = match (&self.mlp, &self.moe) {
            (Some(mlp), _) => mlp.forward(x),
            (None, Some(moe)) => {
                let [batch, seq, d_model] = x.dims();
                let (out, aux) = moe.forward_rows(x.reshape([batch * seq, d_model]));
                if let Some(losses) = ctx.moe.as_deref_mut() {
                    losses.push(aux);
                }
                out.reshape([batch, seq, d_model])
            }
            (None, None) => unreachable!("a block has a dense or an MoE feed-forward network"),
        };
        ctx.hook_ffn(autocast::cast_to(out, residual_dtype.into()))
    }

    /// The attention branch on `[batch, seq, d_model]`, through `ctx`'s hooks.
    fn attn(&self, x: Tensor<B, 3>, ctx: &mut LayerContext<'_, B>) -> Tensor<B, 3> {
        let residual_dtype = x.dtype();
        let out = self.attn.forward(x, ctx);
        ctx.hook_attention(autocast::cast_to(out, residual_dtype.into()))
    }

    /// `[batch, seq, d_model]` → `[batch, seq, d_model]`; see [`Attention::forward`].
    /// The residual stream keeps its dtype (f32 under mixed precision): the branches'
    /// outputs are cast to it before they are added.
    pub fn forward(&self, x: Tensor<B, 3>, ctx: &mut LayerContext<'_, B>) -> Tensor<B, 3> {
        let maybe_norm = |norm: &Option<Norm<B>>, y: Tensor<B, 3>| match norm {
            Some(norm) => norm.forward(y),
            None => y,
        };
        if self.post_norm {
            if self.parallel_residual {
                let branches = self.attn(x.clone(), ctx) + self.ffn(x.clone(), ctx);
                return self.attn_norm.forward(x + self.dropout.forward(branches));
            }
            let attn_out = self.attn(x.clone(), ctx);
            let x = self.attn_norm.forward(x + self.dropout.forward(attn_out));
            let ffn = self.ffn(x.clone(), ctx);
            return maybe_norm(&self.mlp_norm, x + self.dropout.forward(ffn));
        }
        let attn_out = self.attn(self.attn_norm.forward(x.clone()), ctx);
        let attn_out = maybe_norm(&self.post_attn_norm, attn_out);
        if self.parallel_residual {
            let ffn_out = self.ffn(maybe_norm(&self.mlp_norm, x.clone()), ctx);
            let ffn_out = maybe_norm(&self.post_mlp_norm, ffn_out);
            return x + self.dropout.forward(attn_out) + self.dropout.forward(ffn_out);
        }
        let x = x + self.dropout.forward(attn_out);
        let ffn_out = self.ffn(maybe_norm(&self.mlp_norm, x.clone()), ctx);
        x + self
            .dropout
            .forward(maybe_norm(&self.post_mlp_norm, ffn_out))
    }
}
