//! `FusedBackend` kernels for burn's `Flex` CPU backend (feature `flex`).
//!
//! Each kernel reads the contiguous f32 buffers once and writes its output once, split
//! into row blocks across rayon's threads. The inner loops are plain slice arithmetic
//! compiled three times (AVX-512, AVX2+FMA, baseline; `multiversion`) and picked at run
//! time, so the same binary runs on any x86-64 CPU. Tensors of other dtypes take the
//! composed path.
//!
//! One file per kernel family; dependencies point one way, from `backend` (the
//! `impl FusedBackend for Flex`, the only place that falls back to the composed bodies)
//! to the families and from them to the shared helpers:
//! - `gelu`, `norm` (LayerNorm and RMSNorm), `softmax`, `rope`: single-pass row
//!   kernels;
//! - `attention`: per-head gemm calls around `softmax`'s rows on strided views;
//! - `quant`: dequantizing block-quantized weights (NF4, int8) from their packed codes;
//! - `matmul`: the bf16 matmul on strided views of 2-D tensors, through [`bf16_gemm`]
//!   (the packed AVX512-BF16 gemm, public);
//! - `buffers` (row splitting, contiguous f32 views, outputs) and `reduce` (the SIMD
//!   sum, dot, max and mean/rstd of a row).

mod attention;
mod backend;
pub mod bf16_gemm;
mod buffers;
mod gelu;
mod matmul;
mod multiversion;
mod norm;
mod quant;
mod reduce;
mod rope;
mod softmax;
