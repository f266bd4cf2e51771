//! How the fused norms and GELU run again in the backward pass under burn's
//! `BalancedCheckpointing`, Ember's `selective` activation checkpointing.
//!
//! The ops are marked memory bound: cheap to recompute, expensive to keep. With
//! `BalancedCheckpointing`, an op that needs such an output in its backward pass (the
//! matrix product that follows a norm or an activation) gets it by running the op again
//! from its inputs, which burn keeps; the output itself is freed after the forward pass.
//! With `NoCheckpointing` (burn's default) the marks change nothing.

use std::marker::PhantomData;

use burn_autodiff::NodeId;
use burn_autodiff::checkpoint::retro_forward::RetroForward;
use burn_autodiff::checkpoint::state::BackwardStates;

use super::FusedBackend;

/// GELU of the input node's output.
#[derive(Debug)]
pub(super) struct RetroGelu<B> {
    pub(super) x: NodeId,
    pub(super) _backend: PhantomData<B>,
}

impl<B: FusedBackend> RetroForward for RetroGelu<B> {
    fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
        let x = states.get_state::<B::FloatTensorPrimitive>(&self.x);
        states.save(out_node, super::autocast::gelu_in_f32::<B>(x));
    }
}

/// The kind of normalisation [`RetroNorm`] recomputes.
#[derive(Debug, Clone, Copy)]
pub(super) enum NormKind {
    Layer,
    Rms,
}

/// LayerNorm or RMSNorm of the input nodes' outputs (`bias` for LayerNorm only).
#[derive(Debug)]
pub(super) struct RetroNorm<B> {
    pub(super) kind: NormKind,
    pub(super) x: NodeId,
    pub(super) weight: NodeId,
    pub(super) bias: Option<NodeId>,
    pub(super) eps: f64,
    pub(super) _backend: PhantomData<B>,
}

impl<B: FusedBackend> RetroForward for RetroNorm<B> {
    fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
        let x = states.get_state::<B::FloatTensorPrimitive>(&self.x);
        let weight = states.get_state::<B::FloatTensorPrimitive>(&self.weight);
        let out = match self.kind {
            NormKind::Layer => {
                let bias = self
                    .bias
                    .map(|id| states.get_state::<B::FloatTensorPrimitive>(&id));
                B::fused_layer_norm(x, weight, bias, self.eps)
            }
            NormKind::Rms => B::fused_rms_norm(x, weight, self.eps),
        };
        states.save(out_node, out);
    }
}
