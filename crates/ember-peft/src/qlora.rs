//! QLoRA (Dettmers et al. 2023): LoRA on a base whose projection weights are held
//! block-quantized — 4-bit NF4 (the paper's NormalFloat) or int8, one f32 absmax per
//! block of `block_size` values along the input dimension (bitsandbytes' default: 64) —
//! and dequantized on the fly in the forward and backward passes; the LoRA tensors stay
//! f32.
//!
//! As `transformers` quantizes a model for QLoRA, every projection but the LM head is
//! quantized (MoE routers and experts included); embeddings and norms stay f32. The base
//! then takes ~0.56 bytes per projection weight (NF4) or ~1.06 (int8) instead of 4, and
//! the autodiff graph keeps the packed codes, not dequantized weights, between the
//! forward and backward passes ([`ember_nn::quantized`]). Double quantization of the
//! scales and paged optimizers are not implemented.
//!
//! [`crate::merged`] of a quantized projection gives an f32 projection: the dequantized
//! weight with the adapter folded in.

use ember_nn::{FusedBackend, Transformer};
use serde::{Deserialize, Serialize};

pub use ember_ops::quant::QuantFormat;

use crate::attach::PeftReport;
use crate::lora::{LoraConfig, apply_lora};
use crate::targets::PeftError;

/// A QLoRA configuration: LoRA's, and how the base is quantized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QloraConfig {
    pub lora: LoraConfig,
    /// The base weights' format (`nf4`, the paper's, or `int8`).
    #[serde(default)]
    pub format: QuantFormat,
    /// Values per absmax block along each weight's input dimension.
    #[serde(default = "default_block_size")]
    pub block_size: usize,
}

fn default_block_size() -> usize {
    64
}

impl Default for QloraConfig {
    /// `peft`'s LoRA defaults on NF4 in blocks of 64.
    fn default() -> Self {
        Self {
            lora: LoraConfig::default(),
            format: QuantFormat::Nf4,
            block_size: default_block_size(),
        }
    }
}

impl QloraConfig {
    /// LoRA's checks, and a block size the format can pack (`peft.block_size`: a
    /// positive multiple of 8 for NF4, of 4 for int8).
    pub fn validate(&self) -> Result<(), PeftError> {
        self.lora.validate()?;
        let per_word = self.format.codes_per_word();
        if self.block_size == 0 || !self.block_size.is_multiple_of(per_word) {
            return Err(PeftError(format!(
                "peft.block_size = {}: expected a positive multiple of {per_word} for {:?}",
                self.block_size, self.format
            )));
        }
        Ok(())
    }
}

/// Quantizes every projection of `model` but the LM head (embeddings and norms stay f32),
/// then attaches LoRA exactly as [`apply_lora`] does (targets, initialisation, freezing,
/// stable ids). `report.total` counts each quantized weight as its `d_in · d_out` values
/// (not its codes and scales), so it equals the unquantized model's count plus the
/// adapters'. `Err` names the key at fault; `model` is consumed either way.
pub fn apply_qlora<B: FusedBackend>(
    mut model: Transformer<B>,
    config: &QloraConfig,
    device: &B::Device,
) -> Result<(Transformer<B>, PeftReport), PeftError> {
    config.validate()?;
    let mut logical = 0;
    let mut stored_scales = 0;
    for (path, projection) in model.projections_mut() {
        if path == "lm_head" {
            continue;
        }
        projection
            .quantize(config.format, config.block_size)
            .map_err(|e| PeftError(format!("peft.block_size: {path}: {e}")))?;
        let q = projection.quantized.as_ref().expect("just quantized");
        let (d_in, d_out) = q.dims();
        logical += d_in * d_out;
        stored_scales += q.spec.n_blocks() * d_out;
    }
    let (model, mut report) = apply_lora(model, &config.lora, device)?;
    // `param_infos` sees the scales (float) and the empty placeholders, not the codes.
    report.total = report.total + logical - stored_scales;
    Ok((model, report))
}
