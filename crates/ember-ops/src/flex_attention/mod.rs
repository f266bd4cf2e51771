//! A FlexAttention-style attention API: scores modified by a [`ScoreMod`], keys hidden
//! by a [`MaskMod`], dispatched to the fastest path that can express them.
//!
//! ```text
//! scores = q kᵀ · scale                        [batch, n_heads, seq_q, seq_kv]
//! scores = score_mod(scores, b, h, q_idx, kv_idx)
//! scores[!mask_mod(b, h, q_idx, kv_idx)] = -inf
//! out    = softmax(scores) v                   [batch, n_heads, seq_q, head_dim]
//! ```
//! Rows with every key masked produce zeros. Paths ([`AttentionPath`]):
//! - the [`crate::fused`] attention kernel, for plain causal or full attention;
//! - burn's fused `attention` op, for what it expresses: soft-capping, then a boolean
//!   mask, then an additive bias (ALiBi);
//! - [`chunked`](chunked::chunked_attention): tiles with an online softmax, for any
//!   modifier and for long sequences; tiles the [`BlockMask`] marks empty are skipped.
//!
//! Key/value heads are never repeated: query heads of a group are folded into rows.

pub mod block_mask;
mod chunked;
pub mod mask_mod;
pub mod probabilities;
pub mod score_mod;

pub use block_mask::BlockMask;
pub use mask_mod::{MaskFn, MaskMod, TileKind};
pub use probabilities::attention_probabilities;
pub use score_mod::{FusedScoreMod, ScoreFn, ScoreIndex, ScoreMod, alibi_bias};

use burn::tensor::Tensor;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::fused::FusedBackend;

/// Which implementation runs the attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionPath {
    /// The fused kernel for plain causal/full attention, burn's fused op while the score
    /// matrix stays under [`FlexOptions::max_fused_scores`] entries, otherwise chunked.
    #[default]
    Auto,
    /// burn's fused `attention` op (panics if the score modifier is not expressible).
    Fused,
    /// Query/key tiles with an online softmax.
    Chunked,
}

/// Options of [`flex_attention`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlexOptions {
    /// Score scale; `None` is `1 / sqrt(head_dim)`.
    pub scale: Option<f64>,
    /// Rows and columns of one tile (chunked path and block mask).
    pub block_size: usize,
    pub path: AttentionPath,
    /// Largest `batch · n_heads · seq_q · seq_kv` the automatic choice materialises.
    pub max_fused_scores: usize,
}

impl Default for FlexOptions {
    fn default() -> Self {
        Self {
            scale: None,
            block_size: 128,
            path: AttentionPath::Auto,
            max_fused_scores: 1 << 24,
        }
    }
}

/// Attention with a score modifier and a mask modifier.
///
/// - `q`: `[batch, n_heads, seq_q, head_dim]`
/// - `k`, `v`: `[batch, n_kv_heads, seq_kv, head_dim]`, `n_heads % n_kv_heads == 0`,
///   `seq_kv >= seq_q` (query row `i` is position `i + seq_kv - seq_q`)
/// - returns `[batch, n_heads, seq_q, head_dim]`
///
/// # Panics
/// On shapes that break the rules above, a mask or modifier that does not fit them
/// ([`MaskMod::check`], [`ScoreMod::check`]), or [`AttentionPath::Fused`] with a modifier
/// that burn's op cannot express.
pub fn flex_attention<B: FusedBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    score_mod: &ScoreMod<B>,
    mask: &MaskMod,
    options: &FlexOptions,
) -> Tensor<B, 4> {
    let [batch, n_heads, seq_q, head_dim] = q.dims();
    let [_, n_kv_heads, seq_kv, _] = k.dims();
    assert!(
        n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads),
        "flex_attention: n_heads = {n_heads} is not a multiple of n_kv_heads = {n_kv_heads}"
    );
    assert!(
        seq_kv >= seq_q,
        "flex_attention: {seq_q} queries but only {seq_kv} keys"
    );
    if let Err(e) = mask.check(batch, seq_kv) {
        panic!("flex_attention: mask: {e}");
    }
    if let Err(e) = score_mod.check(n_heads) {
        panic!("flex_attention: score modifier: {e}");
    }
    let default_scale = 1.0 / (head_dim as f64).sqrt();
    let scale = options.scale.unwrap_or(default_scale);
    let plain = score_mod.is_identity() && scale == default_scale;
    let scores = batch * n_heads * seq_q * seq_kv;
    let path = match options.path {
        AttentionPath::Auto => match mask {
            MaskMod::Causal | MaskMod::Full if plain => {
                return crate::fused::attention(q, k, v, matches!(mask, MaskMod::Causal));
            }
            _ if scores <= options.max_fused_scores && score_mod.fused_form().is_some() => {
                AttentionPath::Fused
            }
            _ => AttentionPath::Chunked,
        },
        path => path,
    };
    // The other paths compute in the inputs' dtype: f32 (mixed precision's low-precision
    // q, k, v are cast here; the fused path above computes in f32 by itself).
    let (q, k, v) = (
        crate::fused::autocast::to_f32(q),
        crate::fused::autocast::to_f32(k),
        crate::fused::autocast::to_f32(v),
    );
    match path {
        AttentionPath::Fused => {
            let form = score_mod.fused_form().unwrap_or_else(|| {
                panic!("flex_attention: {score_mod:?} cannot run on burn's fused attention op")
            });
            fused_op_attention(q, k, v, &form, mask, scale)
        }
        _ => {
            let blocks = BlockMask::new(
                mask,
                batch,
                n_heads,
                seq_q,
                seq_kv,
                options.block_size,
                options.block_size,
            );
            chunked::chunked_attention(q, k, v, score_mod, mask, scale, &blocks)
        }
    }
}

/// burn's fused `attention` op with the mask as a boolean tensor and ALiBi as an
/// additive bias. Grouped query heads are folded into rows (`[batch, n_kv_heads,
/// group · seq_q, d]`), with the mask and bias reshaped to match.
fn fused_op_attention<B: FusedBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    form: &FusedScoreMod,
    mask: &MaskMod,
    scale: f64,
) -> Tensor<B, 4> {
    let device = q.device();
    let [batch, n_heads, seq_q, head_dim] = q.dims();
    let [_, n_kv_heads, seq_kv, _] = k.dims();
    let group = n_heads / n_kv_heads;
    let q_range = seq_kv - seq_q..seq_kv;
    let options = AttentionModuleOptions {
        scale: Some(scale),
        softcap: form.softcap,
        is_causal: group == 1 && matches!(mask, MaskMod::Causal),
    };
    let full = [batch, n_heads, seq_q, seq_kv];
    let folded = [batch, n_kv_heads, group * seq_q, seq_kv];
    let hidden = match mask {
        MaskMod::Full => None,
        MaskMod::Causal if options.is_causal => None,
        _ => {
            let batches = if mask.varies_with_batch() { batch } else { 1 };
            let heads = if mask.varies_with_head() { n_heads } else { 1 };
            let hidden = mask.hidden::<B>(batches, heads, q_range.clone(), 0..seq_kv, &device);
            Some(hidden.expand(full).reshape(folded))
        }
    };
    let bias = form.alibi.as_ref().map(|slopes| {
        let index = ScoreIndex::<B>::new(1, n_heads, q_range, 0..seq_kv, &device);
        alibi_bias(slopes, &index).expand(full).reshape(folded)
    });
    let q = q.reshape([batch, n_kv_heads, group * seq_q, head_dim]);
    attention(q, k, v, hidden, bias, options).reshape([batch, n_heads, seq_q, head_dim])
}
