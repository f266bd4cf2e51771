//! Autoregressive generation with or without the KV cache.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_nn::FusedBackend;
use ember_nn::{ContiguousKvCache, ForwardOptions, KvCache, Transformer};

use crate::host::{HostDecoder, HostWeights};
use crate::sampling::Sampler;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty: give at least one token")]
    EmptyPrompt,
    #[error("token id {id} is outside the model's vocabulary of {vocab_size}")]
    TokenOutOfRange { id: u32, vocab_size: usize },
}

/// Generates tokens from a model.
///
/// Beyond the context window (`max_seq_len`), the uncached path looks at the last
/// `max_seq_len` tokens (nanoGPT's crop); the cached path shifts its context: it keeps
/// the most recent half of the window and re-encodes it, so both are exact within the
/// window and the cached one stays linear-time past it.
pub struct Generator<'a, B: Backend> {
    model: &'a Transformer<B>,
    device: B::Device,
    use_cache: bool,
    /// Generation ends after any of these (end-of-sequence ids).
    stop_tokens: Vec<u32>,
    /// Decodes on the host instead of through burn (cached generation only).
    host: Option<HostDecoder>,
}

impl<'a, B: FusedBackend> Generator<'a, B> {
    pub fn new(model: &'a Transformer<B>, device: &B::Device, use_cache: bool) -> Self {
        Self {
            model,
            device: device.clone(),
            use_cache,
            stop_tokens: Vec::new(),
            host: None,
        }
    }

    /// Decodes with a [`HostDecoder`] (weights copied to the host as `weights`) instead
    /// of burn's graph: the fast path on CPU backends. `Err` names the model option the
    /// host decoder lacks; the generator is then unchanged.
    pub fn with_host_decoder(mut self, weights: HostWeights) -> Result<Self, String> {
        self.host = Some(HostDecoder::new(self.model, weights)?);
        Ok(self)
    }

    /// Whether tokens come from the host decoder.
    pub fn uses_host_decoder(&self) -> bool {
        self.host.is_some() && self.use_cache
    }

    /// Ends generation after any of `ids` (which is still returned), as `transformers`
    /// does with `eos_token_id`.
    pub fn with_stop_tokens(mut self, ids: &[u32]) -> Self {
        self.stop_tokens = ids.to_vec();
        self
    }

    /// Generates up to `max_new_tokens` after `prompt` (fewer when a stop token comes),
    /// calling `on_token` with each new token as soon as it is chosen. Returns the new
    /// tokens.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        sampler: &mut Sampler,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>, GenerateError> {
        let config = self.model.config();
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= config.vocab_size) {
            return Err(GenerateError::TokenOutOfRange {
                id,
                vocab_size: config.vocab_size,
            });
        }
        let window = config.max_seq_len;
        if let (Some(host), true) = (&self.host, self.use_cache) {
            return Ok(self.generate_on_host(host, prompt, max_new_tokens, sampler, on_token));
        }
        let mut tokens = prompt.to_vec();
        // Reserve no more than a window up front: `max_new_tokens` is a user's number.
        let mut new_tokens = Vec::with_capacity(max_new_tokens.min(window));
        let mut cache = ContiguousKvCache::<B>::new(config.n_layers);
        for _ in 0..max_new_tokens {
            let logits = if self.use_cache {
                let pending = pending(&tokens, cache.is_empty(), window);
                let logits = self.logits_last(pending, Some(&mut cache));
                if cache.len() >= window {
                    cache.clear();
                }
                logits
            } else {
                let from = tokens.len().saturating_sub(window);
                self.logits_last(&tokens[from..], None)
            };
            let next = sampler.sample(&logits);
            tokens.push(next);
            new_tokens.push(next);
            on_token(next);
            if self.stop_tokens.contains(&next) {
                break;
            }
        }
        Ok(new_tokens)
    }

    /// [`Self::generate`] through the host decoder, with the same context shifting.
    fn generate_on_host(
        &self,
        host: &HostDecoder,
        prompt: &[u32],
        max_new_tokens: usize,
        sampler: &mut Sampler,
        mut on_token: impl FnMut(u32),
    ) -> Vec<u32> {
        let window = host.config().max_seq_len;
        let mut state = host.new_state();
        let mut tokens = prompt.to_vec();
        // Reserve no more than a window up front: `max_new_tokens` is a user's number.
        let mut new_tokens = Vec::with_capacity(max_new_tokens.min(window));
        for _ in 0..max_new_tokens {
            if state.len() >= window {
                state.clear();
            }
            let pending = pending(&tokens, state.is_empty(), window);
            let next = if pending.len() > 1 {
                // Prompts run as one batched pass through burn (matrix-matrix products),
                // whose keys and values then seed the host cache.
                let mut cache = ContiguousKvCache::<B>::new(self.model.config().n_layers);
                let logits = self.logits_last(pending, Some(&mut cache));
                let layers: Vec<(Vec<f32>, Vec<f32>)> = (0..self.model.config().n_layers)
                    .map(|l| {
                        let (k, v) = cache.layer(l).expect("every layer was cached");
                        let host = |t: &Tensor<B, 4>| {
                            t.clone()
                                .into_data()
                                .convert::<f32>()
                                .to_vec::<f32>()
                                .expect("f32 cache")
                        };
                        (host(k), host(v))
                    })
                    .collect();
                state.load(&layers, pending.len(), self.model.config().n_kv_heads);
                sampler.sample(&logits)
            } else {
                sampler.sample(host.step(&mut state, pending[0]))
            };
            tokens.push(next);
            new_tokens.push(next);
            on_token(next);
            if self.stop_tokens.contains(&next) {
                break;
            }
        }
        new_tokens
    }

    /// Logits `[vocab]` at the last of `tokens`, which continue the cache when one is given.
    fn logits_last(&self, tokens: &[u32], cache: Option<&mut ContiguousKvCache<B>>) -> Vec<f32> {
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let seq = tokens.len();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, seq]), &self.device);
        let start = cache.as_ref().map_or(0, |c| c.len());
        let options = ForwardOptions {
            cache: cache.map(|c| c as &mut dyn KvCache<B>),
            ..Default::default()
        };
        let x = self.model.embed(input, start);
        let hidden = self.model.hidden(x, options);
        let d_model = hidden.dims()[2];
        let last = hidden.slice([0..1, seq - 1..seq, 0..d_model]);
        self.model
            .logits(last)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 logits")
    }
}

/// The tokens a cached step feeds the model: with an empty cache, the most recent context
/// that fits (the whole sequence, or the last half window once it has outgrown the
/// window); otherwise the newest token.
fn pending(tokens: &[u32], cache_empty: bool, window: usize) -> &[u32] {
    let keep = match (cache_empty, tokens.len() > window) {
        (false, _) => 1,
        (true, true) => window / 2,
        (true, false) => tokens.len(),
    };
    &tokens[tokens.len() - keep..]
}
