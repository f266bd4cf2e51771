//! Rotary position embedding of sequence-major `[batch, seq, heads, head_dim]` tensors
//! (forward, and inverse for the gradient), both layouts.

use burn::tensor::TensorMetadata;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::buffers::{f32_contiguous, output, rows_per_task, values};
use super::multiversion::multiversion;

/// RoPE on rows of `heads · head_dim` values, one sequence position per row (row `i`
/// of the chunk is position `(first_row + i) % seq`); `sign = -1` rotates backwards.
#[derive(Clone, Copy)]
struct RopeLayoutInfo {
    seq: usize,
    heads: usize,
    head_dim: usize,
    interleaved: bool,
    /// `1` forward, `-1` for the inverse rotation.
    sign: f32,
}

multiversion! {
    /// Rows `first_row..` of the sequence-major `x` (`info.heads · info.head_dim` values
    /// per row) rotated into `y` by `cos`, `sin: [seq, rotary_dim]`.
    fn rope_chunk(
        x: &[f32],
        cos: &[f32],
        sin: &[f32],
        first_row: usize,
        info: RopeLayoutInfo,
        y: &mut [f32],
    ) {
        let RopeLayoutInfo {
            seq,
            heads,
            head_dim,
            interleaved,
            sign,
        } = info;
        let r = cos.len() / seq;
        let half = r / 2;
        let row_len = heads * head_dim;
        for (i, (xr, yr)) in x
            .chunks_exact(row_len)
            .zip(y.chunks_exact_mut(row_len))
            .enumerate()
        {
            let t = (first_row + i) % seq;
            let (c, s) = (&cos[t * r..(t + 1) * r], &sin[t * r..(t + 1) * r]);
            for (xh, yh) in xr.chunks_exact(head_dim).zip(yr.chunks_exact_mut(head_dim)) {
                if interleaved {
                    for j in 0..half {
                        let (a, b) = (xh[2 * j], xh[2 * j + 1]);
                        yh[2 * j] = a * c[2 * j] - sign * b * s[2 * j];
                        yh[2 * j + 1] = b * c[2 * j + 1] + sign * a * s[2 * j + 1];
                    }
                } else {
                    for j in 0..half {
                        let (a, b) = (xh[j], xh[j + half]);
                        yh[j] = a * c[j] - sign * b * s[j];
                        yh[j + half] = b * c[j + half] + sign * a * s[j + half];
                    }
                }
                yh[r..].copy_from_slice(&xh[r..]);
            }
        }
    }
}

/// `x: [batch, seq, heads, head_dim]` rotated by `cos`, `sin: [seq, rotary_dim]`; see
/// [`FusedBackend::fused_rope`](crate::fused::FusedBackend::fused_rope). `None` unless all
/// three are f32.
pub(super) fn apply(
    x: &FlexTensor,
    cos: &FlexTensor,
    sin: &FlexTensor,
    interleaved: bool,
    inverse: bool,
) -> Option<FlexTensor> {
    let (xc, cc, sc) = (
        f32_contiguous(x)?,
        f32_contiguous(cos)?,
        f32_contiguous(sin)?,
    );
    let shape = x.shape();
    let (seq, heads, head_dim) = (shape[1], shape[2], shape[3]);
    let row_len = heads * head_dim;
    let xs = values(&xc);
    let rows = xs.len() / row_len.max(1);
    let chunk_rows = rows_per_task(rows, row_len);
    let info = RopeLayoutInfo {
        seq,
        heads,
        head_dim,
        interleaved,
        sign: if inverse { -1.0 } else { 1.0 },
    };
    let (cs, ss) = (values(&cc), values(&sc));
    let mut y = vec![0.0f32; xs.len()];
    y.par_chunks_mut(chunk_rows * row_len)
        .zip(xs.par_chunks(chunk_rows * row_len))
        .enumerate()
        .for_each(|(i, (yc, xc))| rope_chunk(xc, cs, ss, i * chunk_rows, info, yc));
    Some(output(y, shape))
}
