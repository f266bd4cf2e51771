//! Slow, explicit implementations used as independent references in tests.
//!
//! They avoid the fused kernels entirely: scores are materialised as `[seq_q, seq_kv]`
//! matrices, masks are built element by element, and GQA is resolved by indexing.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::flex_attention::{MaskMod, ScoreIndex, ScoreMod};

/// Explicit attention over host memory: `q` is `[batch, n_heads, seq_q, d]`, `k`/`v` are
/// `[batch, n_kv_heads, seq_kv, d]`; query head `h` reads key/value head
/// `h / (n_heads / n_kv_heads)`. Causal masking is bottom-right aligned.
pub fn naive_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
) -> Tensor<B, 4> {
    let device = q.device();
    let [batch, n_heads, seq_q, d] = q.dims();
    let [_, n_kv_heads, seq_kv, _] = k.dims();
    let q: Vec<f32> = q.into_data().convert::<f32>().to_vec().unwrap();
    let k: Vec<f32> = k.into_data().convert::<f32>().to_vec().unwrap();
    let v: Vec<f32> = v.into_data().convert::<f32>().to_vec().unwrap();
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (d as f64).sqrt();
    let offset = seq_kv as isize - seq_q as isize;
    let mut out = vec![0f32; batch * n_heads * seq_q * d];
    for b in 0..batch {
        for h in 0..n_heads {
            let kh = h / group;
            for i in 0..seq_q {
                let qi = ((b * n_heads + h) * seq_q + i) * d;
                let mut scores = vec![f64::NEG_INFINITY; seq_kv];
                for (j, score) in scores.iter_mut().enumerate() {
                    if causal && j as isize > i as isize + offset {
                        continue;
                    }
                    let kj = ((b * n_kv_heads + kh) * seq_kv + j) * d;
                    let dot: f64 = (0..d).map(|x| q[qi + x] as f64 * k[kj + x] as f64).sum();
                    *score = dot * scale;
                }
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for (j, w) in weights.iter().enumerate() {
                    let vj = ((b * n_kv_heads + kh) * seq_kv + j) * d;
                    for x in 0..d {
                        out[qi + x] += (w / total * v[vj + x] as f64) as f32;
                    }
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [batch, n_heads, seq_q, d]), &device)
}

/// Explicit attention in differentiable tensor ops, the gradient reference: plain causal
/// (bottom-right aligned) or full attention through [`explicit_flex_attention`].
pub fn explicit_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
) -> Tensor<B, 4> {
    let scale = 1.0 / (q.dims()[3] as f64).sqrt();
    let mask = if causal {
        MaskMod::Causal
    } else {
        MaskMod::Full
    };
    explicit_flex_attention(q, k, v, &ScoreMod::none(), &mask, scale)
}

/// Rotary embedding of one `[seq, head_dim]` slice in the rotate-half layout, computed
/// in f64 from the closed form: for `i < d/2`, with `a = pos * theta^(-2i/d)`,
/// `out[i] = x[i] cos a - x[i + d/2] sin a` and `out[i + d/2] = x[i + d/2] cos a + x[i] sin a`.
pub fn naive_rope(x: &[f32], seq: usize, head_dim: usize, start: usize, theta: f64) -> Vec<f32> {
    let inv_freq: Vec<f64> = (0..head_dim / 2)
        .map(|i| theta.powf(-2.0 * i as f64 / head_dim as f64))
        .collect();
    naive_rope_with(x, seq, head_dim, start, &inv_freq, 1.0, false)
}

/// Rotary embedding of one `[seq, head_dim]` slice from given frequencies, in f64: the
/// first `2 * inv_freq.len()` features are rotated in pairs `(i, i + r/2)` or, with
/// `interleaved`, `(2i, 2i + 1)`, by the angle `pos * inv_freq[i]`, and scaled by
/// `mscale`; the remaining features are copied.
pub fn naive_rope_with(
    x: &[f32],
    seq: usize,
    head_dim: usize,
    start: usize,
    inv_freq: &[f64],
    mscale: f64,
    interleaved: bool,
) -> Vec<f32> {
    let r = 2 * inv_freq.len();
    let mut out = x.to_vec();
    for t in 0..seq {
        let pos = (start + t) as f64;
        for (i, f) in inv_freq.iter().enumerate() {
            let (sin, cos) = (pos * f).sin_cos();
            let (ia, ib) = if interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + r / 2)
            };
            let a = x[t * head_dim + ia] as f64;
            let b = x[t * head_dim + ib] as f64;
            out[t * head_dim + ia] = ((a * cos - b * sin) * mscale) as f32;
            out[t * head_dim + ib] = ((b * cos + a * sin) * mscale) as f32;
        }
    }
    out
}

/// FlexAttention with explicit `[seq_q, seq_kv]` scores, the reference for every path of
/// [`crate::flex_attention`]: K/V heads picked by index, the score modifier applied to
/// the whole matrix, the mask built entry by entry from [`MaskMod::keep`], masked entries
/// given zero weight (rows with every key masked produce zeros). Differentiable.
pub fn explicit_flex_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    score_mod: &ScoreMod<B>,
    mask: &MaskMod,
    scale: f64,
) -> Tensor<B, 4> {
    let device = q.device();
    let [batch, n_heads, seq_q, _] = q.dims();
    let [_, n_kv_heads, seq_kv, _] = k.dims();
    let group = n_heads / n_kv_heads;
    let heads: Vec<i64> = (0..n_heads).map(|h| (h / group) as i64).collect();
    let heads = Tensor::<B, 1, Int>::from_data(TensorData::new(heads, [n_heads]), &device);
    let k = k.select(1, heads.clone());
    let v = v.select(1, heads);
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    let q_range = seq_kv - seq_q..seq_kv;
    let index = ScoreIndex::new(batch, n_heads, q_range.clone(), 0..seq_kv, &device);
    let scores = score_mod.apply(scores, &index);
    let mut keep = Vec::with_capacity(batch * n_heads * seq_q * seq_kv);
    for b in 0..batch {
        for h in 0..n_heads {
            for i in q_range.clone() {
                keep.extend((0..seq_kv).map(|j| if mask.keep(b, h, i, j) { 1f32 } else { 0.0 }));
            }
        }
    }
    let keep = Tensor::<B, 4>::from_data(
        TensorData::new(keep, [batch, n_heads, seq_q, seq_kv]),
        &device,
    );
    let hidden = keep.clone().equal_elem(0.0);
    let weights = softmax(scores.mask_fill(hidden, -1e30), 3) * keep;
    weights.matmul(v)
}
