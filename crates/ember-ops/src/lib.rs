//! Tensor-level functions that Ember's layers are built from.
//!
//! Everything here is a plain function over burn tensors, generic over `B: Backend`:
//! - [`attention`]: scaled dot-product attention on burn's fused `attention` op, with
//!   grouped-query (GQA/MQA) key/value sharing and causal masking aligned for KV caches;
//! - [`rope`]: rotary position embeddings in the Hugging Face "rotate-half" layout;
//! - [`mask`]: boolean attention masks;
//! - [`fused`]: the [`FusedBackend`] extension — GELU, LayerNorm, RMSNorm, softmax and
//!   attention as single ops with hand-written backward passes, and CPU kernels for Flex;
//! - [`reference`]: slow, explicit implementations used as independent references in tests.

pub mod attention;
pub mod fused;
pub mod mask;
pub mod reference;
pub mod rope;

pub use attention::{repeat_kv, scaled_dot_product_attention};
pub use fused::FusedBackend;
pub use rope::RopeTables;
