//! Hand-written kernels for particular backends, behind the [`FusedBackend`] methods they
//! override.
//!
//! - `flex` (feature `flex`): CPU kernels for burn's `Flex` backend, and the bf16 gemm
//!   they run the bf16 matrix products on;
//! - [`cpu_features`]: what the CPU runs, asked at run time (compiled without `flex` too,
//!   so a caller can check for AVX512-BF16 whichever backends it was built with).
//!
//! Not to be confused with [`mod@crate::flex_attention`], the FlexAttention-style mask and
//! score-modifier API, which runs on any backend.
//!
//! [`FusedBackend`]: crate::fused::FusedBackend

pub mod cpu_features;
#[cfg(feature = "flex")]
pub mod flex;
