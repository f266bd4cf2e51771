//! The serving engine in-process, for commands that generate many completions (`ember
//! eval`) or stream a conversation (`ember chat`): continuous batching over a paged KV
//! cache on the host decoder, as `ember serve` runs it, without the HTTP server.

use std::path::Path;
use std::sync::Arc;

use ember_infer::{PagedKv, Penalties, SamplingConfig};
use ember_model::ModelDir;
use ember_nn::FusedBackend;
use ember_serve::engine::{Event, GenerationParams, GenerationRequest};
use ember_serve::{Codec, EngineConfig, EngineHandle, Metrics, SchedulerConfig};

use crate::commands::On;
use crate::commands::serve::{WeightsArg, load_host_decoder};
use crate::error::CliError;

/// Sequences decoded together at most.
const MAX_BATCH: usize = 32;
/// KV-cache memory, MiB (grown to hold at least one full-length sequence).
const KV_CACHE_MB: f64 = 256.0;

/// A started engine and the model's text codec.
pub struct LocalEngine {
    pub engine: EngineHandle,
    pub codec: Arc<Codec>,
}

impl LocalEngine {
    /// Loads `model` (with `adapter` merged) on the host decoder and starts the engine.
    pub fn start<B: FusedBackend>(
        on: &On<B>,
        model: &Path,
        adapter: Option<&Path>,
        weights: Option<WeightsArg>,
        command: &str,
    ) -> Result<Self, CliError> {
        let dir = ModelDir::open(model)?;
        let config = dir.config().clone();
        let block_size = ember_infer::paged_kv::DEFAULT_BLOCK_SIZE;
        let needed = config.max_seq_len.div_ceil(block_size);
        let kv_blocks = PagedKv::blocks_in(&config, block_size, KV_CACHE_MB).max(needed);
        let decoder = load_host_decoder(on, &dir, adapter, weights, command)?;
        let codec =
            Arc::new(Codec::of(&dir).map_err(|e| CliError::Usage(format!("--model: {e}")))?);
        let engine = EngineHandle::start(
            Arc::new(decoder),
            EngineConfig {
                scheduler: SchedulerConfig {
                    max_num_seqs: MAX_BATCH,
                    max_batched_tokens: 512,
                },
                block_size,
                kv_blocks,
                max_queued_requests: 256,
            },
            codec.detokenize(),
            Arc::new(Metrics::new(command)),
        );
        Ok(Self { engine, codec })
    }

    /// Generation parameters: `sampling`, at most `max_tokens`, ending at `stop` strings
    /// or the model's end-of-sequence tokens.
    pub fn params(
        &self,
        sampling: SamplingConfig,
        max_tokens: usize,
        stop: &[String],
    ) -> GenerationParams {
        GenerationParams {
            sampling,
            penalties: Penalties::default(),
            logit_bias: Vec::new(),
            max_tokens,
            stop: stop.to_vec(),
            stop_token_ids: self.codec.stop_tokens().to_vec(),
            n: 1,
            logprobs: None,
        }
    }

    /// Completes every prompt (batched by the engine), calling `on_text(i, piece)` as
    /// prompt `i`'s text arrives; returns each completion's text. A prompt leaving no room
    /// for `params.max_tokens` gets as many as fit (none fit: an error naming it).
    pub fn complete(
        &self,
        prompts: &[Vec<u32>],
        params: &GenerationParams,
        mut on_text: impl FnMut(usize, &str),
    ) -> Result<Vec<String>, CliError> {
        let max_seq_len = self.codec.max_seq_len();
        let mut texts = vec![String::new(); prompts.len()];
        let chunk = self.engine.config().max_queued_requests.max(1);
        for (c, group) in prompts.chunks(chunk).enumerate() {
            let base = c * chunk;
            let mut requests = Vec::with_capacity(group.len());
            for (i, prompt) in group.iter().enumerate() {
                let room = max_seq_len.saturating_sub(prompt.len());
                if room == 0 {
                    return Err(CliError::Usage(format!(
                        "--data example {}: the prompt is {} tokens, leaving no room in the model's context of {max_seq_len}",
                        base + i + 1,
                        prompt.len()
                    )));
                }
                let mut params = params.clone();
                params.max_tokens = params.max_tokens.min(room);
                requests.push(GenerationRequest {
                    prompt: prompt.clone(),
                    params,
                });
            }
            let mut submitted = self
                .engine
                .submit_many(requests)
                .map_err(|e| CliError::Runtime(format!("generating: {e}")))?;
            let mut open = group.len();
            while open > 0 {
                let Some(event) = submitted.events.blocking_recv() else {
                    return Err(CliError::Runtime(
                        "generating: the engine stopped before every completion finished".into(),
                    ));
                };
                let (choice, text, finished) = match event {
                    Event::Token { choice, text, .. } => (choice, text, false),
                    Event::Finished { choice, text, .. } => (choice, text, true),
                };
                if !text.is_empty() {
                    on_text(base + choice, &text);
                    texts[base + choice].push_str(&text);
                }
                if finished {
                    open -= 1;
                }
            }
        }
        Ok(texts)
    }
}

impl Drop for LocalEngine {
    fn drop(&mut self) {
        self.engine.shutdown();
    }
}
