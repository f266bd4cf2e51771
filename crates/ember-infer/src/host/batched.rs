//! The host decoder over many sequences at once, reading and writing a [`PagedKv`]: every
//! sequence's new tokens (one while decoding, a chunk of its prompt while prefilling) go
//! through one pass over the weights, each projection a matrix-matrix product
//! ([`Matrix::matmul`]), attention per token through its sequence's block table.

use rayon::prelude::*;

use ember_nn::MlpKind;
use ember_ops::RopeScaling;

use super::{HostDecoder, Linear, Norm, gelu_tanh, kernels, rotate};
use crate::paged_kv::{BlockTable, PagedKv};

/// One sequence's part of a batched pass: `tokens` continue the `table.len` positions
/// already cached. The caller has reserved blocks for `table.len + tokens.len()`
/// positions; the pass writes them and advances `table.len`.
pub struct PagedChunk<'a> {
    pub table: &'a mut BlockTable,
    pub tokens: &'a [u32],
}

/// Where each token of a pass sits: its sequence and its position there.
#[derive(Clone, Copy)]
struct Slot {
    seq: usize,
    pos: usize,
}

impl Linear {
    /// `y[t] = W x[t] (+ b)` for `rows` inputs (`x`: `[rows, in]`, `y`: `[rows, out]`).
    fn forward_rows(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        self.weight.matmul(x, rows, y);
        if let Some(bias) = &self.bias {
            for row in y.chunks_exact_mut(bias.len()) {
                for (y, b) in row.iter_mut().zip(bias) {
                    *y += b;
                }
            }
        }
    }
}

impl Norm {
    fn apply_rows(&self, x: &[f32], out: &mut [f32]) {
        let d = self.gamma.len();
        for (x, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            self.apply(x, out);
        }
    }
}

impl HostDecoder {
    /// Runs every chunk's tokens after its cached positions in one pass and returns the
    /// next-token logits of each chunk's last token, `[chunks, vocab]`. The numbers are
    /// those of [`HostDecoder::prefill`] on each sequence alone (dynamic NTK's frequencies
    /// follow each sequence's length after its chunk).
    ///
    /// Panics when a chunk is empty, runs past `max_seq_len`, lacks reserved blocks or
    /// holds a token outside the vocabulary (the caller checks these).
    pub fn forward_paged(&self, kv: &mut PagedKv, chunks: &mut [PagedChunk<'_>]) -> Vec<f32> {
        self.run_paged(kv, chunks, false)
    }

    /// [`Self::forward_paged`] returning the logits after every token of every chunk,
    /// `[tokens, vocab]` in chunk order (what a target model scores drafted tokens with).
    pub fn forward_paged_all(&self, kv: &mut PagedKv, chunks: &mut [PagedChunk<'_>]) -> Vec<f32> {
        self.run_paged(kv, chunks, true)
    }

    fn run_paged(&self, kv: &mut PagedKv, chunks: &mut [PagedChunk<'_>], all: bool) -> Vec<f32> {
        let c = &self.config;
        let (d, hd) = (c.d_model, c.head_dim());
        let (n_heads, n_kv) = (c.n_heads, c.n_kv_heads);
        let kv_width = n_kv * hd;
        let mut slots = Vec::new();
        let mut tokens = Vec::new();
        for (seq, chunk) in chunks.iter().enumerate() {
            let start = chunk.table.len;
            let end = start + chunk.tokens.len();
            assert!(!chunk.tokens.is_empty(), "forward_paged: an empty chunk");
            assert!(end <= c.max_seq_len, "forward_paged: past max_seq_len");
            assert!(
                end <= chunk.table.capacity(kv.block_size()),
                "forward_paged: blocks not reserved"
            );
            for (i, &t) in chunk.tokens.iter().enumerate() {
                slots.push(Slot {
                    seq,
                    pos: start + i,
                });
                tokens.push(t as usize);
            }
        }
        let n = tokens.len();
        let mut x = vec![0f32; n * d];
        for (t, (&token, slot)) in tokens.iter().zip(&slots).enumerate() {
            let row = &mut x[t * d..(t + 1) * d];
            row.copy_from_slice(&self.tok_embeddings[token * d..(token + 1) * d]);
            if let Some(table) = &self.pos_embeddings {
                let p = slot.pos;
                for (x, e) in row.iter_mut().zip(&table[p * d..(p + 1) * d]) {
                    *x += e;
                }
            }
        }
        // RoPE's cos and sin per token, `[n, rotary_dim]`.
        let r = self.rope.as_ref().map_or(0, |rope| rope.rotary_dim);
        let (mut cos, mut sin) = (vec![0f32; n * r], vec![0f32; n * r]);
        if let Some(rope) = &self.rope {
            for (t, slot) in slots.iter().enumerate() {
                let len = chunks[slot.seq].table.len + chunks[slot.seq].tokens.len();
                let dynamic = match rope.scaling {
                    Some(RopeScaling::DynamicNtk { .. }) => Some(rope.inv_freq(len)),
                    _ => None,
                };
                let (inv_freq, mscale) = dynamic.as_ref().unwrap_or(&self.inv_freq);
                ember_ops::rope::table_row_into(
                    rope.layout,
                    inv_freq,
                    *mscale,
                    slot.pos,
                    &mut cos[t * r..(t + 1) * r],
                    &mut sin[t * r..(t + 1) * r],
                );
            }
        }
        let mut xb = vec![0f32; n * d];
        let mut q = vec![0f32; n * n_heads * hd];
        let mut k = vec![0f32; n * kv_width];
        let mut v = vec![0f32; n * kv_width];
        let mut attn = vec![0f32; n * n_heads * hd];
        let mut hidden = vec![0f32; n * c.d_ff];
        let mut hidden2 = vec![0f32; n * c.d_ff];
        let scale = 1.0 / (hd as f32).sqrt();
        let group = n_heads / n_kv;
        for (l, layer) in self.layers.iter().enumerate() {
            layer.attn_norm.apply_rows(&x, &mut xb);
            layer.q.forward_rows(&xb, n, &mut q);
            layer.k.forward_rows(&xb, n, &mut k);
            layer.v.forward_rows(&xb, n, &mut v);
            if let Some(rope) = &self.rope {
                let mut rotated = vec![0f32; r];
                for t in 0..n {
                    let (cos, sin) = (&cos[t * r..(t + 1) * r], &sin[t * r..(t + 1) * r]);
                    let heads = q[t * n_heads * hd..(t + 1) * n_heads * hd]
                        .chunks_exact_mut(hd)
                        .chain(k[t * kv_width..(t + 1) * kv_width].chunks_exact_mut(hd));
                    for head in heads {
                        rotate(rope, head, cos, sin, &mut rotated);
                    }
                }
            }
            for (t, slot) in slots.iter().enumerate() {
                let table = &*chunks[slot.seq].table;
                kv.write(
                    l,
                    table,
                    slot.pos,
                    &k[t * kv_width..(t + 1) * kv_width],
                    &v[t * kv_width..(t + 1) * kv_width],
                );
            }
            let (keys, values) = kv.layer(l);
            let kv_ref = &*kv;
            let chunks_ref = &*chunks;
            let q_ref = &q;
            let attend = |(t, out): (usize, &mut [f32]), scratch: &mut (Vec<f32>, Vec<usize>)| {
                let (scores, offsets) = scratch;
                let slot = slots[t];
                let table = &*chunks_ref[slot.seq].table;
                let first = match c.sliding_window {
                    Some(w) if slot.pos + 1 > w => slot.pos + 1 - w,
                    _ => 0,
                };
                offsets.clear();
                offsets.extend((first..=slot.pos).map(|p| kv_ref.offset(table, p)));
                for h in 0..n_heads {
                    let kvh = (h / group) * hd;
                    let qh = &q_ref[(t * n_heads + h) * hd..(t * n_heads + h + 1) * hd];
                    let out = &mut out[h * hd..(h + 1) * hd];
                    kernels::attend(qh, keys, values, offsets, kvh, scale, scores, out);
                }
            };
            if n > 1 && rayon::current_num_threads() > 1 {
                attn.par_chunks_exact_mut(n_heads * hd)
                    .enumerate()
                    .for_each_init(Default::default, |scratch, item| attend(item, scratch));
            } else {
                let mut scratch = Default::default();
                attn.chunks_exact_mut(n_heads * hd)
                    .enumerate()
                    .for_each(|item| attend(item, &mut scratch));
            }
            layer.o.forward_rows(&attn, n, &mut xb);
            for (x, o) in x.iter_mut().zip(&xb) {
                *x += o;
            }
            layer.mlp_norm.apply_rows(&x, &mut xb);
            layer.up.forward_rows(&xb, n, &mut hidden);
            match &layer.gate {
                Some(gate) => {
                    gate.forward_rows(&xb, n, &mut hidden2);
                    let gelu = c.mlp == MlpKind::GeGlu;
                    for (h, g) in hidden.iter_mut().zip(&hidden2) {
                        let act = if gelu {
                            ember_ops::fused::math::gelu(*g)
                        } else {
                            g / (1.0 + (-g).exp())
                        };
                        *h *= act;
                    }
                }
                None => {
                    let tanh = c.mlp == MlpKind::GeluTanh;
                    for h in hidden.iter_mut() {
                        *h = if tanh {
                            gelu_tanh(*h)
                        } else {
                            ember_ops::fused::math::gelu(*h)
                        };
                    }
                }
            }
            layer.down.forward_rows(&hidden, n, &mut xb);
            for (x, o) in x.iter_mut().zip(&xb) {
                *x += o;
            }
        }
        // Unless every token's logits are asked for, only each chunk's last needs them.
        let mut last = Vec::with_capacity(chunks.len() * d);
        let mut end = 0;
        for chunk in chunks.iter_mut() {
            end += chunk.tokens.len();
            chunk.table.len += chunk.tokens.len();
            if !all {
                last.extend_from_slice(&x[(end - 1) * d..end * d]);
            }
        }
        let rows = if all { x } else { last };
        let count = rows.len() / d;
        let mut normed = vec![0f32; rows.len()];
        self.final_norm.apply_rows(&rows, &mut normed);
        let mut logits = vec![0f32; count * c.vocab_size];
        self.lm_head.matmul(&normed, count, &mut logits);
        logits
    }
}
