//! Position-wise feed-forward networks: GELU MLP (exact or tanh-approximated), SwiGLU and
//! GeGLU.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu_approximate, silu};
use burn::tensor::backend::Backend;
use ember_ops::FusedBackend;

use crate::config::MlpKind;
use crate::init::{Init, Role};
use crate::projection::Projection;

/// `down(gelu(up(x)))` (GPT-2; `gelu` exact or tanh-approximated), or with a `gate_proj` `down(act(gate(x)) * up(x))` where
/// `act` is SiLU (SwiGLU, Llama) or GELU (GeGLU, Gemma).
///
/// The projections are separate named `Linear`s rather than burn's `SwiGlu` (whose fused
/// `linear_inner`/`linear_outer` pair has no `down` projection and no Llama names), so
/// adapters can address `gate_proj`, `up_proj` and `down_proj` individually.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[d_model, d_ff]`, gated kinds only.
    pub gate_proj: Option<Projection<B>>,
    /// `[d_model, d_ff]`
    pub up_proj: Projection<B>,
    /// `[d_ff, d_model]`
    pub down_proj: Projection<B>,
    /// The gate's activation is GELU (GeGLU) rather than SiLU (SwiGLU).
    pub gelu_gate: bool,
    /// The ungated GELU uses the tanh approximation (GPT-2's `gelu_new`).
    pub gelu_tanh: bool,
}

impl<B: FusedBackend> Mlp<B> {
    /// Weights per `init` (`down_proj` is a residual output); biases zero.
    pub fn new(
        kind: MlpKind,
        d_model: usize,
        d_ff: usize,
        bias: bool,
        init: &Init,
        device: &B::Device,
    ) -> Self {
        let gated = matches!(kind, MlpKind::SwiGlu | MlpKind::GeGlu);
        Self {
            gate_proj: gated.then(|| init.linear(d_model, d_ff, bias, Role::Input, device)),
            up_proj: init.linear(d_model, d_ff, bias, Role::Input, device),
            down_proj: init.linear(d_ff, d_model, bias, Role::ResidualOutput, device),
            gelu_gate: kind == MlpKind::GeGlu,
            gelu_tanh: kind == MlpKind::GeluTanh,
        }
    }

    /// `[batch, seq, d_model]` → `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d_model] = x.dims();
        // One 2-D gemm per projection, forward and backward.
        self.forward_rows(x.reshape([batch * seq, d_model]))
            .reshape([batch, seq, d_model])
    }

    /// `[tokens, d_model]` → `[tokens, d_model]`
    pub fn forward_rows(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        // One low-precision copy for gate and up under mixed precision.
        let x = ember_ops::fused::autocast::to_compute(x);
        let hidden = match &self.gate_proj {
            Some(gate) => {
                let gate = gate.forward(x.clone());
                let gate = if self.gelu_gate {
                    ember_ops::fused::gelu(gate)
                } else {
                    silu(gate)
                };
                gate * self.up_proj.forward(x)
            }
            None if self.gelu_tanh => gelu_approximate(self.up_proj.forward(x)),
            None => ember_ops::fused::gelu(self.up_proj.forward(x)),
        };
        self.down_proj.forward(hidden)
    }
}
