//! Softmax of `scale · scores` over the last dimension with optional causal masking, and
//! its backward pass: over whole tensors (`forward`, `backward`, split across threads) and
//! over one attention head's `[seq_q, seq_kv]` block on the calling thread
//! ([`softmax_rows`], [`softmax_backward_rows`]).

use burn::tensor::TensorMetadata;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::buffers::{f32_contiguous, last_dim, output, rows_per_task, values};
use super::multiversion::multiversion;
use super::reduce::{LANES, dot, max};
use crate::fused::math;

multiversion! {
    /// In place over rows `first_row..` of `s` (`width` columns): softmax of `scale · s`,
    /// causal when `causal_q_len > 0`: row `r` keeps keys `j <= r % causal_q_len + offset`
    /// and its other entries become exact zeros.
    fn softmax_chunk(
        s: &mut [f32],
        width: usize,
        first_row: usize,
        scale: f32,
        causal_q_len: usize,
        causal_offset: isize,
    ) {
        for (i, row) in s.chunks_exact_mut(width).enumerate() {
            let keep = if causal_q_len == 0 {
                width
            } else {
                let q = ((first_row + i) % causal_q_len) as isize;
                (q + causal_offset + 1).clamp(0, width as isize) as usize
            };
            let (kept, masked) = row.split_at_mut(keep);
            masked.fill(0.0);
            if keep == 0 {
                continue;
            }
            let m = max(kept) * scale;
            let mut acc = [0.0f32; LANES];
            let mut chunks = kept.chunks_exact_mut(LANES);
            for c in &mut chunks {
                for l in 0..LANES {
                    let e = math::exp(c[l] * scale - m);
                    c[l] = e;
                    acc[l] += e;
                }
            }
            let mut total: f32 = acc.iter().sum();
            for v in chunks.into_remainder() {
                let e = math::exp(*v * scale - m);
                *v = e;
                total += e;
            }
            let inv = 1.0 / total;
            for v in kept.iter_mut() {
                *v *= inv;
            }
        }
    }
}

/// One block of rows starting at row 0 (one attention head), single-threaded.
pub(super) fn softmax_rows(
    s: &mut [f32],
    width: usize,
    scale: f32,
    causal_q_len: usize,
    causal_offset: isize,
) {
    softmax_chunk(s, width, 0, scale, causal_q_len, causal_offset);
}

multiversion! {
    /// In place: `dp ← scale · p ∘ (dp − rowsum(p ∘ dp))`.
    fn softmax_backward_chunk(p: &[f32], dp: &mut [f32], width: usize, scale: f32) {
        for (pr, dpr) in p.chunks_exact(width).zip(dp.chunks_exact_mut(width)) {
            let inner = dot(pr, dpr);
            for i in 0..width {
                dpr[i] = scale * pr[i] * (dpr[i] - inner);
            }
        }
    }
}

/// Single-threaded [`softmax_backward_chunk`] for one attention head.
pub(super) fn softmax_backward_rows(p: &[f32], dp: &mut [f32], width: usize, scale: f32) {
    softmax_backward_chunk(p, dp, width, scale);
}

/// Softmax of `scale · scores` for `scores: [..., rows, seq_kv]`, causal as
/// [`FusedBackend::fused_softmax`](crate::fused::FusedBackend::fused_softmax) describes
/// for `causal_q_len = Some(t)`; `None` unless `scores` is f32.
pub(super) fn forward(
    scores: &FlexTensor,
    scale: f64,
    causal_q_len: Option<usize>,
) -> Option<FlexTensor> {
    let sc = f32_contiguous(scores)?;
    let shape = scores.shape();
    let width = last_dim(&shape);
    let (q_len, offset) = match causal_q_len {
        Some(t) => (t, width as isize - t as isize),
        None => (0, 0),
    };
    let mut p = values(&sc).to_vec();
    let rows = rows_per_task(p.len() / width.max(1), width);
    p.par_chunks_mut(rows * width)
        .enumerate()
        .for_each(|(i, pc)| softmax_chunk(pc, width, i * rows, scale as f32, q_len, offset));
    Some(output(p, shape))
}

/// Gradient of `scale · scores` from the softmax output `p` and its gradient `dp` (both
/// `[..., seq_kv]`): `scale · p · (dp - Σ p·dp)`; `None` unless both are f32.
pub(super) fn backward(p: &FlexTensor, dp: &FlexTensor, scale: f64) -> Option<FlexTensor> {
    let (pc, dpc) = (f32_contiguous(p)?, f32_contiguous(dp)?);
    let shape = p.shape();
    let width = last_dim(&shape);
    let ps = values(&pc);
    let mut ds = values(&dpc).to_vec();
    let chunk = rows_per_task(ps.len() / width.max(1), width) * width;
    ds.par_chunks_mut(chunk)
        .zip(ps.par_chunks(chunk))
        .for_each(|(o, pc)| softmax_backward_chunk(pc, o, width, scale as f32));
    Some(output(ds, shape))
}
