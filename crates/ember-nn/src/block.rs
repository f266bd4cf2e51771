//! One pre-norm transformer block.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ember_ops::FusedBackend;
use ember_ops::RopeTables;

use crate::attention::{Attention, KvPrefix};
use crate::config::TransformerConfig;
use crate::kv_cache::KvCache;
use crate::mlp::Mlp;
use crate::norm::Norm;

/// `x = x + drop(attn(attn_norm(x)))`, then `x = x + drop(mlp(mlp_norm(x)))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub attn_norm: Norm<B>,
    pub attn: Attention<B>,
    pub mlp_norm: Norm<B>,
    pub mlp: Mlp<B>,
    pub dropout: Dropout,
}

impl<B: FusedBackend> Block<B> {
    /// A block initialised per [`crate::init`].
    pub fn new(config: &TransformerConfig, device: &B::Device) -> Self {
        let (std, residual_std) = (config.init_std, crate::init::residual_std(config));
        let norm = || {
            Norm::new(
                config.norm,
                config.d_model,
                config.norm_eps,
                config.bias,
                device,
            )
        };
        Self {
            attn_norm: norm(),
            attn: Attention::new(
                config.d_model,
                config.n_heads,
                config.n_kv_heads,
                config.bias,
                std,
                residual_std,
                device,
            ),
            mlp_norm: norm(),
            mlp: Mlp::new(
                config.mlp,
                config.d_model,
                config.d_ff,
                config.bias,
                std,
                residual_std,
                device,
            ),
            dropout: DropoutConfig::new(config.dropout).init(),
        }
    }

    /// `[batch, seq, d_model]` → `[batch, seq, d_model]`; see [`Attention::forward`].
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        start: usize,
        rope: Option<&RopeTables<B>>,
        cache: Option<&mut dyn KvCache<B>>,
        layer: usize,
        prefix: Option<&KvPrefix<B>>,
    ) -> Tensor<B, 3> {
        let attn = self.attn.forward(
            self.attn_norm.forward(x.clone()),
            start,
            rope,
            cache,
            layer,
            prefix,
        );
        let x = x + self.dropout.forward(attn);
        let mlp = self.mlp.forward(self.mlp_norm.forward(x.clone()));
        x + self.dropout.forward(mlp)
    }
}
