//! Ember inference: KV-cached autoregressive generation and token sampling.

pub mod generate;
pub mod sampling;

pub use ember_nn::{ContiguousKvCache, KvCache};
pub use generate::{GenerateError, Generator};
pub use sampling::{Sampler, SamplingConfig, argmax};
