//! `FusedBackend` kernels for burn's `Flex` CPU backend (feature `flex`).
//!
//! Each kernel reads the contiguous f32 buffers once and writes its output once, split
//! into row blocks across rayon's threads. The inner loops are plain slice arithmetic
//! compiled three times (AVX-512, AVX2+FMA, baseline) and picked at run time, so the
//! same binary runs on any x86-64 CPU. Tensors of other dtypes take the composed path.

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, TensorData, TensorMetadata};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::{FusedBackend, composed, flex_attention, math};
use crate::bf16_gemm::{self, MatRef};

/// Compiles `$body` (an `#[inline(always)]` function) for AVX-512 and AVX2+FMA as well as
/// the baseline, and calls the best one the CPU supports.
macro_rules! multiversion {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F, checked just above.
                    return unsafe { v4($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return unsafe { v3($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

/// Elements below which a kernel runs on the calling thread only.
const MIN_ELEMENTS_PER_TASK: usize = 16 * 1024;

/// Rows per parallel task for `rows` rows of `width` elements.
fn rows_per_task(rows: usize, width: usize) -> usize {
    let min_rows = (MIN_ELEMENTS_PER_TASK / width.max(1)).max(1);
    let tasks = 2 * rayon::current_num_threads();
    rows.div_ceil(tasks).max(min_rows)
}

/// The tensor as a contiguous f32 buffer, or `None` for other dtypes.
fn f32_contiguous(t: &FlexTensor) -> Option<FlexTensor> {
    (t.dtype() == DType::F32).then(|| t.to_contiguous())
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("f32_contiguous returned a contiguous f32 tensor")
}

fn output(data: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

fn last_dim(shape: &Shape) -> usize {
    shape[shape.num_dims() - 1]
}

// ---- vectorisable reductions ------------------------------------------------------

const LANES: usize = 16;

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(acc.iter())
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// Mean and reciprocal standard deviation (biased variance) of one row.
#[inline(always)]
fn mean_rstd(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    let var = (acc.iter().sum::<f32>() + tail) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

// ---- GELU -------------------------------------------------------------------------

#[inline(always)]
fn gelu_body(x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = math::gelu(v);
    }
}
multiversion!(fn gelu_chunk(x: &[f32], y: &mut [f32]) => gelu_body);

#[inline(always)]
fn gelu_backward_body(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        *o = g * math::gelu_grad(v);
    }
}
multiversion!(fn gelu_backward_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) => gelu_backward_body);

// ---- LayerNorm / RMSNorm ------------------------------------------------------------

#[inline(always)]
fn layer_norm_body(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, rms: bool, y: &mut [f32]) {
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
multiversion!(fn layer_norm_chunk(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, rms: bool, y: &mut [f32]) => layer_norm_body);

/// Per-chunk gradient rows: `dx` in place, and `dweight`, `dbias` accumulated into
/// `acc = [dweight; dbias]` (each `[d]`).
#[inline(always)]
fn layer_norm_backward_body(
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
multiversion!(fn layer_norm_backward_chunk(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    eps: f32,
    rms: bool,
    dx: &mut [f32],
    acc: &mut [f32],
) => layer_norm_backward_body);

fn norm_forward(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    eps: f64,
    rms: bool,
) -> FlexTensor {
    let fallback = |x, weight, bias| {
        if rms {
            composed::rms_norm::<Flex>(x, weight, eps)
        } else {
            composed::layer_norm::<Flex>(x, weight, bias, eps)
        }
    };
    let (Some(xc), Some(wc)) = (f32_contiguous(&x), f32_contiguous(&weight)) else {
        return fallback(x, weight, bias);
    };
    let bc = match &bias {
        Some(b) => match f32_contiguous(b) {
            Some(b) => Some(b),
            None => return fallback(x, weight, bias),
        },
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
    output(y, shape)
}

/// `(dx, dweight, dbias)`; `dbias` is meaningless for RMSNorm.
fn norm_backward(
    x: FlexTensor,
    weight: FlexTensor,
    dy: FlexTensor,
    eps: f64,
    rms: bool,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    let xc = f32_contiguous(&x)?;
    let wc = f32_contiguous(&weight)?;
    let dyc = f32_contiguous(&dy)?;
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

// ---- softmax ------------------------------------------------------------------------

/// In place over rows `first_row..` of `s` (`width` columns): softmax of `scale · s`,
/// causal when `causal_q_len > 0`: row `r` keeps keys `j <= r % causal_q_len + offset`
/// and its other entries become exact zeros.
#[inline(always)]
fn softmax_body(
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
multiversion!(fn softmax_chunk(
    s: &mut [f32],
    width: usize,
    first_row: usize,
    scale: f32,
    causal_q_len: usize,
    causal_offset: isize,
) => softmax_body);

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

/// In place: `dp ← scale · p ∘ (dp − rowsum(p ∘ dp))`.
#[inline(always)]
fn softmax_backward_body(p: &[f32], dp: &mut [f32], width: usize, scale: f32) {
    for (pr, dpr) in p.chunks_exact(width).zip(dp.chunks_exact_mut(width)) {
        let inner = dot(pr, dpr);
        for i in 0..width {
            dpr[i] = scale * pr[i] * (dpr[i] - inner);
        }
    }
}
multiversion!(fn softmax_backward_chunk(p: &[f32], dp: &mut [f32], width: usize, scale: f32) => softmax_backward_body);

/// Single-threaded [`softmax_backward_chunk`] for one attention head.
pub(super) fn softmax_backward_rows(p: &[f32], dp: &mut [f32], width: usize, scale: f32) {
    softmax_backward_chunk(p, dp, width, scale);
}

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

#[inline(always)]
fn rope_body(
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

multiversion!(fn rope_chunk(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    first_row: usize,
    info: RopeLayoutInfo,
    y: &mut [f32],
) => rope_body);

/// A 2-D f32 tensor as a strided view of its buffer, or `None` for other dtypes, ranks
/// or negative strides.
fn mat_ref(t: &FlexTensor) -> Option<(usize, usize, MatRef<'_>)> {
    let layout = t.layout();
    let (rows, cols, row_stride, col_stride) = layout.as_2d_strides()?;
    (t.dtype() == DType::F32 && layout.has_positive_strides()).then(|| {
        let view = MatRef {
            data: t.storage::<f32>(),
            offset: layout.start_offset(),
            row_stride,
            col_stride,
        };
        (rows, cols, view)
    })
}

impl FusedBackend for Flex {
    /// The AVX512-BF16 kernel of [`crate::bf16_gemm`] on strided views (the backward
    /// pass's transposes are not copied); the composed cast-and-matmul elsewhere.
    fn fused_matmul_bf16(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        if !bf16_gemm::available() {
            return composed::matmul_bf16::<Self>(a, b);
        }
        let (Some((m, k, a_ref)), Some((k_b, n, b_ref))) = (mat_ref(&a), mat_ref(&b)) else {
            return composed::matmul_bf16::<Self>(a, b);
        };
        assert_eq!(k, k_b, "matmul_bf16: inner dimensions {k} and {k_b} differ");
        let mut c = Vec::with_capacity(m * n);
        bf16_gemm::gemm_uninit(m, n, k, a_ref, b_ref, &mut c.spare_capacity_mut()[..m * n]);
        // SAFETY: `gemm_uninit` wrote all `m · n` values.
        unsafe { c.set_len(m * n) };
        output(c, Shape::new([m, n]))
    }

    /// Per-head gemm calls around the fused masked softmax on strided views, with no
    /// copies for the head split; see [`flex_attention`]. (burn's own Flex attention is
    /// a scalar loop for short sequences, which made it the largest single cost of a
    /// nanoGPT-sized training step.)
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        if !flex_attention::supported(&[&q, &k, &v]) {
            return composed::attention::<Self>(q, k, v, causal);
        }
        flex_attention::forward(&q, &k, &v, causal)
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let Some(xc) = f32_contiguous(&x) else {
            return composed::gelu::<Self>(x);
        };
        let xs = values(&xc);
        let mut y = vec![0.0f32; xs.len()];
        let chunk = rows_per_task(xs.len(), 1);
        y.par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk))
            .for_each(|(yc, xc)| gelu_chunk(xc, yc));
        output(y, x.shape())
    }

    fn fused_gelu_backward(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        let (Some(xc), Some(dyc)) = (f32_contiguous(&x), f32_contiguous(&dy)) else {
            return composed::gelu_backward::<Self>(x, dy);
        };
        let (xs, dys) = (values(&xc), values(&dyc));
        let mut dx = vec![0.0f32; xs.len()];
        let chunk = rows_per_task(xs.len(), 1);
        dx.par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk).zip(dys.par_chunks(chunk)))
            .for_each(|(o, (xc, dyc))| gelu_backward_chunk(xc, dyc, o));
        output(dx, x.shape())
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        eps: f64,
    ) -> FloatTensor<Self> {
        norm_forward(x, weight, bias, eps, false)
    }

    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        match norm_backward(x.clone(), weight.clone(), dy.clone(), eps, false) {
            Some(grads) => grads,
            None => composed::layer_norm_backward::<Self>(x, weight, dy, eps),
        }
    }

    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        norm_forward(x, weight, None, eps, true)
    }

    fn fused_rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match norm_backward(x.clone(), weight.clone(), dy.clone(), eps, true) {
            Some((dx, dweight, _)) => (dx, dweight),
            None => composed::rms_norm_backward::<Self>(x, weight, dy, eps),
        }
    }

    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        interleaved: bool,
        inverse: bool,
    ) -> FloatTensor<Self> {
        let (Some(xc), Some(cc), Some(sc)) = (
            f32_contiguous(&x),
            f32_contiguous(&cos),
            f32_contiguous(&sin),
        ) else {
            return composed::rope::<Self>(x, cos, sin, interleaved, inverse);
        };
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
        output(y, shape)
    }

    fn fused_softmax(
        scores: FloatTensor<Self>,
        scale: f64,
        causal_q_len: Option<usize>,
    ) -> FloatTensor<Self> {
        let Some(sc) = f32_contiguous(&scores) else {
            return composed::softmax::<Self>(scores, scale, causal_q_len);
        };
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
        output(p, shape)
    }

    fn fused_softmax_backward(
        p: FloatTensor<Self>,
        dp: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let (Some(pc), Some(dpc)) = (f32_contiguous(&p), f32_contiguous(&dp)) else {
            return composed::softmax_backward::<Self>(p, dp, scale);
        };
        let shape = p.shape();
        let width = last_dim(&shape);
        let ps = values(&pc);
        let mut ds = values(&dpc).to_vec();
        let chunk = rows_per_task(ps.len() / width.max(1), width) * width;
        ds.par_chunks_mut(chunk)
            .zip(ps.par_chunks(chunk))
            .for_each(|(o, pc)| softmax_backward_chunk(pc, o, width, scale as f32));
        output(ds, shape)
    }

    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        d_out: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if !flex_attention::supported(&[&q, &k, &v, &d_out]) {
            return composed::attention_backward::<Self>(q, k, v, causal, d_out);
        }
        flex_attention::backward(&q, &k, &v, causal, &d_out)
    }
}
