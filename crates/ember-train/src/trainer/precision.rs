//! The process-wide matmul precision a run sets.

use ember_ops::fused::{MatmulPrecision, matmul_precision, set_matmul_precision};

/// Sets the process's matmul precision for a training run and restores the previous one
/// when the run ends, however it ends.
pub(crate) struct PrecisionScope(MatmulPrecision);

impl PrecisionScope {
    pub(crate) fn set(precision: MatmulPrecision) -> Self {
        if precision == MatmulPrecision::Bf16 && !ember_ops::kernels::cpu_features::avx512_bf16() {
            eprintln!(
                "note: train.matmul_precision = \"bf16\": this CPU lacks AVX512-BF16, so CPU \
                 backends emulate it (slower than f32)"
            );
        }
        let previous = matmul_precision();
        set_matmul_precision(precision);
        Self(previous)
    }
}

impl Drop for PrecisionScope {
    fn drop(&mut self) {
        set_matmul_precision(self.0);
    }
}
