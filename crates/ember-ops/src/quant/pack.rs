//! Quantizing a weight on the host: block absmax scales and packed codes (the layout of
//! [`QuantSpec`]).

use rayon::prelude::*;

use super::format::QuantSpec;

/// The packed codes (`[words, d_out]`, row-major, each word's bits as an `i32`) and the
/// block scales (`[n_blocks, d_out]`: each block's absmax) of `values`, a row-major
/// `[d_in, d_out]` weight. A block of zeros has scale 0 and the code of 0.
///
/// # Panics
/// If `values` does not hold `d_in · d_out` values.
pub fn quantize_host(values: &[f32], spec: &QuantSpec) -> (Vec<i32>, Vec<f32>) {
    let QuantSpec {
        format,
        block_size,
        d_in,
        d_out,
    } = *spec;
    assert_eq!(
        values.len(),
        d_in * d_out,
        "quantize: {} values for a [{d_in}, {d_out}] weight",
        values.len()
    );
    let (bits, per_word) = (format.bits(), format.codes_per_word());
    let words_per_block = spec.words_per_block();
    let mut codes = vec![0i32; spec.words() * d_out];
    let mut scales = vec![0f32; spec.n_blocks() * d_out];
    // One task per block row: `block_size` rows of every column.
    codes
        .par_chunks_mut(words_per_block * d_out)
        .zip(scales.par_chunks_mut(d_out))
        .enumerate()
        .for_each(|(block, (codes, scales))| {
            let rows = block * block_size..((block + 1) * block_size).min(d_in);
            for (o, scale) in scales.iter_mut().enumerate() {
                *scale = rows
                    .clone()
                    .map(|r| values[r * d_out + o].abs())
                    .fold(0f32, f32::max);
            }
            for w in 0..words_per_block {
                for o in 0..d_out {
                    let absmax = scales[o];
                    let mut word = 0u32;
                    for j in 0..per_word {
                        let r = rows.start + w * per_word + j;
                        let x = if r < rows.end && absmax > 0.0 {
                            values[r * d_out + o] / absmax
                        } else {
                            0.0
                        };
                        word |= format.encode(x) << (j * bits);
                    }
                    codes[w * d_out + o] = word as i32;
                }
            }
        });
    (codes, scales)
}
