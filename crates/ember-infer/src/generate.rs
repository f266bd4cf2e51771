//! Autoregressive generation with or without the KV cache.

use burn::tensor::backend::Backend;
use ember_nn::FusedBackend;
use ember_nn::Transformer;

use crate::decoder::{BurnDecoder, Decoder, UncachedDecoder};
use crate::host::{BurnPrefilledHost, HostDecoder, HostWeights};
use crate::prompted::{PromptedDecoder, VirtualTokens};
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
    /// Prefix- or prompt-tuning tokens before every sequence (burn, cached).
    virtual_tokens: Option<&'a VirtualTokens<B>>,
}

impl<'a, B: FusedBackend> Generator<'a, B> {
    pub fn new(model: &'a Transformer<B>, device: &B::Device, use_cache: bool) -> Self {
        Self {
            model,
            device: device.clone(),
            use_cache,
            stop_tokens: Vec::new(),
            host: None,
            virtual_tokens: None,
        }
    }

    /// Puts `tokens` (a prefix- or prompt-tuning adapter's) before the sequence, as
    /// `peft`'s `generate` does; decoding then runs through burn with the KV cache,
    /// whatever else was chosen.
    pub fn with_virtual_tokens(mut self, tokens: &'a VirtualTokens<B>) -> Self {
        self.virtual_tokens = Some(tokens);
        self
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
        self.host.is_some() && self.use_cache && self.virtual_tokens.is_none()
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
        on_token: impl FnMut(u32),
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
        let burn = BurnDecoder::new(self.model, &self.device);
        if let Some(tokens) = self.virtual_tokens {
            let decoder = PromptedDecoder { burn, tokens };
            return Ok(self.run(&decoder, prompt, max_new_tokens, sampler, on_token));
        }
        let new_tokens = match (&self.host, self.use_cache) {
            (_, false) => self.run(
                &UncachedDecoder(burn),
                prompt,
                max_new_tokens,
                sampler,
                on_token,
            ),
            (Some(host), true) => {
                let decoder = BurnPrefilledHost { burn, host };
                self.run(&decoder, prompt, max_new_tokens, sampler, on_token)
            }
            (None, true) => self.run(&burn, prompt, max_new_tokens, sampler, on_token),
        };
        Ok(new_tokens)
    }

    fn run<D: Decoder>(
        &self,
        decoder: &D,
        prompt: &[u32],
        max_new_tokens: usize,
        sampler: &mut Sampler,
        on_token: impl FnMut(u32),
    ) -> Vec<u32> {
        decode_loop(
            decoder,
            prompt,
            max_new_tokens,
            sampler,
            &self.stop_tokens,
            on_token,
        )
    }
}

/// The decode loop, for any [`Decoder`]: prefill the context, then one token per step,
/// until `max_new_tokens` or a token of `stop`. A decoder whose cache fills up is reset
/// and prefilled again with the most recent half window. The prompt must be non-empty
/// and inside the vocabulary (checked by [`Generator::generate`]).
pub fn decode_loop<D: Decoder>(
    decoder: &D,
    prompt: &[u32],
    max_new_tokens: usize,
    sampler: &mut Sampler,
    stop: &[u32],
    mut on_token: impl FnMut(u32),
) -> Vec<u32> {
    let window = decoder.config().max_seq_len;
    let mut cache = decoder.new_cache();
    let mut tokens = prompt.to_vec();
    // Reserve no more than a window up front: `max_new_tokens` is a user's number.
    let mut new_tokens = Vec::with_capacity(max_new_tokens.min(window));
    for _ in 0..max_new_tokens {
        if decoder.rows(&cache) > 0
            && decoder
                .capacity()
                .is_some_and(|cap| decoder.len(&cache, 0) >= cap)
        {
            decoder.reset(&mut cache);
        }
        if decoder.rows(&cache) == 0 {
            // A decoder without a capacity crops its own context (the last window).
            let context = match decoder.capacity() {
                Some(_) => context(&tokens, window),
                None => &tokens,
            };
            decoder.prefill(&mut cache, &[context]);
        } else {
            decoder.step(&mut cache, &[*tokens.last().expect("a prompt")]);
        }
        let next = sampler.sample(decoder.logits(&cache, 0));
        tokens.push(next);
        new_tokens.push(next);
        on_token(next);
        if stop.contains(&next) {
            break;
        }
    }
    new_tokens
}

/// What a prefill with an empty cache feeds the model: the whole sequence, or the last
/// half window once it has outgrown the window.
fn context(tokens: &[u32], window: usize) -> &[u32] {
    let keep = if tokens.len() > window {
        (window / 2).max(1)
    } else {
        tokens.len()
    };
    &tokens[tokens.len() - keep..]
}
