//! Checks every sampling field by name and turns a request into engine parameters.

use ember_infer::{Penalties, SamplingConfig};

use super::error::ApiError;
use super::protocol::Sampling;
use crate::codec::Codec;
use crate::engine::GenerationParams;

/// Limits the server puts on requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Choices per request at most (`n`).
    pub max_n: usize,
    /// Alternatives per token at most (`logprobs` / `top_logprobs`).
    pub max_logprobs: usize,
    /// Stop strings per request at most.
    pub max_stops: usize,
    /// Bytes per stop string at most.
    pub max_stop_bytes: usize,
    /// `logit_bias` entries (and `stop_token_ids`) at most (OpenAI's limit is 300).
    pub max_logit_bias: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_n: 16,
            max_logprobs: 20,
            max_stops: 16,
            max_stop_bytes: 256,
            max_logit_bias: 300,
        }
    }
}

fn in_range(
    name: &str,
    value: Option<f64>,
    lo: f64,
    hi: f64,
    default: f64,
) -> Result<f64, ApiError> {
    match value {
        None => Ok(default),
        Some(v) if v.is_finite() && v >= lo && v <= hi => Ok(v),
        Some(v) => Err(ApiError::invalid(
            name,
            format!("{name}: must be between {lo} and {hi}, got {v}"),
        )),
    }
}

/// A token id from a request, checked against the vocabulary.
pub fn token_id(name: &str, id: i64, vocab: usize) -> Result<u32, ApiError> {
    if id < 0 || id as u64 >= vocab as u64 {
        return Err(ApiError::invalid(
            name,
            format!(
                "{name}: token id {id} is outside the vocabulary (0 to {})",
                vocab - 1
            ),
        ));
    }
    Ok(id as u32)
}

/// The parameters of a request whose prompt is `prompt_len` tokens long; `max_tokens`
/// is the request's (`None`: up to the context length); `logprobs` the alternatives
/// asked for (`None`: no log-probabilities).
pub fn generation_params(
    s: &Sampling,
    max_tokens: Option<i64>,
    logprobs: Option<i64>,
    prompt_len: usize,
    codec: &Codec,
    limits: &RequestLimits,
) -> Result<GenerationParams, ApiError> {
    let context = codec.max_seq_len();
    let room = context.saturating_sub(prompt_len);
    if prompt_len == 0 {
        return Err(ApiError::invalid("prompt", "prompt: the prompt is empty"));
    }
    if room == 0 {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "This model's maximum context length is {context} tokens; the prompt has {prompt_len}, leaving no room for a completion"
            ),
        ));
    }
    let max_tokens = match max_tokens {
        None => room,
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens: must be at least 1, got {m}"),
            ));
        }
        Some(m) if m as u64 > room as u64 => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "This model's maximum context length is {context} tokens; you requested {} ({prompt_len} in the prompt, {m} for the completion)",
                    prompt_len as u64 + m as u64
                ),
            ));
        }
        Some(m) => m as usize,
    };
    let temperature = in_range("temperature", s.temperature, 0.0, 100.0, 1.0)?;
    let top_p = match s.top_p {
        None => 1.0,
        Some(p) if p > 0.0 && p <= 1.0 => p,
        Some(p) => {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p: must be in (0, 1], got {p}"),
            ));
        }
    };
    let top_k = match s.top_k {
        None | Some(-1) | Some(0) => None,
        Some(k) if k > 0 => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k: must be -1 (off) or at least 1, got {k}"),
            ));
        }
    };
    let min_p = in_range("min_p", s.min_p, 0.0, 1.0, 0.0)?;
    let presence = in_range("presence_penalty", s.presence_penalty, -2.0, 2.0, 0.0)?;
    let frequency = in_range("frequency_penalty", s.frequency_penalty, -2.0, 2.0, 0.0)?;
    let repetition = match s.repetition_penalty {
        None => 1.0,
        Some(r) if r.is_finite() && r > 0.0 && r <= 100.0 => r,
        Some(r) => {
            return Err(ApiError::invalid(
                "repetition_penalty",
                format!("repetition_penalty: must be in (0, 100], got {r}"),
            ));
        }
    };
    let n = match s.n {
        None => 1,
        Some(n) if n >= 1 && n as u64 <= limits.max_n as u64 => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                "n",
                format!("n: must be between 1 and {}, got {n}", limits.max_n),
            ));
        }
    };
    let logprobs = match logprobs {
        None => None,
        Some(k) if k >= 0 && k as u64 <= limits.max_logprobs as u64 => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!(
                    "logprobs: must be between 0 and {}, got {k}",
                    limits.max_logprobs
                ),
            ));
        }
    };
    let stop = s.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > limits.max_stops {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop: at most {} stop strings, got {}",
                limits.max_stops,
                stop.len()
            ),
        ));
    }
    if let Some(long) = stop.iter().find(|s| s.len() > limits.max_stop_bytes) {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop: each stop string may be {} bytes at most, got one of {}",
                limits.max_stop_bytes,
                long.len()
            ),
        ));
    }
    for (name, entries) in [
        ("logit_bias", s.logit_bias.as_ref().map_or(0, |b| b.len())),
        (
            "stop_token_ids",
            s.stop_token_ids.as_ref().map_or(0, |v| v.len()),
        ),
    ] {
        if entries > limits.max_logit_bias {
            return Err(ApiError::invalid(
                name,
                format!(
                    "{name}: at most {} entries, got {entries}",
                    limits.max_logit_bias
                ),
            ));
        }
    }
    let vocab = codec.vocab_size();
    let mut stop_token_ids = Vec::new();
    if !s.ignore_eos.unwrap_or(false) {
        stop_token_ids.extend_from_slice(codec.stop_tokens());
    }
    for &id in s.stop_token_ids.iter().flatten() {
        stop_token_ids.push(token_id("stop_token_ids", id, vocab)?);
    }
    let mut logit_bias = Vec::new();
    for (key, &bias) in s.logit_bias.iter().flatten() {
        let id: i64 = key.parse().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("logit_bias: key `{key}` is not a token id"),
            )
        })?;
        let id = token_id("logit_bias", id, vocab)?;
        let bias = in_range("logit_bias", Some(bias), -100.0, 100.0, 0.0)?;
        logit_bias.push((id, bias as f32));
    }
    if s.stream_options.is_some() && !s.stream.unwrap_or(false) {
        return Err(ApiError::invalid(
            "stream_options",
            "stream_options: only allowed when stream is true",
        ));
    }
    let seed = match s.seed {
        Some(seed) => seed as u64,
        None => rand::random(),
    };
    Ok(GenerationParams {
        sampling: SamplingConfig {
            temperature,
            top_k,
            top_p: Some(top_p),
            min_p: Some(min_p),
            seed,
        },
        penalties: Penalties {
            presence: presence as f32,
            frequency: frequency as f32,
            repetition: repetition as f32,
        },
        logit_bias,
        max_tokens,
        stop,
        stop_token_ids,
        n,
        logprobs,
    })
}
