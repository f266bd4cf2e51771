//! The OpenAI-compatible API: request bodies, checks, endpoints and error shapes.

pub mod chat;
pub mod completions;
pub mod error;
pub mod params;
pub mod protocol;
pub mod stream;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;

pub use error::ApiError;
pub use params::RequestLimits;

use crate::server::AppState;

/// What every answer of one request carries: its id, creation time and model name.
#[derive(Debug, Clone)]
pub struct Answer {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Answer {
    pub fn new(prefix: &str, model: &str) -> Self {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            id: format!("{prefix}-{:032x}", rand::random::<u128>()),
            created,
            model: model.to_string(),
        }
    }

    /// An answer or stream chunk of kind `object` (`text_completion`, `chat.completion`,
    /// `chat.completion.chunk`) holding `choices`.
    pub fn body(&self, object: &str, choices: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

/// The request body, or the error for one too large or unreadable.
pub(crate) fn body_bytes(
    app: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        app.refuse(ApiError::with_status(
            status,
            format!(
                "request body: {} (the limit is {} bytes)",
                rejection.body_text(),
                app.options.max_body_bytes
            ),
        ))
    })
}
