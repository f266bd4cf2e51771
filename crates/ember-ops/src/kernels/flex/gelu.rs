//! Exact (erf) GELU and its gradient, element-wise over any shape.

use burn::tensor::TensorMetadata;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::buffers::{f32_contiguous, output, rows_per_task, values};
use super::multiversion::multiversion;
use crate::fused::math;

multiversion! {
    /// `y = gelu(x)` element-wise.
    fn gelu_chunk(x: &[f32], y: &mut [f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = math::gelu(v);
        }
    }
}

multiversion! {
    /// `dx = dy · gelu'(x)` element-wise.
    fn gelu_backward_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
            *o = g * math::gelu_grad(v);
        }
    }
}

/// `x · Φ(x)`, `[...]` → `[...]`; `None` unless `x` is f32.
pub(super) fn forward(x: &FlexTensor) -> Option<FlexTensor> {
    let xc = f32_contiguous(x)?;
    let xs = values(&xc);
    let mut y = vec![0.0f32; xs.len()];
    let chunk = rows_per_task(xs.len(), 1);
    y.par_chunks_mut(chunk)
        .zip(xs.par_chunks(chunk))
        .for_each(|(yc, xc)| gelu_chunk(xc, yc));
    Some(output(y, x.shape()))
}

/// `dy · (Φ(x) + x·φ(x))` for `x`, `dy` of one shape; `None` unless both are f32.
pub(super) fn backward(x: &FlexTensor, dy: &FlexTensor) -> Option<FlexTensor> {
    let (xc, dyc) = (f32_contiguous(x)?, f32_contiguous(dy)?);
    let (xs, dys) = (values(&xc), values(&dyc));
    let mut dx = vec![0.0f32; xs.len()];
    let chunk = rows_per_task(xs.len(), 1);
    dx.par_chunks_mut(chunk)
        .zip(xs.par_chunks(chunk).zip(dys.par_chunks(chunk)))
        .for_each(|(o, (xc, dyc))| gelu_backward_chunk(xc, dyc, o));
    Some(output(dx, x.shape()))
}
