//! [`Projection`]: the one module every linear map of the model is (attention's
//! `q/k/v/o_proj`, the MLP's `gate/up/down_proj`, the MoE router and experts, the LM
//! head), so an adapter or a quantized weight plugs into all of them at once.
//!
//! Products go through [`ember_ops::fused::matmul`], so the process's matmul precision
//! ([`ember_ops::fused::set_matmul_precision`]) reaches every projection (but the MoE
//! router, which multiplies through [`Projection::forward_rows_with`] at the model's own
//! dtype: it chooses experts). Without an
//! adapter and at `f32` precision this is exactly `burn::nn::Linear::forward`, and the
//! parameter paths are the same (`….weight`, `….bias`): checkpoints and Hugging Face
//! names do not change.
//!
//! The two slots:
//! - **the weight's form**: `weight` may hold one of burn's quantized tensors
//!   (`Tensor::quantize_dynamic`, burn's `Quantizer`); the product then reads it through
//!   burn's quantized ops, and nothing else in the model changes. Or the frozen weight is
//!   a block-quantized [`QuantizedWeight`] (QLoRA's NF4, or int8) in `quantized`
//!   ([`Projection::quantize`]): `weight` is then an empty `[0, 0]` placeholder (the f32
//!   weight is not kept), products go through [`crate::quantized::quantized_matmul`]
//!   (dequantized on the fly, forward and backward), and [`Projection::base_weight`]
//!   gives the dequantized weight where it is needed whole (DoRA's norms, merging).
//!   Unquantized projections have `quantized: None` and no parameters under it, so
//!   their paths, checkpoints and Hugging Face names are unchanged;
//! - **an [`Adapter`]**: trainable tensors around the frozen weight, in one general form
//!   that LoRA, AdaLoRA, IA³ (and QLoRA on a quantized weight) are settings of. Which
//!   method set them, how they were initialised and how they are named on disk belong to
//!   the fine-tuning crate; this module only knows the arithmetic.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ember_ops::FusedBackend;
use ember_ops::quant::QuantFormat;

use crate::quantized::{QuantizedWeight, quantized_matmul};

/// `y = x · weight + bias`, changed by the [`Adapter`] when one is attached.
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    /// `[d_in, d_out]` (burn's `Linear` layout; Hugging Face stores the transpose); an
    /// empty `[0, 0]` placeholder when the weight is `quantized`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Trainable tensors around the weight (parameter-efficient fine-tuning).
    pub adapter: Option<Adapter<B>>,
    /// The frozen weight, block-quantized (QLoRA); `weight` is then a placeholder.
    pub quantized: Option<QuantizedWeight<B>>,
}

/// A matrix product `a · b` of two 2-D tensors.
type Matmul<B> = fn(Tensor<B, 2>, Tensor<B, 2>) -> Tensor<B, 2>;

/// Trainable tensors around a frozen [`Projection`]; every part is optional:
///
/// `y = ((s_in ⊙ x) · W + b + scaling · ((drop(s_in ⊙ x) · down) ⊙ e) · up) ⊙ s_out`
///
/// - LoRA: `down` `[d_in, r]` (peft's `lora_A` transposed), `up` `[r, d_out]`
///   (`lora_B` transposed), `scaling = alpha / r`, `drop` the LoRA dropout;
/// - AdaLoRA: the same with `e` = `rank_scale` `[r]` (the singular values);
/// - IA³: `output_scale` `s_out` `[d_out]` (keys, values) or `input_scale` `s_in`
///   `[d_in]` (the feed-forward output projection);
/// - DoRA: LoRA plus a `magnitude` `m` `[d_out]`, which rescales each output feature of
///   the adapted weight `W' = W + scaling·down·up` to length `m`, with the norm treated as
///   a constant in the backward pass (as `peft` and the DoRA paper, §4.3, do):
///   `y = x·W + b + (m/‖W'‖ - 1)⊙(drop(x)·W) + (m/‖W'‖)⊙(scaling·drop(x)·down·up)`,
///   which without dropout is `b + (m/‖W'‖)⊙(x·W')` (‖·‖ over each column of `W'`).
#[derive(Module, Debug)]
pub struct Adapter<B: Backend> {
    /// `[d_in, rank]`
    pub down: Option<Param<Tensor<B, 2>>>,
    /// `[rank, d_out]`
    pub up: Option<Param<Tensor<B, 2>>>,
    /// `[rank]`, multiplies the rank components (AdaLoRA).
    pub rank_scale: Option<Param<Tensor<B, 1>>>,
    /// `[d_in]`, multiplies the input of the whole projection.
    pub input_scale: Option<Param<Tensor<B, 1>>>,
    /// `[d_out]`, multiplies the output of the whole projection.
    pub output_scale: Option<Param<Tensor<B, 1>>>,
    /// `[d_out]`, DoRA's magnitude of each output feature's weight column.
    pub magnitude: Option<Param<Tensor<B, 1>>>,
    /// Multiplies the low-rank term.
    pub scaling: f64,
    /// Applied to the low-rank path's input only.
    pub dropout: Dropout,
}

impl<B: Backend> Adapter<B> {
    /// An adapter with no parts yet (scaling 1, no dropout): the identity change.
    pub fn empty() -> Self {
        Self {
            down: None,
            up: None,
            rank_scale: None,
            input_scale: None,
            output_scale: None,
            magnitude: None,
            scaling: 1.0,
            dropout: DropoutConfig::new(0.0).init(),
        }
    }
}

impl<B: Backend> Projection<B> {
    /// A projection from its weight `[d_in, d_out]` and bias `[d_out]`.
    pub fn new(weight: Param<Tensor<B, 2>>, bias: Option<Param<Tensor<B, 1>>>) -> Self {
        Self {
            weight,
            bias,
            adapter: None,
            quantized: None,
        }
    }

    /// `weight`'s initializer applied to `[d_in, d_out]` (fans `d_in`, `d_out`), and a
    /// zero bias when `bias`.
    pub fn init(
        initializer: &Initializer,
        d_in: usize,
        d_out: usize,
        bias: bool,
        device: &B::Device,
    ) -> Self {
        let weight = initializer.init_with([d_in, d_out], Some(d_in), Some(d_out), device);
        let bias = bias.then(|| Initializer::Zeros.init([d_out], device));
        Self::new(weight, bias)
    }

    /// `(d_in, d_out)` (of the quantized weight, when there is one).
    pub fn dims(&self) -> (usize, usize) {
        if let Some(q) = &self.quantized {
            return q.dims();
        }
        let [d_in, d_out] = self.weight.dims();
        (d_in, d_out)
    }

    /// Replaces the weight by its block-quantized form (blocks of `block_size` along
    /// `d_in`), frozen, and releases the f32 weight (`weight` becomes an empty `[0, 0]`
    /// placeholder with the same id). `Err` for a projection already quantized or a block
    /// size the format cannot pack.
    pub fn quantize(&mut self, format: QuantFormat, block_size: usize) -> Result<(), String> {
        if self.quantized.is_some() {
            return Err("the weight is already quantized".into());
        }
        let quantized = QuantizedWeight::quantize(self.weight.val(), format, block_size)?;
        let device = self.weight.device();
        // The f32 weight is released here (unless the caller holds another handle).
        self.weight = Param::initialized(self.weight.id, Tensor::zeros([0, 0], &device));
        self.quantized = Some(quantized);
        Ok(())
    }
}

impl<B: FusedBackend> Projection<B> {
    /// `x: [..., d_in]` → `[..., d_out]`, as one 2-D product over the leading dimensions.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut dims = x.dims();
        let d_in = dims[D - 1];
        let rows = dims[..D - 1].iter().product();
        let y = self.forward_rows(x.reshape([rows, d_in]));
        dims[D - 1] = y.dims()[1];
        y.reshape(dims)
    }

    /// `x: [rows, d_in]` → `[rows, d_out]`.
    pub fn forward_rows(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward_rows_impl(x, None)
    }

    /// [`Self::forward_rows`] with every product `a · b` computed by `matmul` (e.g.
    /// burn's own, at the model's dtype whatever the process's matmul precision). A
    /// quantized weight is then dequantized and multiplied by `matmul` too.
    pub fn forward_rows_with(&self, x: Tensor<B, 2>, matmul: Matmul<B>) -> Tensor<B, 2> {
        self.forward_rows_impl(x, Some(matmul))
    }

    /// The frozen weight `[d_in, d_out]`: `weight`, or the quantized one dequantized (a
    /// constant under autodiff).
    pub fn base_weight(&self) -> Tensor<B, 2> {
        match &self.quantized {
            Some(q) => q.dequantize(),
            None => self.weight.val(),
        }
    }

    /// `x · W` for the frozen weight: by `matmul` when given, else by the process's
    /// matmul ([`ember_ops::fused::matmul`]) or, for a quantized weight, the product that
    /// dequantizes on the fly in both passes.
    fn base_product(&self, x: Tensor<B, 2>, matmul: Option<Matmul<B>>) -> Tensor<B, 2> {
        match (&self.quantized, matmul) {
            (Some(q), None) => quantized_matmul(x, q),
            (Some(q), Some(matmul)) => matmul(x, q.dequantize()),
            (None, matmul) => matmul.unwrap_or(ember_ops::fused::matmul)(x, self.weight.val()),
        }
    }

    fn forward_rows_impl(&self, x: Tensor<B, 2>, custom: Option<Matmul<B>>) -> Tensor<B, 2> {
        let matmul = custom.unwrap_or(ember_ops::fused::matmul);
        let base = |x: Tensor<B, 2>| {
            let y = self.base_product(x, custom);
            match &self.bias {
                Some(bias) => {
                    let bias = ember_ops::fused::autocast::cast_like(bias.val(), &y);
                    y + bias.unsqueeze()
                }
                None => y,
            }
        };
        let Some(adapter) = &self.adapter else {
            return base(x);
        };
        let x = match &adapter.input_scale {
            Some(scale) => x * scale.val().unsqueeze(),
            None => x,
        };
        if let (Some(m), Some(down), Some(up)) = (&adapter.magnitude, &adapter.down, &adapter.up) {
            return self.dora(x, adapter, m, down, up, custom);
        }
        let mut y = base(x.clone());
        if let (Some(down), Some(up)) = (&adapter.down, &adapter.up) {
            let h = matmul(adapter.dropout.forward(x), down.val());
            let h = match &adapter.rank_scale {
                Some(e) => h * e.val().unsqueeze(),
                None => h,
            };
            y = y + matmul(h, up.val()).mul_scalar(adapter.scaling);
        }
        match &adapter.output_scale {
            Some(scale) => y * scale.val().unsqueeze(),
            None => y,
        }
    }

    /// DoRA (see [`Adapter`]): the low-rank update, each output column renormalised to
    /// the magnitude, the norm detached from the graph (a quantized weight is dequantized
    /// for the norm only).
    fn dora(
        &self,
        x: Tensor<B, 2>,
        adapter: &Adapter<B>,
        magnitude: &Param<Tensor<B, 1>>,
        down: &Param<Tensor<B, 2>>,
        up: &Param<Tensor<B, 2>>,
        custom: Option<Matmul<B>>,
    ) -> Tensor<B, 2> {
        let matmul = custom.unwrap_or(ember_ops::fused::matmul);
        let w = self.base_weight();
        let down_e = match &adapter.rank_scale {
            Some(e) => down.val() * e.val().unsqueeze(),
            None => down.val(),
        };
        let delta = down_e.clone().matmul(up.val()).mul_scalar(adapter.scaling);
        let norm = (w + delta).detach().powi_scalar(2).sum_dim(0).sqrt();
        let scale = magnitude.val().unsqueeze::<2>() / norm;
        let dropped = adapter.dropout.forward(x.clone());
        let xw_dropped = self.base_product(dropped.clone(), custom);
        let base = if adapter.dropout.prob == 0.0 {
            xw_dropped.clone()
        } else {
            self.base_product(x, custom)
        };
        let lora = matmul(matmul(dropped, down_e), up.val()).mul_scalar(adapter.scaling);
        let y = base + (scale.clone() - 1.0) * xw_dropped + scale * lora;
        match &self.bias {
            Some(bias) => y + bias.val().unsqueeze(),
            None => y,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn param1(v: Vec<f32>) -> Param<Tensor<B, 1>> {
        let n = v.len();
        Param::from_tensor(Tensor::from_data(
            TensorData::new(v, [n]),
            &Default::default(),
        ))
    }

    fn param2(v: Vec<f32>, shape: [usize; 2]) -> Param<Tensor<B, 2>> {
        Param::from_tensor(Tensor::from_data(
            TensorData::new(v, shape),
            &Default::default(),
        ))
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// `y[r][o] = Σ_i x[r][i] · w[i][o]`, written out.
    fn naive_matmul(x: &[f32], w: &[f32], rows: usize, d_in: usize, d_out: usize) -> Vec<f32> {
        let mut y = vec![0.0; rows * d_out];
        for r in 0..rows {
            for o in 0..d_out {
                y[r * d_out + o] = (0..d_in).map(|i| x[r * d_in + i] * w[i * d_out + o]).sum();
            }
        }
        y
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-4, "entry {i}: {g} vs {w}");
        }
    }

    #[test]
    fn without_an_adapter_it_is_x_times_weight_plus_bias() {
        let (rows, d_in, d_out) = (3, 5, 4);
        let (x, w, b) = (
            values(rows * d_in, 1),
            values(d_in * d_out, 2),
            values(d_out, 3),
        );
        let p = Projection::new(param2(w.clone(), [d_in, d_out]), Some(param1(b.clone())));
        let input = Tensor::<B, 2>::from_data(
            TensorData::new(x.clone(), [rows, d_in]),
            &Default::default(),
        );
        let got = p.forward(input).into_data().to_vec::<f32>().unwrap();
        let mut want = naive_matmul(&x, &w, rows, d_in, d_out);
        for r in 0..rows {
            for o in 0..d_out {
                want[r * d_out + o] += b[o];
            }
        }
        assert_close(&got, &want);
    }

    /// The adapter's formula against the merged weight it stands for:
    /// `W' = diag(s_in) (W + scaling · down diag(e) up)`, `y = (x W' + b) ⊙ s_out`.
    #[test]
    fn an_adapter_equals_its_merged_weight() {
        let (rows, d_in, d_out, rank) = (4, 6, 5, 2);
        let (x, w, b) = (
            values(rows * d_in, 4),
            values(d_in * d_out, 5),
            values(d_out, 6),
        );
        let (down, up) = (values(d_in * rank, 7), values(rank * d_out, 8));
        let (e, s_in, s_out) = (values(rank, 9), values(d_in, 10), values(d_out, 11));
        let scaling = 0.75;
        let mut p = Projection::new(param2(w.clone(), [d_in, d_out]), Some(param1(b.clone())));
        p.adapter = Some(Adapter {
            down: Some(param2(down.clone(), [d_in, rank])),
            up: Some(param2(up.clone(), [rank, d_out])),
            rank_scale: Some(param1(e.clone())),
            input_scale: Some(param1(s_in.clone())),
            output_scale: Some(param1(s_out.clone())),
            magnitude: None,
            scaling,
            dropout: DropoutConfig::new(0.0).init(),
        });
        let mut merged = w.clone();
        for i in 0..d_in {
            for o in 0..d_out {
                let delta: f32 = (0..rank)
                    .map(|k| down[i * rank + k] * e[k] * up[k * d_out + o])
                    .sum();
                merged[i * d_out + o] = s_in[i] * (w[i * d_out + o] + scaling as f32 * delta);
            }
        }
        let mut want = naive_matmul(&x, &merged, rows, d_in, d_out);
        for r in 0..rows {
            for o in 0..d_out {
                let y = &mut want[r * d_out + o];
                *y = (*y + b[o]) * s_out[o];
            }
        }
        let input =
            Tensor::<B, 2>::from_data(TensorData::new(x, [rows, d_in]), &Default::default());
        let got = p.forward(input).into_data().to_vec::<f32>().unwrap();
        assert_close(&got, &want);
    }

    /// DoRA without dropout: `y = b + (m / ‖W'‖) ⊙ (x · W')`, `W' = W + scaling·down·up`,
    /// the norm over each column of `W'`, written out.
    #[test]
    fn dora_rescales_each_column_of_the_adapted_weight_to_its_magnitude() {
        let (rows, d_in, d_out, rank) = (3, 5, 4, 2);
        let (x, w, b) = (
            values(rows * d_in, 20),
            values(d_in * d_out, 21),
            values(d_out, 22),
        );
        let (down, up, m) = (
            values(d_in * rank, 23),
            values(rank * d_out, 24),
            values(d_out, 25),
        );
        let scaling = 1.5;
        let mut p = Projection::new(param2(w.clone(), [d_in, d_out]), Some(param1(b.clone())));
        p.adapter = Some(Adapter {
            down: Some(param2(down.clone(), [d_in, rank])),
            up: Some(param2(up.clone(), [rank, d_out])),
            rank_scale: None,
            input_scale: None,
            output_scale: None,
            magnitude: Some(param1(m.clone())),
            scaling,
            dropout: DropoutConfig::new(0.0).init(),
        });
        let mut adapted = w.clone();
        for i in 0..d_in {
            for o in 0..d_out {
                let delta: f32 = (0..rank)
                    .map(|k| down[i * rank + k] * up[k * d_out + o])
                    .sum();
                adapted[i * d_out + o] += scaling as f32 * delta;
            }
        }
        for o in 0..d_out {
            let norm = (0..d_in)
                .map(|i| adapted[i * d_out + o].powi(2))
                .sum::<f32>()
                .sqrt();
            for i in 0..d_in {
                adapted[i * d_out + o] *= m[o] / norm;
            }
        }
        let mut want = naive_matmul(&x, &adapted, rows, d_in, d_out);
        for r in 0..rows {
            for o in 0..d_out {
                want[r * d_out + o] += b[o];
            }
        }
        let input =
            Tensor::<B, 2>::from_data(TensorData::new(x, [rows, d_in]), &Default::default());
        let got = p.forward(input).into_data().to_vec::<f32>().unwrap();
        assert_close(&got, &want);
    }

    /// A weight held in burn's quantized form is multiplied as its dequantized values.
    #[test]
    fn a_quantized_weight_multiplies_as_its_dequantized_values() {
        use burn::tensor::quantization::{QuantLevel, QuantScheme, QuantValue};
        let (rows, d_in, d_out) = (3, 32, 8);
        let (x, w) = (values(rows * d_in, 12), values(d_in * d_out, 13));
        let device = Default::default();
        let scheme = QuantScheme::default()
            .with_value(QuantValue::Q8S)
            .with_level(QuantLevel::block([32]));
        let quantized =
            Tensor::<B, 2>::from_data(TensorData::new(w.clone(), [d_in, d_out]), &device)
                .quantize_dynamic(&scheme);
        let dequantized = quantized
            .clone()
            .dequantize()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(
            dequantized.iter().zip(&w).any(|(q, w)| q != w),
            "the weight was not actually quantized"
        );
        let p = Projection::new(Param::from_tensor(quantized), None);
        let input = Tensor::<B, 2>::from_data(TensorData::new(x.clone(), [rows, d_in]), &device);
        let got = p.forward(input).into_data().to_vec::<f32>().unwrap();
        assert_close(&got, &naive_matmul(&x, &dequantized, rows, d_in, d_out));
    }
}
