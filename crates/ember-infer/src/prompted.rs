//! Decoding after virtual tokens: prefix tuning's per-layer keys and values, or prompt
//! tuning's soft prompt, in front of every row (what `peft`'s `generate` does).
//!
//! - Prefix: each forward pass gets the prefixes (`ForwardOptions::prefixes`) and the real
//!   tokens sit at positions `n_virtual…` (`position_offset`), as `transformers` counts
//!   them; the cache holds the real tokens only.
//! - Soft prompt: a new row first runs the prompt's embeddings (positions `0..n`) through
//!   the model into the cache; the tokens then continue from position `n`.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_nn::{
    ContiguousKvCache, ForwardOptions, FusedBackend, KvCache, KvPrefix, Positions, Transformer,
    TransformerConfig,
};

use crate::decoder::{BurnCache, BurnDecoder, Decoder};

/// The virtual tokens in front of every row.
pub enum VirtualTokens<B: Backend> {
    /// Per layer, keys and values `[1, n_kv_heads, n_virtual, head_dim]`.
    Prefix(Vec<KvPrefix<B>>),
    /// Soft-prompt embeddings `[n_virtual, d_model]`.
    Prompt(Tensor<B, 2>),
}

impl<B: Backend> VirtualTokens<B> {
    /// How many there are.
    pub fn len(&self) -> usize {
        match self {
            VirtualTokens::Prefix(layers) => layers.first().map_or(0, |p| p.key.dims()[2]),
            VirtualTokens::Prompt(embeddings) => embeddings.dims()[0],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// burn's cached forward pass behind [`VirtualTokens`].
pub struct PromptedDecoder<'a, B: FusedBackend> {
    pub burn: BurnDecoder<'a, B>,
    pub tokens: &'a VirtualTokens<B>,
}

impl<B: FusedBackend> PromptedDecoder<'_, B> {
    /// The prefixes for `rows` rows, when prefix tuning.
    fn prefixes(&self, rows: usize) -> Option<Vec<KvPrefix<B>>> {
        let VirtualTokens::Prefix(layers) = self.tokens else {
            return None;
        };
        Some(
            layers
                .iter()
                .map(|p| {
                    let [_, kv, n, hd] = p.key.dims();
                    KvPrefix {
                        key: p.key.clone().expand([rows, kv, n, hd]),
                        value: p.value.clone().expand([rows, kv, n, hd]),
                    }
                })
                .collect(),
        )
    }

    /// Logits `[rows, vocab]` at the last position of `tokens` (`[rows, seq]`, flat),
    /// continuing `cache` (a soft prompt goes in first when the cache is empty).
    fn forward_last(
        &self,
        tokens: &[u32],
        rows: usize,
        cache: &mut ContiguousKvCache<B>,
    ) -> Vec<f32> {
        let model: &Transformer<B> = self.burn.model;
        let device = &self.burn.device;
        if let VirtualTokens::Prompt(embeddings) = self.tokens
            && cache.lengths().is_empty()
        {
            let [n, d] = embeddings.dims();
            let x = embeddings.clone().unsqueeze::<3>().expand([rows, n, d]);
            let x = model.add_positions(x, &Positions::Uniform(0));
            let _ = model.hidden(
                x,
                ForwardOptions {
                    cache: Some(cache as &mut dyn KvCache<B>),
                    ..Default::default()
                },
            );
        }
        let seq = tokens.len() / rows;
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, seq]), device);
        let prefixes = self.prefixes(rows);
        let offset = if prefixes.is_some() {
            self.tokens.len()
        } else {
            0
        };
        let positions = Transformer::positions(Some(&*cache as &dyn KvCache<B>)).shifted(offset);
        let x = model.embed_at(input, &positions);
        let hidden = model.hidden(
            x,
            ForwardOptions {
                cache: Some(cache as &mut dyn KvCache<B>),
                prefixes: prefixes.as_deref(),
                position_offset: offset,
                ..Default::default()
            },
        );
        let d_model = hidden.dims()[2];
        let last = hidden.slice([0..rows, seq - 1..seq, 0..d_model]);
        model
            .logits(last)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 logits")
    }
}

impl<B: FusedBackend> Decoder for PromptedDecoder<'_, B> {
    type Cache = BurnCache<B>;

    fn config(&self) -> &TransformerConfig {
        self.burn.config()
    }

    fn new_cache(&self) -> BurnCache<B> {
        self.burn.new_cache()
    }

    fn rows(&self, cache: &BurnCache<B>) -> usize {
        self.burn.rows(cache)
    }

    fn len(&self, cache: &BurnCache<B>, row: usize) -> usize {
        self.burn.len(cache, row)
    }

    /// The context less the prefixes (which hold positions the cache does not).
    fn capacity(&self) -> Option<usize> {
        let max = self.config().max_seq_len;
        Some(match self.tokens {
            VirtualTokens::Prefix(_) => max.saturating_sub(self.tokens.len()),
            VirtualTokens::Prompt(_) => max,
        })
    }

    fn prefill(&self, cache: &mut BurnCache<B>, prompts: &[&[u32]]) {
        let flat: Vec<u32> = prompts.iter().flat_map(|p| p.iter().copied()).collect();
        cache.logits = self.forward_last(&flat, prompts.len(), &mut cache.kv);
    }

    fn step(&self, cache: &mut BurnCache<B>, tokens: &[u32]) {
        cache.logits = self.forward_last(tokens, tokens.len(), &mut cache.kv);
    }

    fn logits<'c>(&self, cache: &'c BurnCache<B>, row: usize) -> &'c [f32] {
        self.burn.logits(cache, row)
    }

    fn reset(&self, cache: &mut BurnCache<B>) {
        self.burn.reset(cache)
    }
}
