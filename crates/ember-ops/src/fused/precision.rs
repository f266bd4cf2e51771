//! The precision of the matrix products in Ember's layers, one process-wide setting like
//! PyTorch's `torch.set_float32_matmul_precision`.
//!
//! - [`MatmulPrecision::F32`] (the default): burn's f32 matmul.
//! - [`MatmulPrecision::Bf16`]: the inputs of each product are rounded to bf16 and the
//!   products summed in f32 ([`super::matmul_bf16`]); weights, activations, gradients and
//!   optimizer state stay f32. On a CPU with AVX512-BF16 this doubles the multiply-add
//!   rate of the Flex backend; elsewhere it is emulated and slower than f32.

use std::sync::atomic::{AtomicU8, Ordering};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    #[default]
    F32,
    Bf16,
}

impl std::str::FromStr for MatmulPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!(
                "unknown matmul precision `{other}` (expected f32 or bf16)"
            )),
        }
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the precision of [`super::matmul`] for the whole process.
pub fn set_matmul_precision(precision: MatmulPrecision) {
    PRECISION.store(precision as u8, Ordering::Relaxed);
}

/// The precision [`super::matmul`] runs at.
pub fn matmul_precision() -> MatmulPrecision {
    match PRECISION.load(Ordering::Relaxed) {
        0 => MatmulPrecision::F32,
        _ => MatmulPrecision::Bf16,
    }
}
