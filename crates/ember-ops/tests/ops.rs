//! The fused paths against the explicit references in `ember_ops::reference`.

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};
use ember_ops::mask::causal_mask;
use ember_ops::reference::{naive_attention, naive_rope};
use ember_ops::{RopeTables, scaled_dot_product_attention};

type B = Flex;

fn random(shape: [usize; 4]) -> Tensor<B, 4> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn check_attention(n_heads: usize, n_kv_heads: usize, seq_q: usize, seq_kv: usize, causal: bool) {
    let q = random([2, n_heads, seq_q, 8]);
    let k = random([2, n_kv_heads, seq_kv, 8]);
    let v = random([2, n_kv_heads, seq_kv, 8]);
    let fused = scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), causal, None);
    let naive = naive_attention(q, k, v, causal);
    fused
        .into_data()
        .assert_approx_eq::<f32>(&naive.into_data(), Tolerance::absolute(1e-5));
}

#[test]
fn attention_matches_naive_for_mha_gqa_mqa() {
    for (h, kv) in [(4, 4), (4, 2), (6, 2), (4, 1)] {
        check_attention(h, kv, 7, 7, true);
        check_attention(h, kv, 7, 7, false);
    }
}

#[test]
fn causal_attention_with_cached_prefix_is_bottom_right_aligned() {
    // A block of 3 new queries after 5 cached positions, and single-token decoding.
    for (h, kv) in [(4, 4), (4, 2), (4, 1)] {
        check_attention(h, kv, 3, 8, true);
        check_attention(h, kv, 1, 9, true);
    }
}

#[test]
fn explicit_causal_mask_equals_causal_flag() {
    let q = random([1, 2, 4, 8]);
    let k = random([1, 2, 6, 8]);
    let v = random([1, 2, 6, 8]);
    let mask = causal_mask::<B>(4, 6, &Default::default());
    let with_mask =
        scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), false, Some(mask));
    let with_flag = scaled_dot_product_attention(q, k, v, true, None);
    with_mask
        .into_data()
        .assert_approx_eq::<f32>(&with_flag.into_data(), Tolerance::absolute(1e-6));
}

#[test]
fn causal_mask_values() {
    let mask = causal_mask::<B>(2, 4, &Default::default());
    let expected = TensorData::new(
        vec![false, false, false, true, false, false, false, false],
        [1, 1, 2, 4],
    );
    mask.into_data().assert_eq(&expected, true);
}

#[test]
fn rope_matches_closed_form_at_offsets() {
    let (seq, head_dim, theta) = (5, 8, 10_000.0);
    let tables = RopeTables::<B>::new(head_dim, 32, theta, &Default::default());
    let x = random([1, 1, seq, head_dim]);
    let host: Vec<f32> = x.clone().into_data().to_vec().unwrap();
    for start in [0, 3, 27] {
        let got = tables.apply(x.clone(), start);
        let want = naive_rope(&host, seq, head_dim, start, theta);
        got.into_data().assert_approx_eq::<f32>(
            &TensorData::new(want, [1, 1, seq, head_dim]),
            Tolerance::absolute(1e-5),
        );
    }
}

#[test]
fn rope_preserves_norm_and_is_identity_at_position_zero() {
    let tables = RopeTables::<B>::new(4, 8, 500.0, &Default::default());
    let x = random([1, 1, 1, 4]);
    tables
        .apply(x.clone(), 0)
        .into_data()
        .assert_approx_eq::<f32>(&x.clone().into_data(), Tolerance::absolute(1e-6));
    let rotated = tables.apply(x.clone(), 5);
    let n0: f32 = x.powi_scalar(2).sum().into_scalar();
    let n1: f32 = rotated.powi_scalar(2).sum().into_scalar();
    assert!((n0 - n1).abs() < 1e-4 * n0.max(1.0));
}
