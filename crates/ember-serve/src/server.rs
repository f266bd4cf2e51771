//! The HTTP server: routes, the API key check, `/v1/models`, `/health`, `/metrics`, and
//! graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;

use crate::codec::Codec;
use crate::engine::{EngineHandle, GenerationRequest, SubmitError, Submitted};
use crate::metrics::Metrics;
use crate::openai::{ApiError, RequestLimits, chat, completions};

/// What the server is told at start.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The name clients put in `model` (the model directory's name unless set).
    pub model_name: String,
    /// When set, the API (`/v1/...`) requires `Authorization: Bearer <key>`; `/health`
    /// and `/metrics` stay open, as in vLLM.
    pub api_key: Option<String>,
    pub limits: RequestLimits,
    /// Request bodies larger than this are refused (413).
    pub max_body_bytes: usize,
    /// After SIGINT/SIGTERM, running requests may finish for this long; then they end
    /// with `finish_reason: "abort"`.
    pub shutdown_grace: Duration,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub codec: Arc<Codec>,
    pub metrics: Arc<Metrics>,
    pub options: Arc<ServeOptions>,
}

impl AppState {
    /// Counts `error` as a refusal and returns it.
    pub fn refuse(&self, error: ApiError) -> ApiError {
        self.metrics.rejected(error.status.as_u16());
        error
    }

    /// 404 unless `model` names the served model.
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if model == self.options.model_name {
            Ok(())
        } else {
            Err(self.refuse(ApiError::model_not_found(model)))
        }
    }

    /// Queues requests in the engine; a full queue is a 503 with `Retry-After`.
    pub fn submit(&self, requests: Vec<GenerationRequest>) -> Result<Submitted, ApiError> {
        self.engine.submit_many(requests).map_err(|e| {
            self.refuse(match e {
                SubmitError::QueueFull(_) | SubmitError::ShuttingDown => {
                    ApiError::busy(e.to_string())
                }
                SubmitError::TooMany(..) | SubmitError::Invalid(_) => {
                    ApiError::invalid("prompt", e.to_string())
                }
                SubmitError::Failed => {
                    ApiError::with_status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                }
            })
        })
    }
}

/// The routes over `state`.
pub fn router(state: AppState) -> Router {
    let limit = state.options.max_body_bytes;
    Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The API key check (vLLM's `--api-key`): only `/v1/...` is guarded.
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = &state.options.api_key else {
        return next.run(request).await;
    };
    // As vLLM's `--api-key`: the API is guarded; health checks and metric scrapes are not.
    if !request.uri().path().starts_with("/v1") {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared in constant time, so the key does not leak through timing.
    let matches = given.is_some_and(|g| {
        g.len() == key.len()
            && g.bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if matches {
        next.run(request).await
    } else {
        state.refuse(ApiError::unauthorized()).into_response()
    }
}

async fn models(State(state): State<AppState>) -> Response {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": state.options.model_name,
            "object": "model",
            "created": created,
            "owned_by": "ember",
            "max_model_len": state.codec.max_seq_len(),
        }],
    }))
    .into_response()
}

async fn health(State(state): State<AppState>) -> Response {
    if state.engine.has_failed() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "failed"})),
        )
            .into_response();
    }
    let (free, total) = state.engine.blocks();
    axum::Json(json!({
        "status": "ok",
        "kv_blocks_free": free,
        "kv_blocks_total": total,
        "idle": state.engine.is_idle(),
    }))
    .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn fallback(uri: Uri) -> Response {
    ApiError::not_found(uri.path()).into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::with_status(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
    .into_response()
}

/// Serves on `listener` until `shutdown` resolves; then takes no new connections or
/// requests, lets running requests finish for [`ServeOptions::shutdown_grace`], aborts
/// what is left, and stops the engine.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let engine = state.engine.clone();
    let grace = state.options.shutdown_grace;
    let app = router(state);
    let signalled = Arc::new(tokio::sync::Notify::new());
    let on_signal = {
        let engine = engine.clone();
        let signalled = signalled.clone();
        async move {
            shutdown.await;
            signalled.notify_one();
            engine.drain();
            let engine = engine.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + grace;
                while !engine.is_idle() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                engine.abort_all();
            });
        }
    };
    let served = axum::serve(listener, app).with_graceful_shutdown(on_signal);
    // Connections that will not close (a client that stopped reading a stream) get a
    // few seconds after the grace period, then the server stops regardless.
    let hard_deadline = async move {
        signalled.notified().await;
        tokio::time::sleep(grace + Duration::from_secs(5)).await;
    };
    let served = tokio::select! {
        served = served => served,
        _ = hard_deadline => Ok(()),
    };
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .ok();
    served
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}
