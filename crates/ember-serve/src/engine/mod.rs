//! The continuous-batching engine: requests, sequences, the scheduler and its thread.

pub mod handle;
pub mod request;
pub(crate) mod scheduler;
pub(crate) mod sequence;
pub mod stop_text;

pub use handle::{EngineConfig, EngineHandle, SubmitError};
pub use request::{
    Event, FinishReason, GenerationParams, GenerationRequest, Submitted, TokenLogprob,
};
pub use scheduler::SchedulerConfig;
pub use sequence::Detokenize;
pub use stop_text::StopText;
