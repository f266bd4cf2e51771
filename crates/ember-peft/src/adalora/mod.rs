//! AdaLoRA (Zhang et al. 2023) as `peft` 0.13 defines it: each adapted projection learns
//! an SVD-shaped update `P Λ Q` (`lora_B · diag(lora_E) · lora_A`), trained with an
//! orthogonality penalty on `P` and `Q`, while a [`RankAllocator`] prunes the singular
//! values of least importance, shrinking the total rank from `init_r` to `target_r` per
//! module on a cubic schedule.
//!
//! - [`config`]: [`AdaLoraConfig`] (`peft`'s names and defaults) and its checks.
//! - [`apply`]: [`apply_adalora`] (`peft`'s initialisation, the base frozen),
//!   [`orthogonal_penalty`], [`rank_pattern`].
//! - [`allocator`]: [`RankAllocator`], `peft`'s `RankAllocator` and
//!   `AdaLoraModel.update_and_allocate`, with its state for checkpoints.

pub mod allocator;
pub mod apply;
pub mod config;

pub use allocator::{Allocation, AllocatorTensor, RankAllocator};
pub use apply::{apply_adalora, orthogonal_penalty, rank_pattern};
pub use config::AdaLoraConfig;
