//! [`Decoder`]: the one decoding interface of every model form — burn's graph
//! ([`BurnDecoder`]), burn without a cache ([`UncachedDecoder`]) and the host kernels
//! ([`crate::HostDecoder`], [`crate::host::BurnPrefilledHost`]). The generator, and later a
//! batching scheduler, speculative decoding or beam search, drive any of them the same way.

use burn::tensor::{Int, Tensor, TensorData};
use ember_nn::{
    ContiguousKvCache, ForwardOptions, FusedBackend, KvCache, Transformer, TransformerConfig,
};

/// A model that decodes a batch of sequences (rows): prefill them, then step every row by
/// one token at a time, reading each row's next-token logits in between.
pub trait Decoder {
    /// Everything kept per row between calls: the KV cache and the last logits.
    type Cache;

    fn config(&self) -> &TransformerConfig;

    /// A cache holding no rows.
    fn new_cache(&self) -> Self::Cache;

    /// Rows in `cache`.
    fn rows(&self, cache: &Self::Cache) -> usize;

    /// Positions `row` has cached.
    fn len(&self, cache: &Self::Cache, row: usize) -> usize;

    /// Positions a row can hold; `None` when the decoder crops its own context.
    fn capacity(&self) -> Option<usize>;

    /// Appends `prompts[r]` (at least one token each, all of one length) to row `r`,
    /// starting the rows when the cache is empty.
    fn prefill(&self, cache: &mut Self::Cache, prompts: &[&[u32]]);

    /// Appends `tokens[r]` to row `r`, every row at once (one token per row).
    fn step(&self, cache: &mut Self::Cache, tokens: &[u32]);

    /// `row`'s next-token logits `[vocab]` after the last prefill or step.
    fn logits<'c>(&self, cache: &'c Self::Cache, row: usize) -> &'c [f32];

    /// Drops every row.
    fn reset(&self, cache: &mut Self::Cache);
}

/// burn's forward pass with a [`ContiguousKvCache`].
pub struct BurnDecoder<'a, B: FusedBackend> {
    pub model: &'a Transformer<B>,
    pub device: B::Device,
}

/// A [`BurnDecoder`]'s cache: keys and values, and the last logits `[rows, vocab]`.
pub struct BurnCache<B: FusedBackend> {
    pub kv: ContiguousKvCache<B>,
    pub(crate) logits: Vec<f32>,
}

impl<'a, B: FusedBackend> BurnDecoder<'a, B> {
    pub fn new(model: &'a Transformer<B>, device: &B::Device) -> Self {
        Self {
            model,
            device: device.clone(),
        }
    }

    /// Logits `[rows, vocab]` at the last of each row of `tokens` (`[rows, seq]`,
    /// flattened), which continue `cache` when one is given.
    pub fn last_logits(
        &self,
        tokens: &[u32],
        rows: usize,
        cache: Option<&mut ContiguousKvCache<B>>,
    ) -> Vec<f32> {
        let seq = tokens.len() / rows;
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, seq]), &self.device);
        let cache = cache.map(|c| c as &mut dyn KvCache<B>);
        let positions = Transformer::positions(cache.as_deref());
        let options = ForwardOptions {
            cache,
            ..Default::default()
        };
        let x = self.model.embed_at(input, &positions);
        let hidden = self.model.hidden(x, options);
        let d_model = hidden.dims()[2];
        // Only the last position's logits are needed: project that one alone.
        let last = hidden.slice([0..rows, seq - 1..seq, 0..d_model]);
        self.model
            .logits(last)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 logits")
    }
}

impl<B: FusedBackend> Decoder for BurnDecoder<'_, B> {
    type Cache = BurnCache<B>;

    fn config(&self) -> &TransformerConfig {
        self.model.config()
    }

    fn new_cache(&self) -> BurnCache<B> {
        BurnCache {
            kv: ContiguousKvCache::new(self.config().n_layers),
            logits: Vec::new(),
        }
    }

    fn rows(&self, cache: &BurnCache<B>) -> usize {
        cache.kv.lengths().len()
    }

    fn len(&self, cache: &BurnCache<B>, row: usize) -> usize {
        cache.kv.lengths()[row]
    }

    fn capacity(&self) -> Option<usize> {
        Some(self.config().max_seq_len)
    }

    fn prefill(&self, cache: &mut BurnCache<B>, prompts: &[&[u32]]) {
        let flat = equal_rows(prompts);
        if self.rows(cache) > 0 {
            check_rows(self.rows(cache), prompts.len());
        }
        cache.logits = self.last_logits(&flat, prompts.len(), Some(&mut cache.kv));
    }

    fn step(&self, cache: &mut BurnCache<B>, tokens: &[u32]) {
        check_step(self.rows(cache), tokens);
        cache.logits = self.last_logits(tokens, tokens.len(), Some(&mut cache.kv));
    }

    fn logits<'c>(&self, cache: &'c BurnCache<B>, row: usize) -> &'c [f32] {
        let vocab = self.config().vocab_size;
        &cache.logits[row * vocab..(row + 1) * vocab]
    }

    fn reset(&self, cache: &mut BurnCache<B>) {
        cache.kv.clear();
        cache.logits.clear();
    }
}

/// burn's forward pass over each row's whole history (its last `max_seq_len` tokens:
/// nanoGPT's crop), no cache.
pub struct UncachedDecoder<'a, B: FusedBackend>(pub BurnDecoder<'a, B>);

/// An [`UncachedDecoder`]'s cache: each row's tokens, and the last logits.
pub struct History {
    rows: Vec<Vec<u32>>,
    logits: Vec<f32>,
}

impl<B: FusedBackend> UncachedDecoder<'_, B> {
    fn run(&self, cache: &mut History) {
        let window = self.config().max_seq_len;
        let mut logits = Vec::new();
        for row in &cache.rows {
            let from = row.len().saturating_sub(window);
            logits.extend(self.0.last_logits(&row[from..], 1, None));
        }
        cache.logits = logits;
    }
}

impl<B: FusedBackend> Decoder for UncachedDecoder<'_, B> {
    type Cache = History;

    fn config(&self) -> &TransformerConfig {
        self.0.config()
    }

    fn new_cache(&self) -> History {
        History {
            rows: Vec::new(),
            logits: Vec::new(),
        }
    }

    fn rows(&self, cache: &History) -> usize {
        cache.rows.len()
    }

    fn len(&self, cache: &History, row: usize) -> usize {
        cache.rows[row].len()
    }

    fn capacity(&self) -> Option<usize> {
        None
    }

    fn prefill(&self, cache: &mut History, prompts: &[&[u32]]) {
        equal_rows(prompts);
        if cache.rows.is_empty() {
            cache.rows = vec![Vec::new(); prompts.len()];
        }
        check_rows(cache.rows.len(), prompts.len());
        for (row, prompt) in cache.rows.iter_mut().zip(prompts) {
            row.extend_from_slice(prompt);
        }
        self.run(cache);
    }

    fn step(&self, cache: &mut History, tokens: &[u32]) {
        check_step(cache.rows.len(), tokens);
        for (row, &token) in cache.rows.iter_mut().zip(tokens) {
            row.push(token);
        }
        self.run(cache);
    }

    fn logits<'c>(&self, cache: &'c History, row: usize) -> &'c [f32] {
        let vocab = self.config().vocab_size;
        &cache.logits[row * vocab..(row + 1) * vocab]
    }

    fn reset(&self, cache: &mut History) {
        cache.rows.clear();
        cache.logits.clear();
    }
}

/// Panics unless there is one token per row: a caller's bug, not a user's input.
pub(crate) fn check_step(rows: usize, tokens: &[u32]) {
    assert!(
        rows > 0 && tokens.len() == rows,
        "Decoder::step: {} tokens for {rows} rows",
        tokens.len()
    );
}

/// Panics unless `given` prompts continue `rows` rows.
pub(crate) fn check_rows(rows: usize, given: usize) {
    assert_eq!(
        rows, given,
        "Decoder::prefill: {given} prompts for {rows} rows"
    );
}

/// The rows of `prompts` in one flat vector; panics unless they have one length.
pub(crate) fn equal_rows(prompts: &[&[u32]]) -> Vec<u32> {
    let seq = prompts.first().map_or(0, |p| p.len());
    assert!(
        seq > 0 && prompts.iter().all(|p| p.len() == seq),
        "Decoder::prefill: rows must be non-empty and of one length"
    );
    prompts.concat()
}
