//! Position-wise feed-forward networks: GELU MLP and SwiGLU.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use ember_ops::FusedBackend;

use crate::attention::linear;
use crate::config::MlpKind;

/// `down(gelu(up(x)))` (GPT-2) or, with a `gate_proj`, `down(silu(gate(x)) * up(x))`
/// (Llama's SwiGLU).
///
/// The three projections are separate named `Linear`s rather than burn's `SwiGlu` (whose
/// fused `linear_inner`/`linear_outer` pair has no `down` projection and no Llama names),
/// so adapters can address `gate_proj`, `up_proj` and `down_proj` individually.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[d_model, d_ff]`, SwiGLU only.
    pub gate_proj: Option<Linear<B>>,
    /// `[d_model, d_ff]`
    pub up_proj: Linear<B>,
    /// `[d_ff, d_model]`
    pub down_proj: Linear<B>,
}

impl<B: FusedBackend> Mlp<B> {
    /// Weights normal(0, `std`); `down_proj` uses `residual_std`; biases zero.
    pub fn new(
        kind: MlpKind,
        d_model: usize,
        d_ff: usize,
        bias: bool,
        std: f64,
        residual_std: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            gate_proj: (kind == MlpKind::SwiGlu).then(|| linear(d_model, d_ff, bias, std, device)),
            up_proj: linear(d_model, d_ff, bias, std, device),
            down_proj: linear(d_ff, d_model, bias, residual_std, device),
        }
    }

    /// `[batch, seq, d_model]` → `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d_model] = x.dims();
        // One 2-D gemm per projection, forward and backward.
        let x = x.reshape([batch * seq, d_model]);
        let hidden = match &self.gate_proj {
            Some(gate) => silu(gate.forward(x.clone())) * self.up_proj.forward(x),
            None => ember_ops::fused::gelu(self.up_proj.forward(x)),
        };
        self.down_proj
            .forward(hidden)
            .reshape([batch, seq, d_model])
    }
}
