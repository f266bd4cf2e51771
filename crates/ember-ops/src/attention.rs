//! Scaled dot-product attention on burn's fused `attention` op.

use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

/// Repeats each key/value head `n_rep` times so that grouped-query attention can use a
/// kernel that expects one key/value head per query head.
///
/// - `x`: `[batch, n_kv_heads, seq, head_dim]`
/// - returns `[batch, n_kv_heads * n_rep, seq, head_dim]`, where query head `h` reads
///   key/value head `h / n_rep` (the grouping used by Llama, Mistral and Hugging Face).
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, n_rep: usize) -> Tensor<B, 4> {
    if n_rep == 1 {
        return x;
    }
    let [batch, n_kv_heads, seq, head_dim] = x.dims();
    x.reshape([batch, n_kv_heads, 1, seq, head_dim])
        .expand([batch, n_kv_heads, n_rep, seq, head_dim])
        .reshape([batch, n_kv_heads * n_rep, seq, head_dim])
}

/// `softmax(q kᵀ / sqrt(head_dim) [+ mask]) v` for multi-head, grouped-query and
/// multi-query attention.
///
/// - `q`: `[batch, n_heads, seq_q, head_dim]`
/// - `k`, `v`: `[batch, n_kv_heads, seq_kv, head_dim]` with `n_heads % n_kv_heads == 0`
/// - `causal`: query `i` sees keys `j <= i + (seq_kv - seq_q)`; the boundary is aligned at
///   the bottom-right corner, so a query block appended after `seq_kv - seq_q` cached
///   positions attends to the whole cache and causally within itself.
/// - `mask`: optional `[batch|1, n_heads|1, seq_q, seq_kv]`, `true` = hidden.
/// - returns `[batch, n_heads, seq_q, head_dim]`
///
/// Grouped-query heads are not repeated: the query heads of a group are folded into the
/// rows (`[batch, n_kv_heads, group * seq_q, head_dim]`) and attend to their shared key
/// and value head directly, with the mask reshaped to match.
pub fn scaled_dot_product_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
    mask: Option<Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    let [batch, n_heads, seq_q, head_dim] = q.dims();
    let [_, n_kv_heads, seq_kv, _] = k.dims();
    debug_assert_eq!(
        n_heads % n_kv_heads,
        0,
        "n_heads must be a multiple of n_kv_heads"
    );
    let group = n_heads / n_kv_heads;
    let options = |is_causal| AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal,
    };
    if group == 1 {
        return attention(q, k, v, mask, None, options(causal));
    }
    let full = [batch, n_heads, seq_q, seq_kv];
    let folded = [batch, n_kv_heads, group * seq_q, seq_kv];
    // A single query row sees every key under bottom-right-aligned causality.
    let causal_mask = (causal && seq_q > 1)
        .then(|| crate::mask::causal_mask::<B>(seq_q, seq_kv, &q.device()).expand(full));
    let mask = match (mask.map(|m| m.expand(full)), causal_mask) {
        (Some(a), Some(b)) => Some(a.bool_or(b)),
        (a, b) => a.or(b),
    };
    let q = q.reshape([batch, n_kv_heads, group * seq_q, head_dim]);
    attention(
        q,
        k,
        v,
        mask.map(|m| m.reshape(folded)),
        None,
        options(false),
    )
    .reshape([batch, n_heads, seq_q, head_dim])
}
