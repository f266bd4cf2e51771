//! Dequantizing a block-quantized weight (layout: [`crate::quant::format`]) in one pass:
//! each packed word read once, each f32 value written once, block rows split across
//! rayon's threads. The values are those of the composed body (`level[code] · absmax`,
//! one f32 product), bit for bit.

use burn::tensor::{DType, Shape};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::buffers::{f32_contiguous, output, values};
use crate::quant::QuantSpec;

/// The `[d_in, d_out]` weight; `None` unless the codes are i32 and the scales f32, of the
/// shapes `spec` gives.
pub(super) fn dequantize(
    codes: &FlexTensor,
    scales: &FlexTensor,
    spec: QuantSpec,
) -> Option<FlexTensor> {
    let QuantSpec {
        format,
        block_size,
        d_in,
        d_out,
    } = spec;
    if codes.dtype() != DType::I32
        || codes.layout().shape().as_slice() != [spec.words(), d_out]
        || scales.layout().shape().as_slice() != [spec.n_blocks(), d_out]
    {
        return None;
    }
    let codes = codes.to_contiguous();
    let code_words = codes.as_slice::<i32>()?;
    let scales = f32_contiguous(scales)?;
    let absmax = values(&scales);
    let (bits, per_word, mask) = (format.bits(), format.codes_per_word(), format.code_mask());
    let levels = format.levels();
    let words_per_block = spec.words_per_block();

    let mut w = vec![0f32; d_in * d_out];
    if w.is_empty() {
        return Some(output(w, Shape::new([d_in, d_out])));
    }
    // One task per block row; the last may be cut short by `d_in`.
    w.par_chunks_mut(block_size * d_out)
        .enumerate()
        .for_each(|(block, out)| {
            let absmax = &absmax[block * d_out..(block + 1) * d_out];
            let words = &code_words[block * words_per_block * d_out..][..words_per_block * d_out];
            for (row, out_row) in out.chunks_exact_mut(d_out).enumerate() {
                let (word_row, j) = (row / per_word, row % per_word);
                let shift = j * bits;
                let word_row = &words[word_row * d_out..(word_row + 1) * d_out];
                for ((o, &word), &scale) in out_row.iter_mut().zip(word_row).zip(absmax) {
                    *o = levels[((word as u32 >> shift) & mask) as usize] * scale;
                }
            }
        });
    Some(output(w, Shape::new([d_in, d_out])))
}
