//! Ember inference: KV-cached autoregressive generation, token sampling and perplexity.

pub mod generate;
pub mod host;
pub mod perplexity;
pub mod sampling;

pub use ember_nn::{ContiguousKvCache, KvCache};
pub use generate::{GenerateError, Generator};
pub use host::{DecodeState, HostDecoder, HostWeights};
pub use perplexity::{Perplexity, PerplexityError, perplexity};
pub use sampling::{Sampler, SamplingConfig, argmax};
