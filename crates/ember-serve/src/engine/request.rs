//! What a client asks the engine for, and the events it gets back.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

use ember_infer::{Penalties, SamplingConfig};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// How to generate: sampling, penalties, limits and stops. Validated by the server.
#[derive(Debug, Clone)]
pub struct GenerationParams {
    /// Temperature, top-k, top-p, min-p and the seed of choice 0 (choice `i` uses
    /// `seed + i`).
    pub sampling: SamplingConfig,
    pub penalties: Penalties,
    /// Added to the logits of these tokens before sampling (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    /// New tokens at most, the stop token included.
    pub max_tokens: usize,
    /// Generation ends before the first occurrence of any of these; it is not returned.
    pub stop: Vec<String>,
    /// Generation ends after any of these tokens (the model's end-of-sequence tokens
    /// unless `ignore_eos`); their text is not returned.
    pub stop_token_ids: Vec<u32>,
    /// Continuations of the prompt, each with its own seed.
    pub n: usize,
    /// Report each chosen token's log-probability and this many most likely tokens.
    pub logprobs: Option<usize>,
}

/// A prompt and how to continue it.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
}

/// Why a continuation ended (OpenAI's `finish_reason`; `Abort` when the server shut down
/// before it finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    Abort,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

/// A chosen token's log-probability under the model, and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What the engine sends about one request, in order per choice.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Choice `choice` generated `token`; `text` is the text that became final with it
    /// (often empty while a character or a possible stop string is incomplete).
    Token {
        choice: usize,
        token: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// Choice `choice` ended; `text` is the last of its text.
    Finished {
        choice: usize,
        reason: FinishReason,
        text: String,
        completion_tokens: usize,
    },
}

/// A request the engine accepted: its events arrive on `events` until every choice has
/// finished. Dropping `events` cancels the request (its blocks are freed at the next step).
pub struct Submitted {
    /// The first request's engine id.
    pub id: u64,
    /// Prompt tokens of every request submitted together.
    pub prompt_tokens: usize,
    /// Choices over every request submitted together.
    pub choices: usize,
    pub events: UnboundedReceiver<Event>,
}

/// What the choices of one request share inside the engine.
pub(crate) struct RequestState {
    pub id: u64,
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
    /// The request's choices are numbered from here in the events (several prompts of
    /// one HTTP request share one channel).
    pub choice_base: usize,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
    /// Choice 0 has computed the whole prompt: the other choices may start, sharing its
    /// blocks.
    pub prompt_done: AtomicBool,
    /// Choices not finished yet.
    pub remaining: AtomicUsize,
}
