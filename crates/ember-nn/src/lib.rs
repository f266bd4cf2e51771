//! Ember's layers and its decoder-only [`Transformer`].
//!
//! One model covers the GPT-2 family (learned positions, LayerNorm, GELU MLP, biases),
//! the Llama family (RoPE, RMSNorm, SwiGLU, no biases), Mistral (sliding window) and
//! Mixtral ([`Moe`]), with multi-head, grouped-query and multi-query attention selected by
//! `n_kv_heads`, and every option of `docs/architectures.md` (QK-norm, ALiBi, soft-capping,
//! RoPE layouts and scaling, GeGLU, GroupNorm, post/sandwich norms, parallel residual,
//! init schemes) selected by [`TransformerConfig`].
//!
//! Every projection is a named [`Projection`] field (`q_proj`, `k_proj`, `v_proj`,
//! `o_proj`, `gate_proj`, `up_proj`, `down_proj`, `router`, `lm_head`) with an adapter
//! slot, so fine-tuning methods find them by path and plug in without editing a layer;
//! see [`params`] for selecting parameters by pattern. A projection's frozen weight may be
//! held block-quantized ([`QuantizedWeight`]: NF4 or int8, dequantized on the fly), the
//! storage QLoRA trains its adapters on.

pub mod attention;
pub mod block;
pub mod capture;
pub mod checkpoint;
pub mod config;
pub mod context;
pub mod init;
pub mod kv_cache;
pub mod memory;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod params;
pub mod projection;
pub mod prune_heads;
pub mod quantized;
pub mod transformer;

pub use attention::{Attention, KvPrefix};
pub use block::Block;
pub use capture::{
    ActivationCapture, ActivationStats, GradientCapture, GradientStats, captured_module,
};
pub use checkpoint::{ActivationCheckpointing, BlockCheckpoints};
pub use config::{
    ConfigError, DTypeName, InitScheme, MlpKind, MoeConfig, NormKind, NormPlacement, PositionKind,
    TransformerConfig,
};
pub use context::{ForwardHooks, LayerContext, Positions};
pub use ember_ops::FusedBackend;
pub use kv_cache::{ContiguousKvCache, KvCache, KvView};
pub use mlp::Mlp;
pub use moe::{Moe, MoeAux, MoeLosses};
pub use norm::{GroupNorm, LayerNorm, Norm, RmsNorm};
pub use params::{
    ParamInfo, ParamSource, assign_stable_ids, blend_params, freeze_matching, matches_pattern,
    param_infos, param_values, param_values_f32, replace_params, replace_params_where,
    set_trainable, stable_param_id, trainable_values,
};
pub use projection::{Adapter, Projection};
pub use prune_heads::KeptHeads;
pub use quantized::{QuantizedWeight, quantized_matmul};
pub use transformer::{ForwardOptions, Transformer};
