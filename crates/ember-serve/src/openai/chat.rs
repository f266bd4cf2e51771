//! `POST /v1/chat/completions`: a conversation rendered by the model's chat template,
//! continued as the assistant.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use ember_data::sft::Message;
use serde_json::{Value, json};

use super::error::ApiError;
use super::params::generation_params;
use super::protocol::{ChatRequest, Content, parse};
use super::stream::{ChunkFormat, collect, sse, usage};
use super::{Answer, body_bytes};
use crate::codec::Codec;
use crate::engine::{FinishReason, GenerationRequest, TokenLogprob};
use crate::server::AppState;

/// The chat API's `logprobs` object for `tokens`.
fn logprobs_json(codec: &Codec, tokens: &[TokenLogprob]) -> Value {
    let entry = |id: u32, logprob: f32| {
        let text = codec.token_text(id);
        json!({ "token": text, "logprob": logprob, "bytes": text.as_bytes() })
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(t.token, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

struct ChatChunks {
    answer: Answer,
    codec: std::sync::Arc<Codec>,
    logprobs: bool,
}

impl ChunkFormat for ChatChunks {
    fn chunk(&self, choices: Value) -> Value {
        self.answer.body("chat.completion.chunk", choices)
    }

    fn opening(&self, choices: usize) -> Vec<Value> {
        (0..choices)
            .map(|i| {
                self.chunk(json!([{
                    "index": i,
                    "delta": { "role": "assistant", "content": "" },
                    "logprobs": null,
                    "finish_reason": null,
                }]))
            })
            .collect()
    }

    fn delta(&mut self, choice: usize, text: &str, logprobs: &[TokenLogprob]) -> Value {
        let lp = self.logprobs.then(|| logprobs_json(&self.codec, logprobs));
        self.chunk(json!([{
            "index": choice, "delta": { "content": text }, "logprobs": lp, "finish_reason": null,
        }]))
    }

    fn finish(&self, choice: usize, text: &str, reason: FinishReason) -> Value {
        let delta = if text.is_empty() {
            json!({})
        } else {
            json!({ "content": text })
        };
        self.chunk(json!([{
            "index": choice, "delta": delta, "logprobs": null, "finish_reason": reason.as_str(),
        }]))
    }
}

pub async fn chat_completions(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(app, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// The conversation as the chat template takes it: text content only.
fn messages_of(request: &ChatRequest) -> Result<Vec<Message>, ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages: at least one message is required",
        ));
    }
    request
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(text)) => text.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.iter().enumerate() {
                        match (part.kind.as_str(), &part.text) {
                            ("text", Some(t)) => text += t,
                            ("text", None) => {
                                return Err(ApiError::invalid(
                                    "messages",
                                    format!("messages[{i}].content[{j}]: a text part needs `text`"),
                                ));
                            }
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    "messages",
                                    format!(
                                        "messages[{i}].content[{j}]: only text parts are supported, got type `{kind}`"
                                    ),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            Ok(Message {
                role: m.role.clone(),
                content,
            })
        })
        .collect()
}

async fn handle(app: AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let body = body_bytes(&app, body)?;
    let request: ChatRequest =
        parse(&body).map_err(|(param, message)| app.refuse(ApiError::invalid(&param, message)))?;
    app.check_model(&request.model)?;
    let codec = app.codec.clone();
    let messages = messages_of(&request).map_err(|e| app.refuse(e))?;
    let prompt = codec
        .encode_chat(&messages)
        .map_err(|e| app.refuse(ApiError::invalid("messages", e)))?;
    let logprobs = match (request.logprobs.unwrap_or(false), request.top_logprobs) {
        (true, top) => Some(top.unwrap_or(0)),
        (false, None) => None,
        (false, Some(_)) => {
            return Err(app.refuse(ApiError::invalid(
                "top_logprobs",
                "top_logprobs: requires logprobs to be true",
            )));
        }
    };
    let sampling = request.sampling();
    let params = generation_params(
        &sampling,
        request.max_completion_tokens.or(request.max_tokens),
        logprobs,
        prompt.len(),
        &codec,
        &app.options.limits,
    )
    .map_err(|e| {
        // Chat's `logprobs` is a switch; the count is `top_logprobs`.
        let e = if e.param.as_deref() == Some("logprobs") {
            ApiError::invalid(
                "top_logprobs",
                e.message.replacen("logprobs", "top_logprobs", 1),
            )
        } else {
            e
        };
        app.refuse(e)
    })?;
    let submitted = app.submit(vec![GenerationRequest { prompt, params }])?;
    let answer = Answer::new("chatcmpl", &request.model);
    let want_logprobs = logprobs.is_some();
    if sampling.stream.unwrap_or(false) {
        let format = ChatChunks {
            answer,
            codec,
            logprobs: want_logprobs,
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
                "message": { "role": "assistant", "content": o.text },
                "logprobs": want_logprobs.then(|| logprobs_json(&codec, &o.logprobs)),
                "finish_reason": o.finish.map(|f| f.as_str()),
            })
        })
        .collect();
    let mut body = answer.body("chat.completion", choices.into());
    body["usage"] = usage(submitted.prompt_tokens, completion_tokens);
    Ok(axum::Json(body).into_response())
}
