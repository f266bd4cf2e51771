//! The host decoder behind the [`Decoder`] interface: one [`DecodeState`] per row,
//! stepped with the batch-1 kernels; and [`BurnPrefilledHost`], which runs prompts as
//! one batched burn pass (matrix-matrix products) and seeds the host caches from it.

use burn::tensor::Tensor;
use ember_nn::{FusedBackend, TransformerConfig};

use super::{DecodeState, HostDecoder};
use crate::decoder::{BurnDecoder, Decoder, check_rows, check_step, equal_rows};

impl Decoder for HostDecoder {
    type Cache = Vec<DecodeState>;

    fn config(&self) -> &TransformerConfig {
        HostDecoder::config(self)
    }

    fn new_cache(&self) -> Vec<DecodeState> {
        Vec::new()
    }

    fn rows(&self, cache: &Vec<DecodeState>) -> usize {
        cache.len()
    }

    fn len(&self, cache: &Vec<DecodeState>, row: usize) -> usize {
        cache[row].len()
    }

    fn capacity(&self) -> Option<usize> {
        Some(self.config().max_seq_len)
    }

    fn prefill(&self, cache: &mut Vec<DecodeState>, prompts: &[&[u32]]) {
        equal_rows(prompts);
        if cache.is_empty() {
            cache.extend(prompts.iter().map(|_| self.new_state()));
        }
        check_rows(cache.len(), prompts.len());
        for (state, prompt) in cache.iter_mut().zip(prompts) {
            HostDecoder::prefill(self, state, prompt);
        }
    }

    fn step(&self, cache: &mut Vec<DecodeState>, tokens: &[u32]) {
        check_step(cache.len(), tokens);
        for (state, &token) in cache.iter_mut().zip(tokens) {
            HostDecoder::step(self, state, token);
        }
    }

    fn logits<'c>(&self, cache: &'c Vec<DecodeState>, row: usize) -> &'c [f32] {
        cache[row].logits()
    }

    fn reset(&self, cache: &mut Vec<DecodeState>) {
        cache.clear();
    }
}

/// Prompts through burn, one batched pass whose keys and values then seed the host
/// caches; every later token on the host. The fast path on CPU backends.
pub struct BurnPrefilledHost<'a, B: FusedBackend> {
    pub burn: BurnDecoder<'a, B>,
    pub host: &'a HostDecoder,
}

impl<B: FusedBackend> Decoder for BurnPrefilledHost<'_, B> {
    type Cache = Vec<DecodeState>;

    fn config(&self) -> &TransformerConfig {
        self.host.config()
    }

    // The cache is the host decoder's: these delegate to it.
    fn new_cache(&self) -> Vec<DecodeState> {
        self.host.new_cache()
    }

    fn rows(&self, cache: &Vec<DecodeState>) -> usize {
        Decoder::rows(self.host, cache)
    }

    fn len(&self, cache: &Vec<DecodeState>, row: usize) -> usize {
        Decoder::len(self.host, cache, row)
    }

    fn capacity(&self) -> Option<usize> {
        self.host.capacity()
    }

    /// Prompts of a single token, or continuing rows, go through the host; the rest
    /// through burn.
    fn prefill(&self, cache: &mut Vec<DecodeState>, prompts: &[&[u32]]) {
        let flat = equal_rows(prompts);
        let seq = prompts[0].len();
        if seq == 1 || !cache.is_empty() {
            return Decoder::prefill(self.host, cache, prompts);
        }
        let config = self.config();
        let rows = prompts.len();
        let mut kv = ember_nn::ContiguousKvCache::<B>::new(config.n_layers);
        let logits = self.burn.last_logits(&flat, rows, Some(&mut kv));
        let host = |t: &Tensor<B, 4>| {
            t.clone()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 cache")
        };
        let mut per_layer: Vec<(Vec<f32>, Vec<f32>)> = (0..config.n_layers)
            .map(|l| {
                let (k, v) = kv.layer(l).expect("every layer was cached");
                (host(k), host(v))
            })
            .collect();
        let row_width = config.n_kv_heads * seq * config.head_dim();
        let vocab = config.vocab_size;
        for r in 0..rows {
            let mut state = self.host.new_state();
            let layers: Vec<(Vec<f32>, Vec<f32>)> = if rows == 1 {
                std::mem::take(&mut per_layer)
            } else {
                per_layer
                    .iter()
                    .map(|(k, v)| {
                        let row = r * row_width..(r + 1) * row_width;
                        (k[row.clone()].to_vec(), v[row].to_vec())
                    })
                    .collect()
            };
            state.load(&layers, seq, config.n_kv_heads);
            state.set_logits(&logits[r * vocab..(r + 1) * vocab]);
            cache.push(state);
        }
    }

    fn step(&self, cache: &mut Vec<DecodeState>, tokens: &[u32]) {
        Decoder::step(self.host, cache, tokens);
    }

    fn logits<'c>(&self, cache: &'c Vec<DecodeState>, row: usize) -> &'c [f32] {
        Decoder::logits(self.host, cache, row)
    }

    fn reset(&self, cache: &mut Vec<DecodeState>) {
        Decoder::reset(self.host, cache);
    }
}
