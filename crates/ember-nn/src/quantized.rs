//! [`QuantizedWeight`]: a frozen `[d_in, d_out]` weight held block-quantized (QLoRA's
//! 4-bit NF4, or symmetric int8), as packed codes and one f32 absmax per block; the
//! layout, the formats and the ops are `ember_ops::quant`'s.
//!
//! In memory it takes `4·(words + n_blocks)·d_out` bytes: for NF4 in blocks of 64,
//! 0.5625 bytes per weight (0.5 of codes, 4/64 of scales) against f32's 4; for int8,
//! 1.0625. Products go through [`ember_ops::quant::quantized_matmul`], whose backward
//! pass dequantizes again from the codes rather than keeping the f32 weight alive
//! between the forward and backward passes; neither the codes nor the scales train.

use burn::module::{Module, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_ops::FusedBackend;
use ember_ops::quant::{self, QuantFormat, QuantSpec, quantize_host};

/// A block-quantized frozen weight `[d_in, d_out]` (see the module docs).
#[derive(Module, Debug)]
pub struct QuantizedWeight<B: Backend> {
    /// `[words, d_out]`: the codes packed into 32-bit words along `d_in` (8 NF4 or 4 int8
    /// codes each; `ember_ops::quant::format`). Not trainable (an int tensor).
    pub codes: Param<Tensor<B, 2, Int>>,
    /// `[n_blocks, d_out]`: each block's absolute maximum. Frozen.
    pub scales: Param<Tensor<B, 2>>,
    /// The format, block size and logical shape.
    pub spec: QuantSpec,
}

impl<B: Backend> QuantizedWeight<B> {
    /// `weight` `[d_in, d_out]` quantized on the host in blocks of `block_size` along
    /// `d_in` (bitsandbytes' default is 64), on `weight`'s device. `Err` for a block size
    /// the format cannot pack (zero, or not a multiple of 8 for NF4 or of 4 for int8).
    pub fn quantize(
        weight: Tensor<B, 2>,
        format: QuantFormat,
        block_size: usize,
    ) -> Result<Self, String> {
        let [d_in, d_out] = weight.dims();
        let spec = QuantSpec::new(format, block_size, d_in, d_out)?;
        let device = weight.device();
        let values: Vec<f32> = weight
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| format!("quantize: reading the weight: {e:?}"))?;
        let (codes, scales) = quantize_host(&values, &spec);
        drop(values);
        let codes = Tensor::from_data(TensorData::new(codes, [spec.words(), d_out]), &device);
        let scales = Tensor::from_data(TensorData::new(scales, [spec.n_blocks(), d_out]), &device);
        Ok(Self {
            codes: Param::initialized(ParamId::new(), codes),
            scales: Param::initialized(ParamId::new(), scales),
            spec,
        })
    }

    /// `(d_in, d_out)` of the weight it stands for.
    pub fn dims(&self) -> (usize, usize) {
        (self.spec.d_in, self.spec.d_out)
    }

    /// Bytes of codes and scales.
    pub fn stored_bytes(&self) -> usize {
        self.spec.stored_bytes()
    }
}

impl<B: FusedBackend> QuantizedWeight<B> {
    /// The `[d_in, d_out]` f32 weight the codes stand for (a constant under autodiff).
    pub fn dequantize(&self) -> Tensor<B, 2> {
        quant::dequantize(self.codes.val(), self.scales.val(), self.spec)
    }

    /// `x: [..., d_in]` → `x · W` `[..., d_out]`; see [`quantized_matmul`].
    pub fn matmul<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        quantized_matmul(x, self)
    }
}

/// `x: [..., d_in]` → `x · W` `[..., d_out]` for the quantized `W`, as one 2-D product
/// over the leading dimensions at the process's matmul precision. Under autodiff only
/// `x` gets a gradient, and `W` is dequantized again in the backward pass (the graph
/// keeps the packed codes, not `W`).
pub fn quantized_matmul<B: FusedBackend, const D: usize>(
    x: Tensor<B, D>,
    q: &QuantizedWeight<B>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let d_in = dims[D - 1];
    assert_eq!(
        d_in, q.spec.d_in,
        "quantized_matmul: input width {d_in}, weight [{}, {}]",
        q.spec.d_in, q.spec.d_out
    );
    let rows = dims[..D - 1].iter().product();
    let y = quant::quantized_matmul(
        x.reshape([rows, d_in]),
        q.codes.val(),
        q.scales.val(),
        q.spec,
    );
    dims[D - 1] = q.spec.d_out;
    y.reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;

    type B = Flex;

    fn weight(d_in: usize, d_out: usize) -> (Vec<f32>, Tensor<B, 2>) {
        let v: Vec<f32> = (0..d_in * d_out)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let t = Tensor::from_data(
            TensorData::new(v.clone(), [d_in, d_out]),
            &Default::default(),
        );
        (v, t)
    }

    /// Written out here: unpack code `r % per_word` of word `(r / per_word, o)`, look it up
    /// (bitsandbytes' NF4 table or `(code - 128)/127`), times the block's absmax.
    #[test]
    fn dequantize_matches_a_table_lookup_times_absmax() {
        let nf4: [f64; 16] = [
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
        let (d_in, d_out) = (72, 5);
        for (format, block, bits) in [(QuantFormat::Nf4, 64, 4), (QuantFormat::Int8, 32, 8)] {
            let (_, w) = weight(d_in, d_out);
            let q = QuantizedWeight::quantize(w, format, block).unwrap();
            assert_eq!(
                q.codes.dims(),
                [d_in.div_ceil(block) * block * bits / 32, d_out]
            );
            let codes: Vec<i32> = q.codes.val().into_data().to_vec().unwrap();
            let scales: Vec<f32> = q.scales.val().into_data().to_vec().unwrap();
            let got: Vec<f32> = q.dequantize().into_data().to_vec().unwrap();
            let per_word = 32 / bits;
            for r in 0..d_in {
                for o in 0..d_out {
                    let word = codes[r / per_word * d_out + o] as u32;
                    let code = (word >> (r % per_word * bits)) & ((1 << bits) - 1);
                    let level = match format {
                        QuantFormat::Nf4 => nf4[code as usize] as f32,
                        QuantFormat::Int8 => (code as f32 - 128.0) / 127.0,
                    };
                    let want = level * scales[r / block * d_out + o];
                    assert_eq!(got[r * d_out + o], want, "{format:?} ({r}, {o})");
                }
            }
        }
    }

    /// Any rank, and the same on an autodiff backend and its inner module.
    #[test]
    fn the_product_is_x_times_the_dequantized_weight_at_any_rank() {
        let (d_in, d_out) = (40, 6);
        let (_, w) = weight(d_in, d_out);
        let q = QuantizedWeight::quantize(w, QuantFormat::Nf4, 8).unwrap();
        let x = Tensor::<B, 3>::from_data(
            TensorData::new(
                (0..2 * 3 * d_in).map(|i| (i % 7) as f32 - 3.0).collect(),
                [2, 3, d_in],
            ),
            &Default::default(),
        );
        let want: Vec<f32> = x
            .clone()
            .reshape([6, d_in])
            .matmul(q.dequantize())
            .into_data()
            .to_vec()
            .unwrap();
        let got = q.matmul(x.clone());
        assert_eq!(got.dims(), [2, 3, d_out]);
        let got: Vec<f32> = got.into_data().to_vec().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
        }
        let on_autodiff = QuantizedWeight::<Autodiff<B>>::from_inner(q.clone());
        let again: Vec<f32> = on_autodiff
            .matmul(Tensor::from_inner(x))
            .inner()
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(again, got);
        assert_eq!(
            on_autodiff.valid().dequantize().into_data(),
            q.dequantize().into_data()
        );
    }

    #[test]
    fn block_sizes_the_format_cannot_pack_are_refused() {
        let (_, w) = weight(16, 2);
        assert!(QuantizedWeight::quantize(w.clone(), QuantFormat::Nf4, 12).is_err());
        assert!(QuantizedWeight::quantize(w, QuantFormat::Int8, 12).is_ok());
    }
}
