//! The quantized formats and the layout of a quantized weight: [`QuantFormat`] (NF4's 16
//! NormalFloat levels, or symmetric int8) and [`QuantSpec`] (format, block size, shape).
//!
//! A weight `W` `[d_in, d_out]` is cut, column by column, into blocks of `block_size`
//! consecutive rows (bitsandbytes' blocks of 64 along the input dimension of PyTorch's
//! `[d_out, d_in]` weight). Each block stores its absolute maximum `absmax` (f32) and
//! one code per value; the value a code stands for is `level[code] · absmax`. `d_in` is
//! padded with zeros to whole blocks.
//!
//! Codes are packed into 32-bit words along `d_in`: word `(w, o)` of the `[words, d_out]`
//! code tensor holds the codes of rows `w·per_word + j`, `j = 0 … per_word - 1`, of
//! column `o`, code `j` in bits `j·bits … j·bits + bits - 1` (8 NF4 codes or 4 int8 codes
//! per word: half a byte, or one byte, per weight).

use serde::{Deserialize, Serialize};

/// NF4, the 4-bit NormalFloat of the QLoRA paper (Dettmers et al. 2023), as bitsandbytes
/// publishes it (`get_4bit_type("nf4")`, `nf4_data` in its CUDA kernels): each bin has
/// equal area under a standard normal, normalised into `[-1, 1]`, with an exact zero.
pub const NF4_LEVELS: [f32; 16] = {
    let mut levels = [0f32; 16];
    let mut i = 0;
    while i < 16 {
        levels[i] = NF4_PUBLISHED[i] as f32;
        i += 1;
    }
    levels
};

/// bitsandbytes' NF4 table as it prints it (each an f32 value, written as an f64).
const NF4_PUBLISHED: [f64; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// How the values of a block are coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantFormat {
    /// 4 bits per value: the nearest of the 16 [`NF4_LEVELS`] to `w / absmax`.
    #[default]
    Nf4,
    /// 8 bits per value, symmetric: `q = round(127 · w / absmax)` in `[-127, 127]`,
    /// stored as `q + 128`; the value is `(q / 127) · absmax`.
    Int8,
}

impl QuantFormat {
    /// Bits per code.
    pub fn bits(self) -> usize {
        match self {
            QuantFormat::Nf4 => 4,
            QuantFormat::Int8 => 8,
        }
    }

    /// Codes per 32-bit word.
    pub fn codes_per_word(self) -> usize {
        32 / self.bits()
    }

    /// `2^bits - 1`: the mask of one code.
    pub fn code_mask(self) -> u32 {
        (1u32 << self.bits()) - 1
    }

    /// The value of each code as a fraction of the block's absmax, indexed by code:
    /// [`NF4_LEVELS`], or `(code - 128) / 127` for int8.
    pub fn levels(self) -> Vec<f32> {
        match self {
            QuantFormat::Nf4 => NF4_LEVELS.to_vec(),
            QuantFormat::Int8 => (0..256).map(|c| (c - 128) as f32 / 127.0).collect(),
        }
    }

    /// The code of `x = w / absmax` (in `[-1, 1]`): the nearest level (NF4; ties go to
    /// the lower level) or `round(127·x) + 128` (int8).
    pub fn encode(self, x: f32) -> u32 {
        match self {
            QuantFormat::Nf4 => {
                // The midpoints between neighbouring levels, as f64 to decide exactly.
                let x = f64::from(x);
                NF4_LEVELS
                    .windows(2)
                    .take_while(|pair| x > (f64::from(pair[0]) + f64::from(pair[1])) / 2.0)
                    .count() as u32
            }
            QuantFormat::Int8 => {
                ((f64::from(x) * 127.0).round().clamp(-127.0, 127.0) as i32 + 128) as u32
            }
        }
    }
}

/// The layout of one quantized `[d_in, d_out]` weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QuantSpec {
    pub format: QuantFormat,
    /// Values per block along `d_in`; a multiple of [`QuantFormat::codes_per_word`].
    pub block_size: usize,
    pub d_in: usize,
    pub d_out: usize,
}

impl QuantSpec {
    /// `Err` says why the block size does not fit the format (zero, or not a multiple of
    /// the codes per word: 8 for NF4, 4 for int8).
    pub fn new(
        format: QuantFormat,
        block_size: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<Self, String> {
        let per_word = format.codes_per_word();
        if block_size == 0 || !block_size.is_multiple_of(per_word) {
            return Err(format!(
                "block size {block_size}: expected a positive multiple of {per_word} for {format:?}"
            ));
        }
        Ok(Self {
            format,
            block_size,
            d_in,
            d_out,
        })
    }

    /// Blocks per column: `ceil(d_in / block_size)`.
    pub fn n_blocks(&self) -> usize {
        self.d_in.div_ceil(self.block_size)
    }

    /// `d_in` padded to whole blocks.
    pub fn padded_in(&self) -> usize {
        self.n_blocks() * self.block_size
    }

    /// Rows of the packed code tensor `[words, d_out]`.
    pub fn words(&self) -> usize {
        self.padded_in() / self.format.codes_per_word()
    }

    /// Code words per block and column.
    pub fn words_per_block(&self) -> usize {
        self.block_size / self.format.codes_per_word()
    }

    /// Bytes of codes and scales: what the quantized weight holds in memory.
    pub fn stored_bytes(&self) -> usize {
        4 * (self.words() + self.n_blocks()) * self.d_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_codes_the_nearest_level_and_int8_rounds() {
        for (code, &level) in NF4_LEVELS.iter().enumerate() {
            assert_eq!(QuantFormat::Nf4.encode(level), code as u32);
        }
        // Just either side of the midpoint between levels 14 and 15.
        let mid = (NF4_LEVELS[14] + NF4_LEVELS[15]) / 2.0;
        assert_eq!(QuantFormat::Nf4.encode(mid - 1e-6), 14);
        assert_eq!(QuantFormat::Nf4.encode(mid + 1e-6), 15);
        assert_eq!(QuantFormat::Int8.encode(0.0), 128);
        assert_eq!(QuantFormat::Int8.encode(1.0), 255);
        assert_eq!(QuantFormat::Int8.encode(-1.0), 1);
        assert_eq!(QuantFormat::Int8.encode(0.5 / 127.0 + 1e-6), 129);
        let levels = QuantFormat::Int8.levels();
        assert_eq!((levels[255], levels[128], levels[1]), (1.0, 0.0, -1.0));
    }

    #[test]
    fn block_sizes_must_fill_whole_words() {
        assert!(QuantSpec::new(QuantFormat::Nf4, 64, 100, 3).is_ok());
        assert!(QuantSpec::new(QuantFormat::Nf4, 12, 100, 3).is_err());
        assert!(QuantSpec::new(QuantFormat::Int8, 12, 100, 3).is_ok());
        assert!(QuantSpec::new(QuantFormat::Int8, 0, 100, 3).is_err());
        let spec = QuantSpec::new(QuantFormat::Nf4, 64, 100, 3).unwrap();
        assert_eq!(
            (spec.n_blocks(), spec.padded_in(), spec.words()),
            (2, 128, 16)
        );
    }
}
