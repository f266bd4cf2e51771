//! One continuation inside the engine: its tokens, its blocks, its sampler, and the text
//! it releases.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ember_infer::{BlockTable, Sampler, SamplingConfig, log_softmax, top_logprobs};
use ember_model::StreamDecoder;

use super::request::{Event, FinishReason, RequestState, TokenLogprob};
use super::stop_text::StopText;

/// Text of token ids, as the model's tokenizer decodes them (`None` when it cannot).
pub type Detokenize = Arc<dyn Fn(&[u32]) -> Option<String> + Send + Sync>;

/// [`Detokenize`] owned by one sequence's stream decoder.
type BoxedDecode = Box<dyn Fn(&[u32]) -> Option<String> + Send + Sync>;

/// Prompt tokens decoded with the continuation, so the first new token's text comes out
/// as it reads after them (a leading space kept, a split character completed).
const TEXT_CONTEXT: usize = 8;

pub(crate) struct Sequence {
    pub request: Arc<RequestState>,
    pub choice: usize,
    /// The prompt, then every token generated.
    pub tokens: Vec<u32>,
    pub table: BlockTable,
    sampler: Sampler,
    text: StreamDecoder<BoxedDecode>,
    stop: StopText,
    pub last_token_at: Option<Instant>,
    pub first_token_at: Option<Instant>,
    /// Admitted at least once (its prompt tokens are counted).
    pub started: bool,
    /// A stop string ended the text (what followed it is dropped, not flushed).
    stopped_by_string: bool,
}

/// What sampling a token did to a sequence.
pub(crate) enum Outcome {
    Continue,
    Finished(FinishReason),
}

/// `log softmax(logits)[token]`, in f64.
fn chosen_logprob(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
    let total: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    (logits[token as usize] as f64 - max - total.ln()) as f32
}

impl Sequence {
    pub fn new(request: Arc<RequestState>, choice: usize, detokenize: &Detokenize) -> Self {
        let params = &request.params;
        let sampling = SamplingConfig {
            seed: params.sampling.seed.wrapping_add(choice as u64),
            ..params.sampling.clone()
        };
        let decode = detokenize.clone();
        let decode: BoxedDecode = Box::new(move |ids| decode(ids));
        let context = &request.prompt[request.prompt.len().saturating_sub(TEXT_CONTEXT)..];
        let (text, _) = StreamDecoder::new(decode, context);
        Self {
            tokens: request.prompt.clone(),
            choice,
            table: BlockTable::default(),
            sampler: Sampler::new(sampling),
            text,
            stop: StopText::new(&params.stop),
            last_token_at: None,
            first_token_at: None,
            started: false,
            stopped_by_string: false,
            request,
        }
    }

    /// Order of seniority: earlier requests first, then lower choices.
    pub fn key(&self) -> (u64, usize) {
        (self.request.id, self.choice)
    }

    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.request.prompt.len()..]
    }

    /// Tokens not yet in the KV cache.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.table.len
    }

    /// Whether the client has gone (every receiver dropped).
    pub fn cancelled(&self) -> bool {
        self.request.events.is_closed()
    }

    /// Samples the next token from the model's `logits` `[vocab]`, appends it and sends
    /// what it released.
    pub fn advance(&mut self, logits: &[f32], now: Instant) -> Outcome {
        let params = &self.request.params;
        // With no alternatives asked for, only the chosen token's log-probability is
        // needed: its logit minus the log-sum-exp, without a vocabulary-sized vector.
        let logprob = match params.logprobs {
            Some(k) if k > 0 => Some(Some(log_softmax(logits))),
            Some(_) => Some(None),
            None => None,
        };
        let mut adjusted;
        let mut scores = logits;
        if !params.penalties.is_neutral() || !params.logit_bias.is_empty() {
            adjusted = logits.to_vec();
            for &(t, bias) in &params.logit_bias {
                if let Some(l) = adjusted.get_mut(t as usize) {
                    *l += bias;
                }
            }
            let prompt = &self.tokens[..self.request.prompt.len()];
            params
                .penalties
                .apply(&mut adjusted, prompt, self.generated());
            scores = &adjusted;
        }
        let token = self.sampler.sample(scores);
        let logprob = logprob.map(|full| match full {
            Some(lp) => TokenLogprob {
                token,
                logprob: lp[token as usize],
                top: top_logprobs(&lp, params.logprobs.unwrap_or(0)),
            },
            None => TokenLogprob {
                token,
                logprob: chosen_logprob(logits, token),
                top: Vec::new(),
            },
        });
        self.tokens.push(token);
        self.first_token_at.get_or_insert(now);
        self.last_token_at = Some(now);
        let n_generated = self.tokens.len() - self.request.prompt.len();
        let stop_token = params.stop_token_ids.contains(&token);
        let (text, stopped) = if stop_token {
            (String::new(), false)
        } else {
            match self.text.push(token) {
                Some(piece) => self.stop.push(&piece),
                None => (String::new(), false),
            }
        };
        let _ = self.request.events.send(Event::Token {
            choice: self.request.choice_base + self.choice,
            token,
            text,
            logprob,
        });
        self.stopped_by_string = stopped;
        if stop_token || stopped {
            return Outcome::Finished(FinishReason::Stop);
        }
        if n_generated >= params.max_tokens {
            return Outcome::Finished(FinishReason::Length);
        }
        Outcome::Continue
    }

    /// Sends the end of this continuation; returns whether it was its request's last.
    pub fn finish(&mut self, reason: FinishReason) -> bool {
        // Text held back (an incomplete character, a possible stop string) comes out
        // now, as decoding the whole continuation shows it, unless a stop string cut it.
        let text = if self.stopped_by_string {
            String::new()
        } else {
            let rest = self.text.finish();
            let (mut out, stopped) = self.stop.push(&rest);
            if !stopped {
                out += &self.stop.finish();
            }
            out
        };
        let _ = self.request.events.send(Event::Finished {
            choice: self.request.choice_base + self.choice,
            reason,
            text,
            completion_tokens: self.generated().len(),
        });
        self.request.remaining.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chosen_tokens_logprob_alone_equals_the_full_log_softmax() {
        let logits = [2.5f32, -1.0, 0.25, 7.0, 3.5];
        let full = log_softmax(&logits);
        for (t, want) in full.iter().enumerate() {
            assert!((chosen_logprob(&logits, t as u32) - want).abs() < 1e-6);
        }
    }
}
