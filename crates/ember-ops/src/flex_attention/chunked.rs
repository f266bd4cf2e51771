//! Memory-efficient attention: query and key tiles with an online softmax.
//!
//! Peak memory is one `[batch, n_heads, q_block, kv_block]` tile instead of the full
//! `[batch, n_heads, seq_q, seq_kv]` score matrix. Tiles the block mask marks empty are
//! skipped; full tiles run without an element mask. The running maximum is a stabiliser
//! only (the result is exactly invariant to it), so it is detached from autodiff.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::block_mask::BlockMask;
use super::mask_mod::{MaskMod, TileKind};
use super::score_mod::{ScoreIndex, ScoreMod};

/// The score given to masked entries: finite, so a row masked so far never produces
/// `inf - inf`; its garbage weights are wiped by the first unmasked score
/// (`exp(MASKED - m) = 0`), and rows masked everywhere are zeroed at the end.
const MASKED: f32 = -1e30;

/// `q`: `[batch, n_heads, seq_q, d]`, `k`/`v`: `[batch, n_kv_heads, seq_kv, d]`.
pub(super) fn chunked_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    score_mod: &ScoreMod<B>,
    mask: &MaskMod,
    scale: f64,
    blocks: &BlockMask,
) -> Tensor<B, 4> {
    let device = q.device();
    let [batch, n_heads, _, d] = q.dims();
    let n_kv_heads = k.dims()[1];
    let group = n_heads / n_kv_heads;
    let (q_tiles, kv_tiles) = blocks.tiles();
    let mut outputs = Vec::with_capacity(q_tiles);
    for qt in 0..q_tiles {
        let q_range = blocks.q_range(qt);
        let rows = q_range.len();
        let q_start = q_range.start - blocks.q_offset;
        // Query heads of one K/V group share its keys: fold them into the rows, so the
        // key/value heads are broadcast by the matmul rather than repeated.
        let q_tile =
            q.clone()
                .narrow(2, q_start, rows)
                .reshape([batch, n_kv_heads, group * rows, d]);
        let mut state: Option<(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> = None;
        for kt in 0..kv_tiles {
            let kind = blocks.joint_kind(qt, kt);
            if kind == TileKind::Empty {
                continue;
            }
            let kv_range = blocks.kv_range(kt);
            let cols = kv_range.len();
            let k_tile = k.clone().narrow(2, kv_range.start, cols);
            let v_tile = v.clone().narrow(2, kv_range.start, cols);
            let scores = q_tile
                .clone()
                .matmul(k_tile.swap_dims(2, 3))
                .reshape([batch, n_heads, rows, cols])
                .mul_scalar(scale);
            let scores = if score_mod.is_identity() {
                scores
            } else {
                let index =
                    ScoreIndex::new(batch, n_heads, q_range.clone(), kv_range.clone(), &device);
                score_mod.apply(scores, &index)
            };
            let scores = if kind == TileKind::Partial {
                let hidden = mask
                    .hidden::<B>(
                        blocks.batches,
                        blocks.heads,
                        q_range.clone(),
                        kv_range,
                        &device,
                    )
                    .expand([batch, n_heads, rows, cols]);
                scores.mask_fill(hidden, MASKED)
            } else {
                scores
            };
            let tile_max = scores.clone().max_dim(3).detach();
            let max = match &state {
                Some((m, _, _)) => m.clone().max_pair(tile_max),
                None => tile_max,
            };
            let p = (scores - max.clone()).exp();
            let row_sum = p.clone().sum_dim(3);
            let pv = p
                .reshape([batch, n_kv_heads, group * rows, cols])
                .matmul(v_tile)
                .reshape([batch, n_heads, rows, d]);
            state = Some(match state {
                Some((m, l, acc)) => {
                    let correction = (m - max.clone()).exp();
                    (max, l * correction.clone() + row_sum, acc * correction + pv)
                }
                None => (max, row_sum, pv),
            });
        }
        let out = match state {
            Some((max, l, acc)) => {
                let masked_rows = max
                    .lower_elem(MASKED / 2.0)
                    .expand([batch, n_heads, rows, d]);
                (acc / l).mask_fill(masked_rows, 0.0)
            }
            None => Tensor::zeros([batch, n_heads, rows, d], &device),
        };
        outputs.push(out);
    }
    Tensor::cat(outputs, 2)
}
