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
pub fn scaled_dot_product_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
    mask: Option<Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    let n_heads = q.dims()[1];
    let n_kv_heads = k.dims()[1];
    debug_assert_eq!(
        n_heads % n_kv_heads,
        0,
        "n_heads must be a multiple of n_kv_heads"
    );
    let n_rep = n_heads / n_kv_heads;
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: causal,
    };
    attention(
        q,
        repeat_kv(k, n_rep),
        repeat_kv(v, n_rep),
        mask,
        None,
        options,
    )
}
