//! LayerNorm and RMSNorm over the last dimension, forward and backward. RMSNorm is
//! LayerNorm with the mean taken as zero and no bias (`rms`).

use burn::tensor::{Shape, TensorMetadata};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::buffers::{f32_contiguous, last_dim, output, rows_per_task, values};
use super::multiversion::multiversion;
use super::reduce::{dot, mean_rstd, sum};

multiversion! {
    /// Rows of `x` (`[rows, d]`, `d = weight.len()`) normalised into `y`; `bias` is `[d]`
    /// or empty.
    fn layer_norm_chunk(
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        eps: f32,
        rms: bool,
        y: &mut [f32],
    ) {
        let d = weight.len();
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let (mean, rstd) = if rms {
                (0.0, 1.0 / (dot(xr, xr) / d as f32 + eps).sqrt())
            } else {
                mean_rstd(xr, eps)
            };
            if bias.is_empty() {
                for i in 0..d {
                    yr[i] = (xr[i] - mean) * rstd * weight[i];
                }
            } else {
                for i in 0..d {
                    yr[i] = (xr[i] - mean) * rstd * weight[i] + bias[i];
                }
            }
        }
    }
}

multiversion! {
    /// Per-chunk gradient rows: `dx` in place, and `dweight`, `dbias` accumulated into
    /// `acc = [dweight; dbias]` (each `[d]`).
    fn layer_norm_backward_chunk(
        x: &[f32],
        weight: &[f32],
        dy: &[f32],
        eps: f32,
        rms: bool,
        dx: &mut [f32],
        acc: &mut [f32],
    ) {
        let d = weight.len();
        let (dweight, dbias) = acc.split_at_mut(d);
        let mut g = vec![0.0f32; d];
        let mut xhat = vec![0.0f32; d];
        for ((xr, dyr), dxr) in x
            .chunks_exact(d)
            .zip(dy.chunks_exact(d))
            .zip(dx.chunks_exact_mut(d))
        {
            let (mean, rstd) = if rms {
                (0.0, 1.0 / (dot(xr, xr) / d as f32 + eps).sqrt())
            } else {
                mean_rstd(xr, eps)
            };
            for i in 0..d {
                xhat[i] = (xr[i] - mean) * rstd;
                g[i] = dyr[i] * weight[i];
                dweight[i] += dyr[i] * xhat[i];
                dbias[i] += dyr[i];
            }
            let mean_gx = dot(&g, &xhat) / d as f32;
            let mean_g = if rms { 0.0 } else { sum(&g) / d as f32 };
            for i in 0..d {
                dxr[i] = rstd * (g[i] - mean_g - xhat[i] * mean_gx);
            }
        }
    }
}

/// LayerNorm (or RMSNorm with `rms`) of `x: [..., d]` with `weight`, `bias: [d]`;
/// `None` unless all are f32.
pub(super) fn forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    eps: f64,
    rms: bool,
) -> Option<FlexTensor> {
    let (xc, wc) = (f32_contiguous(x)?, f32_contiguous(weight)?);
    let bc = match bias {
        Some(b) => Some(f32_contiguous(b)?),
        None => None,
    };
    let shape = x.shape();
    let d = last_dim(&shape);
    let (xs, ws) = (values(&xc), values(&wc));
    let bs: &[f32] = bc.as_ref().map_or(&[], values);
    let mut y = vec![0.0f32; xs.len()];
    let chunk = rows_per_task(xs.len() / d.max(1), d) * d;
    y.par_chunks_mut(chunk)
        .zip(xs.par_chunks(chunk))
        .for_each(|(yc, xc)| layer_norm_chunk(xc, ws, bs, eps as f32, rms, yc));
    Some(output(y, shape))
}

/// `(dx: [..., d], dweight: [d], dbias: [d])` from `x`, `weight` and the output gradient
/// `dy: [..., d]`; `dbias` is meaningless for RMSNorm. `None` unless all are f32.
pub(super) fn backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    dy: &FlexTensor,
    eps: f64,
    rms: bool,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    let xc = f32_contiguous(x)?;
    let wc = f32_contiguous(weight)?;
    let dyc = f32_contiguous(dy)?;
    let shape = x.shape();
    let d = last_dim(&shape);
    let (xs, ws, dys) = (values(&xc), values(&wc), values(&dyc));
    let mut dx = vec![0.0f32; xs.len()];
    let chunk = rows_per_task(xs.len() / d.max(1), d) * d;
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(chunk)
        .zip(xs.par_chunks(chunk).zip(dys.par_chunks(chunk)))
        .map(|(dxc, (xc, dyc))| {
            let mut acc = vec![0.0f32; 2 * d];
            layer_norm_backward_chunk(xc, ws, dyc, eps as f32, rms, dxc, &mut acc);
            acc
        })
        .collect();
    let mut acc = vec![0.0f32; 2 * d];
    for p in &partials {
        for (a, v) in acc.iter_mut().zip(p) {
            *a += v;
        }
    }
    let dbias = acc.split_off(d);
    Some((
        output(dx, shape),
        output(acc, Shape::new([d])),
        output(dbias, Shape::new([d])),
    ))
}
