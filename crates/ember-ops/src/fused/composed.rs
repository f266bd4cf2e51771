//! The default bodies of [`FusedBackend`](super::FusedBackend): each fused op written
//! with burn's tensor ops. These run on every backend without a kernel of its own and
//! are the reference the kernels are tested against.

use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Shape, Tensor, TensorData, TensorPrimitive};

use super::{FusedBackend, MatmulPrecision};
use crate::attention::scaled_dot_product_attention;
use crate::quant::QuantSpec;
use burn::tensor::TensorMetadata;

fn rows<B: Backend>(x: FloatTensor<B>) -> (Tensor<B, 2>, Shape) {
    let shape = burn::tensor::TensorMetadata::shape(&x);
    let d = shape[shape.num_dims() - 1];
    let n = shape.num_elements() / d.max(1);
    let x = B::float_reshape(x, Shape::new([n, d]));
    (Tensor::from_primitive(TensorPrimitive::Float(x)), shape)
}

fn unrows<B: Backend>(t: Tensor<B, 2>, shape: Shape) -> FloatTensor<B> {
    B::float_reshape(t.into_primitive().tensor(), shape)
}

fn vector<B: Backend>(w: FloatTensor<B>) -> Tensor<B, 2> {
    Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(w)).unsqueeze::<2>()
}

fn flat<B: Backend>(t: Tensor<B, 2>) -> FloatTensor<B> {
    let d = t.dims()[1];
    t.reshape([d]).into_primitive().tensor()
}

/// GELU through burn's activation op.
pub fn gelu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::gelu(x)
}

/// GELU's backward through burn's activation op.
pub fn gelu_backward<B: Backend>(x: FloatTensor<B>, dy: FloatTensor<B>) -> FloatTensor<B> {
    B::gelu_backward(x, dy)
}

/// `(x - mean) · rstd` and `rstd` for each row.
fn normalise<B: Backend>(x: Tensor<B, 2>, eps: f64) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let mean = x.clone().mean_dim(1);
    let centred = x - mean;
    let var = centred.clone().square().mean_dim(1);
    let rstd = var.add_scalar(eps).sqrt().recip();
    (centred * rstd.clone(), rstd)
}

pub fn layer_norm<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    eps: f64,
) -> FloatTensor<B> {
    let (x, shape) = rows::<B>(x);
    let (xhat, _) = normalise(x, eps);
    let mut y = xhat * vector::<B>(weight);
    if let Some(bias) = bias {
        y = y + vector::<B>(bias);
    }
    unrows(y, shape)
}

pub fn layer_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    dy: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (x, shape) = rows::<B>(x);
    let (dy, _) = rows::<B>(dy);
    let (xhat, rstd) = normalise(x, eps);
    let g = dy.clone() * vector::<B>(weight);
    let dx =
        (g.clone() - g.clone().mean_dim(1) - xhat.clone() * (g * xhat.clone()).mean_dim(1)) * rstd;
    let dweight = (dy.clone() * xhat).sum_dim(0);
    let dbias = dy.sum_dim(0);
    (unrows(dx, shape), flat(dweight), flat(dbias))
}

fn rms_normalise<B: Backend>(x: Tensor<B, 2>, eps: f64) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let rstd = x
        .clone()
        .square()
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    (x * rstd.clone(), rstd)
}

pub fn rms_norm<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    let (x, shape) = rows::<B>(x);
    let (xhat, _) = rms_normalise(x, eps);
    unrows(xhat * vector::<B>(weight), shape)
}

pub fn rms_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    dy: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (x, shape) = rows::<B>(x);
    let (dy, _) = rows::<B>(dy);
    let (xhat, rstd) = rms_normalise(x, eps);
    let g = dy.clone() * vector::<B>(weight);
    let dx = (g.clone() - xhat.clone() * (g * xhat.clone()).mean_dim(1)) * rstd;
    let dweight = (dy * xhat).sum_dim(0);
    (unrows(dx, shape), flat(dweight))
}

pub fn softmax<B: Backend>(
    scores: FloatTensor<B>,
    scale: f64,
    causal_q_len: Option<usize>,
) -> FloatTensor<B> {
    let (s, shape) = rows::<B>(scores);
    let s = s.mul_scalar(scale);
    let [n, seq_kv] = s.dims();
    let s = match causal_q_len {
        Some(t) => {
            // One block of `t` query rows, true where masked out.
            let mask = crate::mask::causal_mask::<B>(t, seq_kv, &s.device())
                .reshape([1, t, seq_kv])
                .expand([n / t, t, seq_kv]);
            s.reshape([n / t, t, seq_kv])
                .mask_fill(mask, f32::NEG_INFINITY)
                .reshape([n, seq_kv])
        }
        None => s,
    };
    unrows(activation::softmax(s, 1), shape)
}

pub fn softmax_backward<B: Backend>(
    p: FloatTensor<B>,
    dp: FloatTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let (p, shape) = rows::<B>(p);
    let (dp, _) = rows::<B>(dp);
    let inner = (p.clone() * dp.clone()).sum_dim(1);
    unrows((p * (dp - inner)).mul_scalar(scale), shape)
}

/// burn's fused `attention` op, with grouped query heads folded into rows so K/V heads are
/// shared rather than repeated ([`scaled_dot_product_attention`]).
pub fn attention<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    causal: bool,
) -> FloatTensor<B> {
    let [q, k, v] = [q, k, v].map(|t| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t)));
    scaled_dot_product_attention(q, k, v, causal, None)
        .into_primitive()
        .tensor()
}

/// Gradients of causal or full attention with respect to q, k and v, recomputing the
/// probabilities with burn matmuls around the fused softmax kernels.
///
/// - `q`, `d_out`: `[batch, n_heads, seq_q, head_dim]`
/// - `k`, `v`: `[batch, n_kv_heads, seq_kv, head_dim]`
pub fn attention_backward<B: FusedBackend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    causal: bool,
    d_out: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let q_shape = q.shape();
    let [batch, n_heads, seq_q, head_dim] = [q_shape[0], q_shape[1], q_shape[2], q_shape[3]];
    let n_kv_heads = k.shape()[1];
    let rows = n_heads / n_kv_heads * seq_q;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let grouped = Shape::new([batch, n_kv_heads, rows, head_dim]);

    // Recompute the probabilities: [batch, n_kv_heads, rows, seq_kv].
    let q = B::float_reshape(q, grouped.clone());
    let scores = B::float_matmul(q.clone(), B::float_swap_dims(k.clone(), 2, 3));
    let p = B::fused_softmax(scores, scale, causal.then_some(seq_q));

    let d_out = B::float_reshape(d_out, grouped);
    let dv = B::float_matmul(B::float_swap_dims(p.clone(), 2, 3), d_out.clone());
    let dp = B::float_matmul(d_out, B::float_swap_dims(v, 2, 3));
    let ds = B::fused_softmax_backward(p, dp, scale);
    let dq = B::float_reshape(B::float_matmul(ds.clone(), k), q_shape);
    let dk = B::float_matmul(B::float_swap_dims(ds, 2, 3), q);
    (dq, dk, dv)
}

/// RoPE with burn's tensor ops on `x: [batch, seq, heads, head_dim]`.
pub fn rope<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    interleaved: bool,
    inverse: bool,
) -> FloatTensor<B> {
    let x = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(x));
    let cos = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(cos));
    let sin = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(sin));
    let sin = if inverse { sin.neg() } else { sin };
    let [d0, seq, d2, head_dim] = x.dims();
    let r = cos.dims()[1];
    let (cos, sin) = (cos.reshape([1, seq, 1, r]), sin.reshape([1, seq, 1, r]));
    let (rot, pass) = if r == head_dim {
        (x, None)
    } else {
        (
            x.clone().narrow(3, 0, r),
            Some(x.narrow(3, r, head_dim - r)),
        )
    };
    let rotated = if interleaved {
        let pairs = rot.clone().reshape([d0, seq, d2, r / 2, 2]);
        let even = pairs.clone().narrow(4, 0, 1);
        let odd = pairs.narrow(4, 1, 1);
        Tensor::cat(vec![odd.neg(), even], 4).reshape([d0, seq, d2, r])
    } else {
        let x1 = rot.clone().narrow(3, 0, r / 2);
        let x2 = rot.clone().narrow(3, r / 2, r / 2);
        Tensor::cat(vec![x2.neg(), x1], 3)
    };
    let out = rot * cos + rotated * sin;
    let out = match pass {
        Some(pass) => Tensor::cat(vec![out, pass], 3),
        None => out,
    };
    out.into_primitive().tensor()
}

/// `a · b` with both inputs rounded to bf16 by burn's cast and an f32 matmul over the
/// rounded values. (Flex's cast goes through f64 and rounds a few values just above a
/// tie one bf16 step down; the Flex kernel rounds to nearest even exactly.)
pub fn matmul_bf16<B: Backend>(a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B> {
    use burn::tensor::FloatDType;
    let round = |t| B::float_cast(B::float_cast(t, FloatDType::BF16), FloatDType::F32);
    B::float_matmul(round(a), round(b))
}

/// Dequantization in burn tensor ops: the codes shifted out of their words, looked up in
/// the format's level table and multiplied by their block's absmax (see
/// [`crate::quant::format`]).
pub fn dequantize<B: Backend>(
    codes: IntTensor<B>,
    scales: FloatTensor<B>,
    spec: QuantSpec,
) -> FloatTensor<B> {
    use burn::tensor::{ElementConversion, Int};
    let codes = Tensor::<B, 2, Int>::from_primitive(codes);
    let scales = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(scales));
    let device = codes.device();
    let (bits, per_word) = (spec.format.bits(), spec.format.codes_per_word());
    let [words, d_out] = codes.dims();
    let [n_blocks, _] = scales.dims();
    let (rows, block) = (words * per_word, spec.block_size);
    assert_eq!(
        (rows, n_blocks * block),
        (spec.padded_in(), spec.padded_in()),
        "dequantize: codes [{words}, {d_out}] and scales [{n_blocks}, _] do not fit {spec:?}"
    );
    // [words, per_word, d_out]: code j of each word in row j.
    let shifts = Tensor::<B, 1, Int>::arange_step(0..(bits * per_word) as i64, bits, &device)
        .reshape([1, per_word, 1])
        .expand([words, per_word, d_out]);
    let index = codes
        .unsqueeze_dim::<3>(1)
        .expand([words, per_word, d_out])
        .bitwise_right_shift(shifts)
        .bitwise_and_scalar((spec.format.code_mask() as i64).elem())
        .reshape([rows * d_out]);
    let levels = spec.format.levels();
    let n_levels = levels.len();
    let table = Tensor::<B, 1>::from_data(TensorData::new(levels, [n_levels]), &device);
    let values = table.select(0, index).reshape([rows, d_out]);
    let absmax = scales
        .unsqueeze_dim::<3>(1)
        .expand([n_blocks, block, d_out])
        .reshape([rows, d_out]);
    let w = values * absmax;
    let w = if rows == spec.d_in {
        w
    } else {
        w.narrow(0, 0, spec.d_in)
    };
    w.into_primitive().tensor()
}

/// `x · dequantize(codes, scales)` with the backend's own dequantization, at `precision`.
pub fn quantized_matmul<B: FusedBackend>(
    x: FloatTensor<B>,
    codes: IntTensor<B>,
    scales: FloatTensor<B>,
    spec: QuantSpec,
    precision: MatmulPrecision,
) -> FloatTensor<B> {
    let w = B::fused_dequantize(codes, scales, spec);
    precise_matmul::<B>(x, w, precision)
}

/// `a · b` at `precision`: burn's f32 matmul or [`FusedBackend::fused_matmul_bf16`].
pub fn precise_matmul<B: FusedBackend>(
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    precision: MatmulPrecision,
) -> FloatTensor<B> {
    match precision {
        MatmulPrecision::F32 => B::float_matmul(a, b),
        MatmulPrecision::Bf16 => B::fused_matmul_bf16(a, b),
    }
}
