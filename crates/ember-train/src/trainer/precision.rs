//! The process-wide precision settings a run sets: the matmul precision and mixed
//! precision's autocast dtype.

use burn::tensor::FloatDType;
use ember_ops::fused::{
    MatmulPrecision, autocast, matmul_precision, set_autocast, set_matmul_precision,
};

use crate::config::Precision;

/// Sets the process's matmul precision and autocast dtype for a training run and restores
/// the previous ones when the run ends, however it ends.
pub(crate) struct PrecisionScope(MatmulPrecision, Option<FloatDType>);

impl PrecisionScope {
    pub(crate) fn set(precision: MatmulPrecision, mixed: Precision, cpu_backend: bool) -> Self {
        if precision == MatmulPrecision::Bf16 && !ember_ops::kernels::cpu_features::avx512_bf16() {
            eprintln!(
                "note: train.matmul_precision = \"bf16\": this CPU lacks AVX512-BF16, so CPU \
                 backends emulate it (slower than f32)"
            );
        }
        if mixed != Precision::F32 && cpu_backend {
            eprintln!(
                "note: train.precision = \"{}\": the CPU backend has no fast path for {} \
                 products (it converts to f32 and back): this halves what activations keep, \
                 at a cost in time",
                if mixed == Precision::Bf16Mixed {
                    "bf16-mixed"
                } else {
                    "f16-mixed"
                },
                if mixed == Precision::Bf16Mixed {
                    "bf16"
                } else {
                    "f16"
                },
            );
        }
        let previous = Self(matmul_precision(), autocast());
        set_matmul_precision(precision);
        set_autocast(mixed.autocast());
        previous
    }
}

impl Drop for PrecisionScope {
    fn drop(&mut self) {
        set_matmul_precision(self.0);
        set_autocast(self.1);
    }
}

/// Runs `f` with autocast off (evaluation is f32 whatever the run trains in), then
/// restores it, however `f` ends.
pub(crate) fn in_f32<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(Option<FloatDType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_autocast(self.0);
        }
    }
    let _restore = Restore(autocast());
    set_autocast(None);
    f()
}
