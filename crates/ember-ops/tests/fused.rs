//! The fused kernels against the composed reference bodies (`ember_ops::fused::composed`)
//! and the naive attention, in values and in gradients.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor, TensorData, TensorPrimitive, Tolerance};
use ember_ops::fused::{self, FusedBackend, composed};
use ember_ops::kernels::flex::bf16_gemm::round_to_bf16;
use ember_ops::reference::{explicit_attention, naive_attention};

type B = Flex;
type AD = Autodiff<Flex>;

fn random<Bk: burn::tensor::backend::Backend, const D: usize>(shape: [usize; D]) -> Tensor<Bk, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.5), &Default::default())
}

fn close<const D: usize, Bk: burn::tensor::backend::Backend>(
    got: Tensor<Bk, D>,
    want: Tensor<Bk, D>,
    tol: f32,
) {
    got.into_data()
        .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(tol));
}

fn prim<Bk: burn::tensor::backend::Backend, const D: usize>(
    t: Tensor<Bk, D>,
) -> burn::tensor::ops::FloatTensor<Bk> {
    t.into_primitive().tensor()
}

fn tensor<Bk: burn::tensor::backend::Backend, const D: usize>(
    p: burn::tensor::ops::FloatTensor<Bk>,
) -> Tensor<Bk, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

// Widths that are and are not multiples of the 16-lane blocks.
const SHAPES: [[usize; 3]; 3] = [[2, 5, 37], [3, 4, 128], [1, 1, 7]];

#[test]
fn gelu_matches_burns_erf_gelu_in_values_and_gradients() {
    for shape in SHAPES {
        let x = random::<B, 3>(shape);
        close(
            fused::gelu(x.clone()),
            tensor(composed::gelu::<B>(prim(x.clone()))),
            2e-6,
        );
        let dy = random::<B, 3>(shape);
        close(
            tensor::<B, 3>(B::fused_gelu_backward(prim(x.clone()), prim(dy.clone()))),
            tensor(composed::gelu_backward::<B>(prim(x), prim(dy))),
            2e-6,
        );
    }
}

/// `(value, gradients of Σ f(x)·r)` for a function of autodiff tensors; `None` for an
/// input the function does not use.
fn grads_of<const N: usize>(
    inputs: [Tensor<B, 3>; N],
    weight: Tensor<B, 3>,
    f: impl Fn(&[Tensor<AD, 3>; N]) -> Tensor<AD, 3>,
) -> (Tensor<B, 3>, Vec<Option<Tensor<B, 3>>>) {
    let inputs = inputs.map(|t| Tensor::<AD, 3>::from_inner(t).require_grad());
    let out = f(&inputs);
    let loss = (out.clone() * Tensor::from_inner(weight)).sum();
    let grads = loss.backward();
    let gs = inputs.iter().map(|t| t.grad(&grads)).collect();
    (out.inner(), gs)
}

fn as_row<Bk: burn::tensor::backend::Backend>(t: &Tensor<Bk, 3>) -> Tensor<Bk, 1> {
    let d = t.dims()[2];
    t.clone().reshape([d])
}

#[test]
fn layer_norm_and_rms_norm_match_composed_in_values_and_gradients() {
    for shape in SHAPES {
        let d = shape[2];
        let x = random::<B, 3>(shape);
        let w = random::<B, 3>([1, 1, d]).add_scalar(1.0);
        let b = random::<B, 3>([1, 1, d]);
        let r = random::<B, 3>(shape);
        for with_bias in [true, false] {
            let fused_ln = |t: &[Tensor<AD, 3>; 3]| {
                fused::layer_norm(
                    t[0].clone(),
                    as_row(&t[1]),
                    with_bias.then(|| as_row(&t[2])),
                    1e-5,
                )
            };
            let composed_ln = |t: &[Tensor<AD, 3>; 3]| {
                tensor(composed::layer_norm::<AD>(
                    prim(t[0].clone()),
                    prim(as_row(&t[1])),
                    with_bias.then(|| prim(as_row(&t[2]))),
                    1e-5,
                ))
            };
            let inputs = [x.clone(), w.clone(), b.clone()];
            let (v1, g1) = grads_of(inputs.clone(), r.clone(), fused_ln);
            let (v2, g2) = grads_of(inputs, r.clone(), composed_ln);
            close(v1, v2, 2e-5);
            assert_eq!(g1[2].is_some(), with_bias);
            for (a, e) in g1.into_iter().zip(g2) {
                match (a, e) {
                    (Some(a), Some(e)) => close(a, e, 1e-4),
                    (a, e) => assert_eq!(a.is_some(), e.is_some()),
                }
            }
        }
        let fused_rms = |t: &[Tensor<AD, 3>; 2]| fused::rms_norm(t[0].clone(), as_row(&t[1]), 1e-6);
        let composed_rms = |t: &[Tensor<AD, 3>; 2]| {
            tensor(composed::rms_norm::<AD>(
                prim(t[0].clone()),
                prim(as_row(&t[1])),
                1e-6,
            ))
        };
        let (v1, g1) = grads_of([x.clone(), w.clone()], r.clone(), fused_rms);
        let (v2, g2) = grads_of([x, w], r, composed_rms);
        close(v1, v2, 2e-5);
        for (a, e) in g1.into_iter().zip(g2) {
            close(a.unwrap(), e.unwrap(), 1e-4);
        }
    }
}

#[test]
fn norms_accept_non_contiguous_inputs() {
    let x = random::<B, 3>([4, 6, 24]).swap_dims(0, 1);
    let w = random::<B, 1>([24]);
    let want = tensor::<B, 3>(composed::rms_norm::<B>(
        prim(x.clone()),
        prim(w.clone()),
        1e-6,
    ));
    close(fused::rms_norm(x, w, 1e-6), want, 2e-5);
}

#[test]
fn causal_softmax_matches_composed_for_stacked_query_blocks() {
    // rows = 3 query blocks of 4 rows each over 6 keys (offset 2), and a full softmax.
    for causal in [Some(4), None] {
        let s = random::<B, 3>([2, 12, 6]);
        let want = tensor::<B, 3>(composed::softmax::<B>(prim(s.clone()), 0.7, causal));
        let got = fused::softmax(s, 0.7, causal);
        close(got.clone(), want, 1e-6);
        // Masked entries are exact zeros and rows sum to one.
        let sums = got.clone().sum_dim(2);
        close(sums, Tensor::ones([2, 12, 1], &Default::default()), 1e-6);
        if causal.is_some() {
            let row0: Vec<f32> = got.slice([0..1, 0..1, 0..6]).into_data().to_vec().unwrap();
            assert_eq!(&row0[3..], &[0.0, 0.0, 0.0]);
        }
        let p = random::<B, 3>([2, 12, 6]).abs();
        let dp = random::<B, 3>([2, 12, 6]);
        close(
            tensor::<B, 3>(B::fused_softmax_backward(
                prim(p.clone()),
                prim(dp.clone()),
                0.7,
            )),
            tensor(composed::softmax_backward::<B>(prim(p), prim(dp), 0.7)),
            1e-5,
        );
    }
}

#[test]
fn attention_gradients_match_explicit_attention_for_mha_gqa_mqa() {
    // (n_heads, n_kv_heads, seq_q, seq_kv): full sequences and a query block after a prefix.
    for (h, kv, sq, skv) in [(4, 4, 7, 7), (4, 2, 7, 7), (6, 2, 5, 9), (4, 1, 3, 8)] {
        for causal in [true, false] {
            // Strided views, as the model passes them (`[batch, seq, heads, dim]` memory),
            // and contiguous tensors.
            let make = |heads: usize, seq: usize| {
                if causal {
                    random::<B, 4>([2, seq, heads, 8]).swap_dims(1, 2)
                } else {
                    random::<B, 4>([2, heads, seq, 8])
                }
            };
            let (q, k, v) = (make(h, sq), make(kv, skv), make(kv, skv));
            let r = Tensor::<AD, 4>::from_inner(random([2, h, sq, 8]));
            let run = |fused_path: bool| {
                let leaf = |t: &Tensor<B, 4>| Tensor::<AD, 4>::from_inner(t.clone()).require_grad();
                let (q, k, v) = (leaf(&q), leaf(&k), leaf(&v));
                let out = if fused_path {
                    fused::attention(q.clone(), k.clone(), v.clone(), causal)
                } else {
                    explicit_attention(q.clone(), k.clone(), v.clone(), causal)
                };
                let grads = (out.clone() * r.clone()).sum().backward();
                let g = |t: &Tensor<AD, 4>| {
                    t.grad(&grads)
                        .unwrap_or_else(|| panic!("no gradient (fused path: {fused_path})"))
                };
                (out.inner(), g(&q), g(&k), g(&v))
            };
            let (o1, dq1, dk1, dv1) = run(true);
            let (o2, dq2, dk2, dv2) = run(false);
            close(o1.clone(), o2, 1e-5);
            // The explicit reference itself agrees with the host-side naive attention.
            close(o1, naive_attention(q, k, v, causal), 1e-5);
            close(dq1, dq2, 1e-4);
            close(dk1, dk2, 1e-4);
            close(dv1, dv2, 1e-4);
        }
    }
}

#[test]
fn fused_ops_fall_back_for_other_dtypes() {
    // f64 tensors have no Flex kernel; the composed path must still give GELU.
    let x = Tensor::<B, 1>::from_data(
        TensorData::new(vec![-1.0f32, 0.0, 2.0], [3]),
        &Default::default(),
    )
    .cast(burn::tensor::DType::F64);
    assert_eq!(x.dtype(), burn::tensor::DType::F64);
    let got: Vec<f64> = fused::gelu(x)
        .into_data()
        .convert::<f64>()
        .to_vec()
        .unwrap();
    let want = [-0.158_655_25, 0.0, 1.954_499_7];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{got:?}");
    }
}

/// RoPE tables `[seq, rotary]` for random angles, each angle shared by the two features
/// of its pair (halves for rotate-half, neighbours for interleaved), as real tables are.
fn tables(seq: usize, rotary: usize, interleaved: bool) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let angles = random::<B, 2>([seq, rotary / 2]);
    let full = if interleaved {
        angles
            .reshape([seq, rotary / 2, 1])
            .repeat_dim(2, 2)
            .reshape([seq, rotary])
    } else {
        Tensor::cat(vec![angles.clone(), angles], 1)
    };
    (full.clone().cos(), full.sin())
}

/// The Flex RoPE kernel and its autodiff node against the composed body: values and the
/// gradient of `Σ rope(x) · r`, both layouts, full and partial rotation, odd shapes, and
/// a strided input.
#[test]
fn rope_matches_composed_in_values_and_gradients() {
    // (batch, seq, heads, head_dim, rotary_dim)
    for (batch, seq, heads, head_dim, rotary) in
        [(2, 5, 3, 8, 8), (1, 7, 2, 12, 6), (3, 1, 1, 4, 4)]
    {
        for interleaved in [false, true] {
            let x = random::<B, 4>([batch, seq, heads, head_dim]);
            let r = random::<B, 4>([batch, seq, heads, head_dim]);
            let (cos, sin) = tables(seq, rotary, interleaved);
            let run = |fused_path: bool| {
                let xa = Tensor::<AD, 4>::from_inner(x.clone()).require_grad();
                let (c, s) = (
                    Tensor::<AD, 2>::from_inner(cos.clone()),
                    Tensor::<AD, 2>::from_inner(sin.clone()),
                );
                let out: Tensor<AD, 4> = if fused_path {
                    fused::rope(xa.clone(), c, s, interleaved)
                } else {
                    tensor(composed::rope::<AD>(
                        prim(xa.clone()),
                        prim(c),
                        prim(s),
                        interleaved,
                        false,
                    ))
                };
                let grads = (out.clone() * Tensor::from_inner(r.clone()))
                    .sum()
                    .backward();
                (out.inner(), xa.grad(&grads).unwrap())
            };
            let (v1, g1) = run(true);
            let (v2, g2) = run(false);
            close(v1, v2, 1e-5);
            close(g1, g2, 1e-5);
            // The inverse undoes the rotation.
            let there = fused::rope(x.clone(), cos.clone(), sin.clone(), interleaved);
            let back = tensor::<B, 4>(B::fused_rope(
                prim(there),
                prim(cos.clone()),
                prim(sin.clone()),
                interleaved,
                true,
            ));
            // cos² + sin² = 1 for true angles, which these are.
            close(back, x.clone(), 1e-4);
        }
    }
    // A strided (swapped) input takes the contiguous copy path.
    let x = random::<B, 4>([2, 3, 4, 8]).swap_dims(1, 2);
    let (cos, sin) = tables(4, 8, false);
    close(
        fused::rope(x.clone(), cos.clone(), sin.clone(), false),
        tensor(composed::rope::<B>(
            prim(x),
            prim(cos),
            prim(sin),
            false,
            false,
        )),
        1e-5,
    );
}

/// `t` with every value rounded to the nearest bf16 on the host. (Flex's own cast to bf16
/// goes through f64 and lands one bf16 step off for a few values a hair above a tie, so
/// the reference rounds with the tested scalar rule instead.)
fn rounded(t: Tensor<B, 2>) -> Tensor<B, 2> {
    let shape = t.shape();
    let values: Vec<f32> = t.into_data().to_vec().unwrap();
    let values: Vec<f32> = values.into_iter().map(round_to_bf16).collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// The bf16 matmul (the AVX512-BF16 kernel where the CPU has it) against the f32 product
/// of bf16-rounded inputs, on contiguous and transposed operands; its gradients are the
/// bf16 products `dy · bᵀ` and `aᵀ · dy`; and precision `f32` leaves `matmul` exact.
#[test]
fn bf16_matmul_matches_the_rounded_reference_in_values_and_gradients() {
    let reference = |a: Tensor<B, 2>, b: Tensor<B, 2>| rounded(a).matmul(rounded(b));
    for (m, k, n) in [(13, 7, 45), (64, 300, 33), (1, 1, 1)] {
        let a = random::<B, 2>([m, k]) * 0.5;
        let b = random::<B, 2>([k, n]) * 0.5;
        let want = reference(a.clone(), b.clone());
        // Sums of k products of bf16 values: only the order of f32 additions differs.
        let tol = 1e-5 * k as f32;
        close(fused::matmul_bf16(a.clone(), b.clone()), want.clone(), tol);
        // The same product from transposed views of transposed storage.
        let a_t = Tensor::<B, 2>::from_data(a.clone().transpose().into_data(), &Default::default());
        let b_t = Tensor::<B, 2>::from_data(b.clone().transpose().into_data(), &Default::default());
        close(
            fused::matmul_bf16(a_t.transpose(), b_t.transpose()),
            want.clone(),
            tol,
        );
        // Rounding is real: the bf16 product differs from the f32 one.
        if k > 1 {
            let exact = a.clone().matmul(b.clone());
            let gap: f32 = (exact - want.clone()).abs().max().into_scalar();
            assert!(
                gap > 1e-4,
                "{m}x{k}x{n}: bf16 product equals the f32 one ({gap})"
            );
        }
        // The composed body (burn's cast) agrees up to its rare one-step rounding slips.
        let composed = tensor::<B, 2>(composed::matmul_bf16::<B>(prim(a.clone()), prim(b.clone())));
        close(composed, want.clone(), 0.05);

        let device = Default::default();
        let a_ad = Tensor::<AD, 2>::from_data(a.to_data(), &device).require_grad();
        let b_ad = Tensor::<AD, 2>::from_data(b.to_data(), &device).require_grad();
        let dy = random::<B, 2>([m, n]);
        let dy_ad = Tensor::<AD, 2>::from_data(dy.to_data(), &device);
        let out = fused::matmul_bf16(a_ad.clone(), b_ad.clone());
        close(Tensor::<B, 2>::from_data(out.to_data(), &device), want, tol);
        let grads = (out * dy_ad).sum().backward();
        let da = a_ad.grad(&grads).unwrap();
        let db = b_ad.grad(&grads).unwrap();
        close(da, reference(dy.clone(), b.transpose()), 1.5e-5 * n as f32);
        close(db, reference(a.transpose(), dy), 1.5e-5 * m as f32);
    }
    // The process-wide switch: f32 is burn's matmul, bf16 the rounded product.
    let a = random::<B, 2>([9, 40]);
    let b = random::<B, 2>([40, 11]);
    fused::set_matmul_precision(fused::MatmulPrecision::F32);
    close(
        fused::matmul(a.clone(), b.clone()),
        a.clone().matmul(b.clone()),
        0.0,
    );
    fused::set_matmul_precision(fused::MatmulPrecision::Bf16);
    let product = fused::matmul(a.clone(), b.clone());
    fused::set_matmul_precision(fused::MatmulPrecision::F32);
    close(product, fused::matmul_bf16(a, b), 0.0);
}
