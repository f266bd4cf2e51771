//! The attention probabilities themselves, `softmax(score_mod(q kᵀ · scale) | mask)`, for
//! analysis (attention maps, entropy, rollout). [`super::flex_attention`] never
//! materialises them on its fast paths; this computes the full `[seq_q, seq_kv]` matrix.

use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor, TensorData};

use super::{MaskMod, ScoreIndex, ScoreMod};
use crate::fused::FusedBackend;

/// Attention probabilities with the same rules as [`super::flex_attention`].
///
/// - `q`: `[batch, n_heads, seq_q, head_dim]`
/// - `k`: `[batch, n_kv_heads, seq_kv, head_dim]`, `n_heads % n_kv_heads == 0` (query
///   head `h` reads key head `h / (n_heads / n_kv_heads)`), `seq_kv >= seq_q` (query row
///   `i` is position `i + seq_kv - seq_q`)
/// - `scale`: `None` is `1 / sqrt(head_dim)`
/// - returns `[batch, n_heads, seq_q, seq_kv]`: each row sums to 1 over the keys the mask
///   keeps, 0 on the others; a row with every key masked is all zeros.
///
/// # Panics
/// On shapes, masks or modifiers [`super::flex_attention`] refuses.
pub fn attention_probabilities<B: FusedBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    score_mod: &ScoreMod<B>,
    mask: &MaskMod,
    scale: Option<f64>,
) -> Tensor<B, 4> {
    let device = q.device();
    let q = crate::fused::autocast::to_f32(q);
    let k = crate::fused::autocast::to_f32(k);
    let [batch, n_heads, seq_q, head_dim] = q.dims();
    let [_, n_kv_heads, seq_kv, _] = k.dims();
    assert!(
        n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads) && seq_kv >= seq_q,
        "attention_probabilities: q {:?} does not fit k {:?}",
        q.dims(),
        k.dims()
    );
    if let Err(e) = mask.check(batch, seq_kv) {
        panic!("attention_probabilities: mask: {e}");
    }
    if let Err(e) = score_mod.check(n_heads) {
        panic!("attention_probabilities: score modifier: {e}");
    }
    let group = n_heads / n_kv_heads;
    let k = if group > 1 {
        let heads: Vec<i64> = (0..n_heads).map(|h| (h / group) as i64).collect();
        let heads = Tensor::<B, 1, Int>::from_data(TensorData::new(heads, [n_heads]), &device);
        k.select(1, heads)
    } else {
        k
    };
    let scale = scale.unwrap_or(1.0 / (head_dim as f64).sqrt());
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    let q_range = seq_kv - seq_q..seq_kv;
    let scores = if score_mod.is_identity() {
        scores
    } else {
        let index = ScoreIndex::new(batch, n_heads, q_range.clone(), 0..seq_kv, &device);
        score_mod.apply(scores, &index)
    };
    let full = [batch, n_heads, seq_q, seq_kv];
    if matches!(mask, MaskMod::Full) {
        return softmax(scores, 3);
    }
    let batches = if mask.varies_with_batch() { batch } else { 1 };
    let heads = if mask.varies_with_head() { n_heads } else { 1 };
    let hidden = mask
        .hidden::<B>(batches, heads, q_range, 0..seq_kv, &device)
        .expand(full);
    let keep = hidden.clone().bool_not().float();
    softmax(scores.mask_fill(hidden, f32::MIN), 3) * keep
}
