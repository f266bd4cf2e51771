//! Turning the engine's events into answers: gathered into one JSON body, or sent as they
//! come as server-sent events (the same `id` in every chunk, a `finish_reason` per
//! choice, an optional usage chunk, then `data: [DONE]`). Each endpoint says how its
//! chunks look through [`ChunkFormat`].

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::{Event, FinishReason, Submitted, TokenLogprob};

/// Everything one choice produced.
#[derive(Debug, Clone, Default)]
pub struct ChoiceOutput {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<FinishReason>,
    pub completion_tokens: usize,
}

/// Waits for every one of `choices` to finish. When the engine goes away first, the
/// unfinished choices end with `abort`.
pub async fn collect(mut events: UnboundedReceiver<Event>, choices: usize) -> Vec<ChoiceOutput> {
    let mut out = vec![ChoiceOutput::default(); choices];
    let mut open = choices;
    while open > 0 {
        match events.recv().await {
            Some(Event::Token {
                choice,
                text,
                logprob,
                ..
            }) => {
                out[choice].text += &text;
                out[choice].logprobs.extend(logprob);
            }
            Some(Event::Finished {
                choice,
                reason,
                text,
                completion_tokens,
            }) => {
                let c = &mut out[choice];
                c.text += &text;
                c.finish = Some(reason);
                c.completion_tokens = completion_tokens;
                open -= 1;
            }
            None => break,
        }
    }
    for c in &mut out {
        c.finish.get_or_insert(FinishReason::Abort);
    }
    out
}

/// How one endpoint writes its stream chunks (each a whole JSON object).
pub trait ChunkFormat: Send + 'static {
    /// A chunk holding `choices` (the endpoint's `id`, `object`, `created`, `model`).
    fn chunk(&self, choices: Value) -> Value;
    /// Chunks sent before any token (the chat endpoint's `role` deltas).
    fn opening(&self, choices: usize) -> Vec<Value>;
    /// New text of `choice`, with the log-probabilities of the tokens it came with.
    fn delta(&mut self, choice: usize, text: &str, logprobs: &[TokenLogprob]) -> Value;
    /// The last chunk of `choice`.
    fn finish(&self, choice: usize, text: &str, reason: FinishReason) -> Value;
    /// The usage chunk (`choices: []`).
    fn usage(&self, usage: Value) -> Value {
        let mut chunk = self.chunk(json!([]));
        chunk["usage"] = usage;
        chunk
    }
}

/// OpenAI's `usage` object.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

struct StreamState<F: ChunkFormat> {
    events: UnboundedReceiver<Event>,
    format: F,
    queue: VecDeque<String>,
    /// Choices not finished yet.
    open: Vec<bool>,
    prompt_tokens: usize,
    completion_tokens: usize,
    include_usage: bool,
    done: bool,
}

/// The server-sent-event answer to `submitted`: chunks as `format` writes them, until
/// every choice has finished. Dropping it (the client went away) drops the events'
/// receiver, which cancels the request in the engine.
pub fn sse<F: ChunkFormat>(submitted: Submitted, format: F, include_usage: bool) -> Response {
    let Submitted {
        events,
        choices,
        prompt_tokens,
        ..
    } = submitted;
    let queue = format
        .opening(choices)
        .into_iter()
        .map(|chunk| with_usage(chunk, include_usage))
        .collect();
    let state = StreamState {
        events,
        format,
        queue,
        open: vec![true; choices],
        prompt_tokens,
        completion_tokens: 0,
        include_usage,
        done: false,
    };
    Sse::new(chunks(state))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A chunk as text; with `include_usage`, every chunk but the last carries `usage: null`,
/// as OpenAI sends them.
fn with_usage(mut chunk: Value, include_usage: bool) -> String {
    if include_usage {
        chunk["usage"] = Value::Null;
    }
    chunk.to_string()
}

fn chunks<F: ChunkFormat>(
    state: StreamState<F>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold(state, |mut st| async move {
        loop {
            if let Some(data) = st.queue.pop_front() {
                return Some((Ok(SseEvent::default().data(data)), st));
            }
            if st.done {
                return None;
            }
            if !st.open.contains(&true) {
                if st.include_usage {
                    let usage = usage(st.prompt_tokens, st.completion_tokens);
                    st.queue.push_back(st.format.usage(usage).to_string());
                }
                st.queue.push_back("[DONE]".to_string());
                st.done = true;
                continue;
            }
            match st.events.recv().await {
                Some(Event::Token {
                    choice,
                    text,
                    logprob,
                    ..
                }) => {
                    let logprobs: Vec<TokenLogprob> = logprob.into_iter().collect();
                    if !text.is_empty() || !logprobs.is_empty() {
                        let chunk = st.format.delta(choice, &text, &logprobs);
                        st.queue.push_back(with_usage(chunk, st.include_usage));
                    }
                }
                Some(Event::Finished {
                    choice,
                    reason,
                    text,
                    completion_tokens,
                }) => {
                    st.completion_tokens += completion_tokens;
                    st.open[choice] = false;
                    let chunk = st.format.finish(choice, &text, reason);
                    st.queue.push_back(with_usage(chunk, st.include_usage));
                }
                // The engine stopped: every open choice ends as aborted.
                None => {
                    for choice in 0..st.open.len() {
                        if std::mem::take(&mut st.open[choice]) {
                            let chunk = st.format.finish(choice, "", FinishReason::Abort);
                            st.queue.push_back(with_usage(chunk, st.include_usage));
                        }
                    }
                }
            }
        }
    })
}
