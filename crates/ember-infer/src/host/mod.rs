//! A decoder that runs batch-1 generation on the host CPU without burn: weights copied
//! once into plain arrays (f32, or int8 with block scales), a preallocated KV cache
//! written in place, reused buffers, and matrix-vector kernels. No autodiff graph and no
//! allocation per token.
//!
//! It covers the pre-norm GPT-2 / Llama / Mistral / Qwen2 shapes (LayerNorm or RMSNorm,
//! learned positions, RoPE in either layout with any scaling, or none, GELU / tanh-GELU /
//! SwiGLU / GeGLU feed-forward, MHA/GQA/MQA, biases, sliding windows, tied embeddings).
//! [`HostDecoder::new`] says which option it lacks for anything else (MoE, ALiBi,
//! soft-capping, QK-norm, post/sandwich norms, parallel residual, GroupNorm, sinusoidal
//! positions), and [`crate::Generator`] then uses the burn model.

mod batched;
mod decoding;
pub mod kernels;
mod load;
mod matrix;
pub mod store;

pub use batched::PagedChunk;
pub use decoding::BurnPrefilledHost;

use ember_nn::{MlpKind, TransformerConfig};
use ember_ops::{RopeConfig, RopeLayout, RopeScaling};

pub use matrix::Matrix;

/// How the host decoder stores weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostWeights {
    /// The model's f32 values: the same numbers as the burn model.
    F32,
    /// Symmetric int8 with an f32 scale per block of 32 inputs of a row (the last block
    /// of a row holds the remaining inputs when the width is not a multiple of 32): a
    /// quarter of the memory traffic. Every projection and the LM head is int8; only the
    /// embeddings for lookup stay f32.
    Int8,
    /// Symmetric 4-bit with an f32 scale per group of 32 inputs (llama.cpp's Q4_0; a
    /// row's last group zero-padded): an eighth of f32's traffic, every projection and
    /// the LM head.
    Int4,
}

#[derive(Debug, Clone)]
struct Norm {
    gamma: Vec<f32>,
    beta: Option<Vec<f32>>,
    rms: bool,
    eps: f32,
}

impl Norm {
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        let n = x.len() as f32;
        let (mean, denom) = if self.rms {
            let ms = x.iter().map(|v| v * v).sum::<f32>() / n;
            (0.0, (ms + self.eps).sqrt())
        } else {
            let mean = x.iter().sum::<f32>() / n;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            (mean, (var + self.eps).sqrt())
        };
        let inv = 1.0 / denom;
        for (i, o) in out.iter_mut().enumerate() {
            *o = (x[i] - mean) * inv * self.gamma[i];
        }
        if let Some(beta) = &self.beta {
            for (o, b) in out.iter_mut().zip(beta) {
                *o += b;
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Linear {
    weight: Matrix,
    bias: Option<Vec<f32>>,
}

impl Linear {
    fn forward(&self, x: &[f32], y: &mut [f32]) {
        self.weight.matvec(x, y);
        if let Some(bias) = &self.bias {
            for (y, b) in y.iter_mut().zip(bias) {
                *y += b;
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: Norm,
    gate: Option<Linear>,
    up: Linear,
    down: Linear,
}

/// The storage of a [`HostDecoder`]'s matrices ([`HostDecoder::matrix_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatrixCounts {
    /// Matrices stored as int8 with block scales.
    pub int8: usize,
    /// Matrices stored as 4-bit codes with group scales.
    pub int4: usize,
    /// Matrices stored as f32.
    pub f32: usize,
}

/// Batch-1 decoder state: the KV cache and every scratch buffer, allocated once.
#[derive(Debug, Clone)]
pub struct DecodeState {
    /// Tokens in the cache.
    pos: usize,
    /// Per layer `[max_seq, n_kv_heads, head_dim]`.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    x: Vec<f32>,
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    scores: Vec<f32>,
    hidden: Vec<f32>,
    hidden2: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    rotated: Vec<f32>,
    logits: Vec<f32>,
}

impl DecodeState {
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// The next-token logits `[vocab]` of the last position run.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Sets [`Self::logits`] (computed elsewhere, with the positions [`Self::load`] put in).
    pub fn set_logits(&mut self, logits: &[f32]) {
        self.logits.copy_from_slice(logits);
    }

    /// Empties the cache (keeping its memory).
    pub fn clear(&mut self) {
        self.pos = 0;
    }

    /// Keeps the first `len` positions (rejected draft tokens).
    pub fn truncate(&mut self, len: usize) {
        self.pos = self.pos.min(len);
    }

    /// Replaces the cache with `len` positions computed elsewhere (a batched forward pass
    /// of the same model): per layer, keys and values `[n_kv_heads, len, head_dim]`.
    pub fn load(&mut self, layers: &[(Vec<f32>, Vec<f32>)], len: usize, n_kv: usize) {
        assert_eq!(layers.len(), self.keys.len());
        let head_dim = self.k.len() / n_kv;
        assert!(
            len * n_kv * head_dim <= self.keys[0].len(),
            "the KV cache is full"
        );
        for (l, (k, v)) in layers.iter().enumerate() {
            for (src, dst) in [(k, &mut self.keys[l]), (v, &mut self.values[l])] {
                for h in 0..n_kv {
                    for t in 0..len {
                        let from = (h * len + t) * head_dim;
                        let to = (t * n_kv + h) * head_dim;
                        dst[to..to + head_dim].copy_from_slice(&src[from..from + head_dim]);
                    }
                }
            }
        }
        self.pos = len;
    }
}

/// A model's weights laid out for batch-1 decoding on the host.
#[derive(Debug, Clone)]
pub struct HostDecoder {
    config: TransformerConfig,
    rope: Option<RopeConfig>,
    /// RoPE frequencies and cos/sin factor (recomputed per step only for dynamic NTK).
    inv_freq: (Vec<f64>, f64),
    tok_embeddings: Vec<f32>,
    pos_embeddings: Option<Vec<f32>>,
    layers: Vec<Layer>,
    final_norm: Norm,
    /// `[vocab, d_model]`: the output projection, or the token embedding when tied.
    lm_head: Matrix,
}

impl HostDecoder {
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// Every matrix a decoded token multiplies by, named by its parameter: per layer
    /// `layers.{i}.attn.{q,k,v,o}_proj` and `layers.{i}.mlp.{gate,up,down}_proj` (`gate`
    /// only for gated MLPs), then `lm_head` (a copy of the token embedding when tied).
    pub fn matrices(&self) -> Vec<(String, &Matrix)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let attn = [
                ("attn.q", &l.q),
                ("attn.k", &l.k),
                ("attn.v", &l.v),
                ("attn.o", &l.o),
            ];
            let gate = l.gate.as_ref().map(|g| ("mlp.gate", g));
            let mlp = [("mlp.up", &l.up), ("mlp.down", &l.down)];
            for (name, lin) in attn.into_iter().chain(gate).chain(mlp) {
                out.push((format!("layers.{i}.{name}_proj"), &lin.weight));
            }
        }
        out.push(("lm_head".to_string(), &self.lm_head));
        out
    }

    /// How many of [`Self::matrices`] are stored in each format.
    pub fn matrix_counts(&self) -> MatrixCounts {
        let int8 = self.matrices().iter().filter(|(_, m)| m.is_int8()).count();
        let int4 = self.matrices().iter().filter(|(_, m)| m.is_int4()).count();
        MatrixCounts {
            int8,
            int4,
            f32: self.matrices().len() - int8 - int4,
        }
    }

    /// Bytes of weights read per decoded token.
    pub fn weight_bytes(&self) -> usize {
        self.matrices().iter().map(|(_, m)| m.bytes()).sum()
    }

    /// An empty state with a cache of `max_seq_len` positions.
    pub fn new_state(&self) -> DecodeState {
        let c = &self.config;
        let kv = c.n_kv_heads * c.head_dim();
        let cache = || vec![vec![0f32; c.max_seq_len * kv]; c.n_layers];
        let r = self.rope.as_ref().map_or(0, |r| r.rotary_dim);
        DecodeState {
            pos: 0,
            keys: cache(),
            values: cache(),
            x: vec![0.0; c.d_model],
            xb: vec![0.0; c.d_model],
            q: vec![0.0; c.n_heads * c.head_dim()],
            k: vec![0.0; kv],
            v: vec![0.0; kv],
            attn: vec![0.0; c.n_heads * c.head_dim()],
            scores: vec![0.0; c.max_seq_len],
            hidden: vec![0.0; c.d_ff],
            hidden2: vec![0.0; c.d_ff],
            cos: vec![0.0; r],
            sin: vec![0.0; r],
            rotated: vec![0.0; r],
            logits: vec![0.0; c.vocab_size],
        }
    }

    /// Runs one token at position `state.len()` and returns the logits `[vocab]` of the
    /// next. Panics when the cache is full or `token` is outside the vocabulary (the
    /// caller checks both).
    pub fn step<'s>(&self, state: &'s mut DecodeState, token: u32) -> &'s [f32] {
        let len = state.pos + 1;
        self.step_in(state, token, len)
    }

    /// Runs `tokens` (at least one) as one block after the cache and returns the logits
    /// of the last. Identical to stepping through them, except under dynamic NTK scaling,
    /// whose frequencies follow the length of the whole block (`state.len() +
    /// tokens.len()`), as a batched forward pass computes them.
    pub fn prefill<'s>(&self, state: &'s mut DecodeState, tokens: &[u32]) -> &'s [f32] {
        let len = state.pos + tokens.len();
        let (last, rest) = tokens.split_last().expect("at least one token");
        for &t in rest {
            self.step_in(state, t, len);
        }
        self.step_in(state, *last, len)
    }

    /// One token, with RoPE frequencies for a sequence of `len` positions.
    fn step_in<'s>(&self, state: &'s mut DecodeState, token: u32, len: usize) -> &'s [f32] {
        let c = &self.config;
        let (d, hd) = (c.d_model, c.head_dim());
        let (n_heads, n_kv) = (c.n_heads, c.n_kv_heads);
        let pos = state.pos;
        assert!(pos < c.max_seq_len, "the KV cache is full");
        let token = token as usize;
        state
            .x
            .copy_from_slice(&self.tok_embeddings[token * d..(token + 1) * d]);
        if let Some(table) = &self.pos_embeddings {
            for (x, p) in state.x.iter_mut().zip(&table[pos * d..(pos + 1) * d]) {
                *x += p;
            }
        }
        if let Some(rope) = &self.rope {
            // Only dynamic NTK's frequencies change with the length.
            let dynamic = match rope.scaling {
                Some(RopeScaling::DynamicNtk { .. }) => Some(rope.inv_freq(len)),
                _ => None,
            };
            let (inv_freq, mscale) = dynamic.as_ref().unwrap_or(&self.inv_freq);
            ember_ops::rope::table_row_into(
                rope.layout,
                inv_freq,
                *mscale,
                pos,
                &mut state.cos,
                &mut state.sin,
            );
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let group = n_heads / n_kv;
        let first = match c.sliding_window {
            Some(w) if pos + 1 > w => pos + 1 - w,
            _ => 0,
        };
        let kv_width = n_kv * hd;
        for (l, layer) in self.layers.iter().enumerate() {
            layer.attn_norm.apply(&state.x, &mut state.xb);
            layer.q.forward(&state.xb, &mut state.q);
            layer.k.forward(&state.xb, &mut state.k);
            layer.v.forward(&state.xb, &mut state.v);
            if let Some(rope) = &self.rope {
                for head in state
                    .q
                    .chunks_exact_mut(hd)
                    .chain(state.k.chunks_exact_mut(hd))
                {
                    rotate(rope, head, &state.cos, &state.sin, &mut state.rotated);
                }
            }
            let (keys, values) = (&mut state.keys[l], &mut state.values[l]);
            keys[pos * kv_width..(pos + 1) * kv_width].copy_from_slice(&state.k);
            values[pos * kv_width..(pos + 1) * kv_width].copy_from_slice(&state.v);
            for h in 0..n_heads {
                let kvh = h / group;
                let q = &state.q[h * hd..(h + 1) * hd];
                let scores = &mut state.scores[first..=pos];
                let mut max = f32::NEG_INFINITY;
                for (t, s) in (first..=pos).zip(scores.iter_mut()) {
                    let k = &keys[t * kv_width + kvh * hd..t * kv_width + (kvh + 1) * hd];
                    *s = kernels::dot(q, k) * scale;
                    max = max.max(*s);
                }
                let mut total = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    total += *s;
                }
                let out = &mut state.attn[h * hd..(h + 1) * hd];
                out.fill(0.0);
                for (t, s) in (first..=pos).zip(scores.iter()) {
                    let v = &values[t * kv_width + kvh * hd..t * kv_width + (kvh + 1) * hd];
                    kernels::axpy(out, s / total, v);
                }
            }
            layer.o.forward(&state.attn, &mut state.xb);
            for (x, o) in state.x.iter_mut().zip(&state.xb) {
                *x += o;
            }
            layer.mlp_norm.apply(&state.x, &mut state.xb);
            layer.up.forward(&state.xb, &mut state.hidden);
            match &layer.gate {
                Some(gate) => {
                    gate.forward(&state.xb, &mut state.hidden2);
                    let gelu = c.mlp == MlpKind::GeGlu;
                    for (h, g) in state.hidden.iter_mut().zip(&state.hidden2) {
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
                    for h in state.hidden.iter_mut() {
                        *h = if tanh {
                            gelu_tanh(*h)
                        } else {
                            ember_ops::fused::math::gelu(*h)
                        };
                    }
                }
            }
            layer.down.forward(&state.hidden, &mut state.xb);
            for (x, o) in state.x.iter_mut().zip(&state.xb) {
                *x += o;
            }
        }
        self.final_norm.apply(&state.x, &mut state.xb);
        self.lm_head.matvec(&state.xb, &mut state.logits);
        state.pos += 1;
        &state.logits
    }
}

/// `0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`.
fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

/// RoPE on one head's first `rotary_dim` features: `x cos + rotate(x) sin`.
fn rotate(rope: &RopeConfig, head: &mut [f32], cos: &[f32], sin: &[f32], rotated: &mut [f32]) {
    let r = rope.rotary_dim;
    let x = &head[..r];
    match rope.layout {
        RopeLayout::RotateHalf => {
            let half = r / 2;
            for i in 0..half {
                rotated[i] = -x[i + half];
                rotated[i + half] = x[i];
            }
        }
        RopeLayout::Interleaved => {
            for j in 0..r / 2 {
                rotated[2 * j] = -x[2 * j + 1];
                rotated[2 * j + 1] = x[2 * j];
            }
        }
    }
    for i in 0..r {
        head[i] = head[i] * cos[i] + rotated[i] * sin[i];
    }
}
