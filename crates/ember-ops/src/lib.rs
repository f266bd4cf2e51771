//! Tensor-level functions that Ember's layers are built from.
//!
//! Everything here is a plain function over burn tensors, generic over `B: Backend`:
//! - [`attention`]: scaled dot-product attention on burn's fused `attention` op, with
//!   grouped-query (GQA/MQA) key/value sharing and causal masking aligned for KV caches;
//! - [`rope`]: rotary position embeddings (both layouts, partial rotation, scaling);
//! - [`positions`]: the sinusoidal position table;
//! - [`flex_attention`]: FlexAttention-style score and mask modifiers, block masks and
//!   memory-efficient chunked attention;
//! - [`alibi`]: ALiBi slopes;
//! - [`mask`]: boolean attention masks;
//! - [`fused`]: the [`FusedBackend`] extension — GELU, LayerNorm, RMSNorm, softmax and
//!   attention as single ops with hand-written backward passes;
//! - [`kernels`]: the backends' own kernels behind [`FusedBackend`]: `kernels::flex`, the
//!   CPU kernels of burn's Flex backend (feature `flex`) with the bf16 gemm, and
//!   [`kernels::cpu_features`];
//! - [`quant`]: block-quantized weights (NF4, int8): the host quantizer, dequantization
//!   and the product whose backward pass dequantizes again instead of keeping the weight;
//! - [`reference`]: slow, explicit implementations used as independent references in tests.

pub mod alibi;
pub mod attention;
pub mod custom_op;
pub mod flex_attention;
pub mod fused;
pub mod kernels;
pub mod mask;
pub mod positions;
pub mod quant;
pub mod reference;
pub mod rope;

pub use alibi::alibi_slopes;
pub use attention::{repeat_kv, scaled_dot_product_attention};
pub use flex_attention::{
    AttentionPath, BlockMask, FlexOptions, MaskMod, ScoreIndex, ScoreMod, TileKind,
    attention_probabilities, flex_attention,
};
pub use fused::FusedBackend;
pub use quant::{QuantFormat, QuantSpec};
pub use rope::{RopeConfig, RopeLayout, RopeScaling, RopeTables};
