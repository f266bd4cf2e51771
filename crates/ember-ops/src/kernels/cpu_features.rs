//! CPU features that decide which kernels can run, detected at run time.

/// Whether this CPU has AVX-512F with the BF16 extension (`vdpbf16ps`), which
/// `kernels::flex::bf16_gemm` needs. Without it the bf16 matmul is emulated (inputs cast
/// to bf16 and back, then an f32 matmul).
pub fn avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
