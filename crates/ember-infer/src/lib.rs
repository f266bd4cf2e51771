//! Ember inference: the [`Decoder`] interface and its implementations (burn, uncached,
//! host kernels), KV-cached autoregressive generation (after prefix- or prompt-tuning
//! virtual tokens too), token sampling and perplexity.

pub mod beam;
pub mod decoder;
pub mod generate;
pub mod host;
pub mod paged_kv;
pub mod penalties;
pub mod perplexity;
pub mod prompted;
pub mod sampling;
pub mod speculative;

pub use beam::{BeamSearchConfig, EarlyStopping, Hypothesis, beam_search};
pub use decoder::{BurnDecoder, Decoder, UncachedDecoder};
pub use ember_nn::{ContiguousKvCache, KvCache};
pub use generate::{GenerateError, Generator, decode_loop};
pub use host::{BurnPrefilledHost, DecodeState, HostDecoder, HostWeights, PagedChunk};
pub use paged_kv::{BlockTable, OutOfBlocks, PagedKv};
pub use penalties::Penalties;
pub use perplexity::{Perplexity, PerplexityError, perplexity};
pub use prompted::{PromptedDecoder, VirtualTokens};
pub use sampling::{Sampler, SamplingConfig, argmax, log_softmax, top_logprobs};
pub use speculative::{SpeculativeConfig, SpeculativeStats, speculative_generate};
