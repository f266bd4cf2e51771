//! Folding an adapter into its projection's weight, and taking it back out.
//!
//! With `W` `[d_in, d_out]`, an [`ember_nn::Adapter`] computes
//! `((s_in⊙x)·W + b + scaling·((s_in⊙x)·down⊙e)·up)⊙s_out`, which is the plain projection
//! with `W' = diag(s_in)·(W + scaling·down·diag(e)·up)·diag(s_out)` and `b' = b⊙s_out`
//! (dropout aside, which merging drops as inference does). DoRA's magnitude then scales
//! each column of the adapted weight to its length. A block-quantized weight (QLoRA) is
//! dequantized first: the merged projection is f32.

use burn::module::Param;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ember_nn::{Adapter, FusedBackend, Projection};

/// `scaling · down · diag(e) · up`, `[d_in, d_out]`; `None` without a low-rank part.
fn delta<B: Backend>(adapter: &Adapter<B>) -> Option<Tensor<B, 2>> {
    let (down, up) = (adapter.down.as_ref()?, adapter.up.as_ref()?);
    let down = match &adapter.rank_scale {
        Some(e) => down.val() * e.val().unsqueeze(),
        None => down.val(),
    };
    Some(down.matmul(up.val()).mul_scalar(adapter.scaling))
}

/// The plain projection `projection` computes with its adapter (the adapter removed);
/// `projection` itself when it has none. A quantized weight comes out dequantized (f32),
/// with or without an adapter.
pub fn merged<B: FusedBackend>(projection: &Projection<B>) -> Projection<B> {
    let Some(adapter) = &projection.adapter else {
        if projection.quantized.is_none() {
            return projection.clone();
        }
        return Projection::new(
            Param::from_tensor(projection.base_weight()),
            projection.bias.clone(),
        );
    };
    let mut w = projection.base_weight();
    if let Some(delta) = delta(adapter) {
        w = w + delta;
    }
    if let Some(m) = &adapter.magnitude {
        // DoRA: every column of the adapted weight scaled to its magnitude.
        let norm = w.clone().powi_scalar(2).sum_dim(0).sqrt();
        w = w * (m.val().unsqueeze::<2>() / norm);
    }
    if let Some(s_in) = &adapter.input_scale {
        w = w * s_in.val().unsqueeze_dim(1);
    }
    let mut bias = projection.bias.as_ref().map(|b| b.val());
    if let Some(s_out) = &adapter.output_scale {
        w = w * s_out.val().unsqueeze();
        bias = bias.map(|b| b * s_out.val());
    }
    Projection::new(Param::from_tensor(w), bias.map(Param::from_tensor))
}

/// The inverse of [`merged`] for an adapter without scaling vectors or magnitude (LoRA,
/// AdaLoRA): `merged` less the adapter's low-rank term, with `adapter` attached again.
/// `None` for IA³ and DoRA, whose merge rescales the weight (taking it back would divide
/// by values that can be zero, or need the pre-merge norms).
pub fn unmerged<B: Backend>(merged: &Projection<B>, adapter: Adapter<B>) -> Option<Projection<B>> {
    if adapter.input_scale.is_some()
        || adapter.output_scale.is_some()
        || adapter.magnitude.is_some()
    {
        return None;
    }
    let mut w = merged.weight.val();
    if let Some(delta) = delta(&adapter) {
        w = w - delta;
    }
    let mut out = Projection::new(Param::from_tensor(w), merged.bias.clone());
    out.adapter = Some(adapter);
    Some(out)
}
