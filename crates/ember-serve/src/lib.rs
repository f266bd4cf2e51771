//! Ember serving: an OpenAI-compatible HTTP server (`/v1/completions`,
//! `/v1/chat/completions`, `/v1/models`, `/health`, `/metrics`) on a continuous-batching
//! engine over a paged KV cache.
//!
//! - [`engine`]: requests, the scheduler (continuous batching, chunked prefill,
//!   preemption), the engine thread;
//! - [`openai`]: request bodies, checks, endpoints, streaming, error shapes;
//! - [`server`]: routes, the API key, graceful shutdown;
//! - [`codec`]: the model's tokenizer and chat template;
//! - [`metrics`]: vLLM-named Prometheus metrics.

pub mod codec;
pub mod engine;
pub mod metrics;
pub mod openai;
pub mod server;

pub use codec::Codec;
pub use engine::{EngineConfig, EngineHandle, SchedulerConfig};
pub use metrics::Metrics;
pub use openai::RequestLimits;
pub use server::{AppState, ServeOptions, router, serve, shutdown_signal};
