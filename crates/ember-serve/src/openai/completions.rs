//! `POST /v1/completions`: text (or token ids) in, continuations out.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiError;
use super::params::{generation_params, token_id};
use super::protocol::{CompletionRequest, Prompt, parse};
use super::stream::{ChunkFormat, collect, sse, usage};
use super::{Answer, body_bytes};
use crate::codec::Codec;
use crate::engine::{FinishReason, GenerationRequest, TokenLogprob};
use crate::server::AppState;

/// The `logprobs` object of the completions API for `tokens`, whose text starts at
/// `offset` in the choice's text.
fn logprobs_json(codec: &Codec, tokens: &[TokenLogprob], mut offset: usize) -> Value {
    let mut texts = Vec::new();
    let mut offsets = Vec::new();
    let mut top = Vec::new();
    for t in tokens {
        let text = codec.token_text(t.token);
        offsets.push(offset);
        offset += text.len();
        texts.push(text);
        let alternatives: serde_json::Map<String, Value> = t
            .top
            .iter()
            .map(|&(id, lp)| (codec.token_text(id), json!(lp)))
            .collect();
        top.push(Value::Object(alternatives));
    }
    json!({
        "tokens": texts,
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

struct CompletionChunks {
    answer: Answer,
    codec: std::sync::Arc<Codec>,
    logprobs: bool,
    /// Per choice: where the next token's text starts (`text_offset` runs on across
    /// chunks).
    offsets: Vec<usize>,
}

impl ChunkFormat for CompletionChunks {
    fn chunk(&self, choices: Value) -> Value {
        self.answer.body("text_completion", choices)
    }

    fn opening(&self, _choices: usize) -> Vec<Value> {
        Vec::new()
    }

    fn delta(&mut self, choice: usize, text: &str, logprobs: &[TokenLogprob]) -> Value {
        let offset = self.offsets[choice];
        let lp = self
            .logprobs
            .then(|| logprobs_json(&self.codec, logprobs, offset));
        self.offsets[choice] += logprobs
            .iter()
            .map(|t| self.codec.token_text(t.token).len())
            .sum::<usize>();
        self.chunk(json!([{
            "index": choice, "text": text, "logprobs": lp, "finish_reason": null,
        }]))
    }

    fn finish(&self, choice: usize, text: &str, reason: FinishReason) -> Value {
        self.chunk(json!([{
            "index": choice, "text": text, "logprobs": null, "finish_reason": reason.as_str(),
        }]))
    }
}

pub async fn completions(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(app, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn handle(app: AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let body = body_bytes(&app, body)?;
    let request: CompletionRequest =
        parse(&body).map_err(|(param, message)| app.refuse(ApiError::invalid(&param, message)))?;
    app.check_model(&request.model)?;
    let codec = app.codec.clone();
    let invalid = |param: &str, message: String| app.refuse(ApiError::invalid(param, message));
    if request.echo.unwrap_or(false) {
        return Err(invalid("echo", "echo: not supported by this server".into()));
    }
    if request.suffix.is_some() {
        return Err(invalid(
            "suffix",
            "suffix: not supported by this server".into(),
        ));
    }
    if let Some(best_of) = request.best_of
        && best_of != request.n.unwrap_or(1)
    {
        return Err(invalid(
            "best_of",
            "best_of: only best_of equal to n is supported".into(),
        ));
    }
    let count = match &request.prompt {
        Prompt::Text(_) | Prompt::Ids(_) => 1,
        Prompt::Texts(v) => v.len(),
        Prompt::IdLists(v) => v.len(),
    };
    if count > app.options.limits.max_n {
        return Err(invalid(
            "prompt",
            format!(
                "prompt: at most {} prompts per request",
                app.options.limits.max_n
            ),
        ));
    }
    let prompts: Vec<Vec<u32>> = match &request.prompt {
        Prompt::Text(text) => vec![
            codec
                .encode_prompt(text)
                .map_err(|e| invalid("prompt", e))?,
        ],
        Prompt::Texts(texts) => texts
            .iter()
            .map(|t| codec.encode_prompt(t).map_err(|e| invalid("prompt", e)))
            .collect::<Result<_, _>>()?,
        Prompt::Ids(ids) => vec![ids_of(ids, &codec).map_err(|e| app.refuse(e))?],
        Prompt::IdLists(lists) => lists
            .iter()
            .map(|ids| ids_of(ids, &codec).map_err(|e| app.refuse(e)))
            .collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() {
        return Err(invalid("prompt", "prompt: no prompt given".into()));
    }
    let sampling = request.sampling();
    let mut requests = Vec::new();
    for prompt in prompts {
        // OpenAI's default for completions is 16 new tokens.
        let params = generation_params(
            &sampling,
            Some(request.max_tokens.unwrap_or(16)),
            request.logprobs,
            prompt.len(),
            &codec,
            &app.options.limits,
        )
        .map_err(|e| app.refuse(e))?;
        requests.push(GenerationRequest { prompt, params });
    }
    let submitted = app.submit(requests)?;
    let answer = Answer::new("cmpl", &request.model);
    let want_logprobs = request.logprobs.is_some();
    if sampling.stream.unwrap_or(false) {
        let format = CompletionChunks {
            answer,
            codec,
            logprobs: want_logprobs,
            offsets: vec![0; submitted.choices],
        };
        return Ok(sse(submitted, format, sampling.include_usage()));
    }
    let outputs = collect(submitted.events, submitted.choices).await;
    let completion_tokens: usize = outputs.iter().map(|o| o.completion_tokens).sum();
    let choices: Vec<Value> = outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            json!({
                "index": i,
                "text": o.text,
                "logprobs": want_logprobs.then(|| logprobs_json(&codec, &o.logprobs, 0)),
                "finish_reason": o.finish.map(|f| f.as_str()),
            })
        })
        .collect();
    let mut body = answer.body("text_completion", choices.into());
    body["usage"] = usage(submitted.prompt_tokens, completion_tokens);
    Ok(axum::Json(body).into_response())
}

fn ids_of(ids: &[i64], codec: &Codec) -> Result<Vec<u32>, ApiError> {
    ids.iter()
        .map(|&id| token_id("prompt", id, codec.vocab_size()))
        .collect()
}
