//! Block-quantized weights: the packed codes and scales against a reference written out
//! here (bitsandbytes' NF4 table, `round(127·w/absmax)`), the dequantized values of the
//! Flex kernel, the composed body and autodiff against the same reference bit for bit,
//! the quantization error bounds, and the product's values and input gradient against
//! `x · dequantize()` and central finite differences.

use burn::backend::{Autodiff, Flex};
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};
use burn_autodiff::ops::Backward;
use ember_ops::fused::autodiff::QuantizedMatmulBackward;
use ember_ops::fused::{FusedBackend, MatmulPrecision, composed};
use ember_ops::quant::{self, QuantFormat, QuantSpec, quantize_host};

type B = Flex;
type AD = Autodiff<Flex>;

/// bitsandbytes' `get_4bit_type("nf4")` as it prints it, copied independently of the
/// crate's table (each value an f32).
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
const NF4: [f32; 16] = {
    let mut levels = [0f32; 16];
    let mut i = 0;
    while i < 16 {
        levels[i] = NF4_PUBLISHED[i] as f32;
        i += 1;
    }
    levels
};

/// SplitMix64 normals (Box–Muller) with a few large outliers, so blocks differ in scale.
fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let (u, v) = (next().max(1e-12), next());
            let g = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            let outlier = if i % 97 == 5 { 8.0 } else { 1.0 };
            (0.05 * g * outlier) as f32
        })
        .collect()
}

/// `(format, block_size, d_in, d_out)`: whole blocks, a short last block, small blocks.
const CASES: [(QuantFormat, usize, usize, usize); 6] = [
    (QuantFormat::Nf4, 64, 128, 24),
    (QuantFormat::Nf4, 64, 100, 7),
    (QuantFormat::Nf4, 8, 37, 5),
    (QuantFormat::Int8, 64, 128, 24),
    (QuantFormat::Int8, 64, 100, 7),
    (QuantFormat::Int8, 4, 37, 5),
];

/// The reference: code `j` of word `(w, o)` is bits `j·bits…` of the word; the value is
/// the NF4 level (or `(code - 128) / 127`) times the block's absmax.
fn reference(codes: &[i32], scales: &[f32], spec: &QuantSpec) -> Vec<f32> {
    let (d_in, d_out) = (spec.d_in, spec.d_out);
    let (bits, per_word) = match spec.format {
        QuantFormat::Nf4 => (4, 8),
        QuantFormat::Int8 => (8, 4),
    };
    let mut w = vec![0f32; d_in * d_out];
    for r in 0..d_in {
        for o in 0..d_out {
            let word = codes[(r / per_word) * d_out + o] as u32;
            let code = (word >> ((r % per_word) * bits)) & ((1 << bits) - 1);
            let absmax = scales[(r / spec.block_size) * d_out + o];
            let level = match spec.format {
                QuantFormat::Nf4 => NF4[code as usize],
                QuantFormat::Int8 => (code as i32 - 128) as f32 / 127.0,
            };
            w[r * d_out + o] = level * absmax;
        }
    }
    w
}

fn int_tensor<Bk: FusedBackend>(codes: &[i32], shape: [usize; 2]) -> Tensor<Bk, 2, Int> {
    Tensor::from_data(TensorData::new(codes.to_vec(), shape), &Default::default())
}

fn float_tensor<Bk: FusedBackend>(v: &[f32], shape: [usize; 2]) -> Tensor<Bk, 2> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

fn to_vec<Bk: FusedBackend>(t: Tensor<Bk, 2>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

/// The quantized form of the case's weights: `(weights, codes, scales)` and the tensors.
struct Quantized {
    spec: QuantSpec,
    w: Vec<f32>,
    codes: Vec<i32>,
    scales: Vec<f32>,
}

impl Quantized {
    fn new((format, block, d_in, d_out): (QuantFormat, usize, usize, usize), seed: u64) -> Self {
        let spec = QuantSpec::new(format, block, d_in, d_out).unwrap();
        let w = weights(d_in * d_out, seed);
        let (codes, scales) = quantize_host(&w, &spec);
        Self {
            spec,
            w,
            codes,
            scales,
        }
    }

    fn codes<Bk: FusedBackend>(&self) -> Tensor<Bk, 2, Int> {
        int_tensor(&self.codes, [self.spec.words(), self.spec.d_out])
    }

    fn scales<Bk: FusedBackend>(&self) -> Tensor<Bk, 2> {
        float_tensor(&self.scales, [self.spec.n_blocks(), self.spec.d_out])
    }
}

#[test]
fn the_quantizer_stores_block_absmax_and_the_nearest_code() {
    for (case, seed) in CASES.into_iter().zip(1..) {
        let q = Quantized::new(case, seed);
        let QuantSpec {
            block_size,
            d_in,
            d_out,
            ..
        } = q.spec;
        let per_word = if q.spec.format == QuantFormat::Nf4 {
            8
        } else {
            4
        };
        assert_eq!(
            q.codes.len(),
            d_in.div_ceil(block_size) * block_size / per_word * d_out
        );
        let dequantized = reference(&q.codes, &q.scales, &q.spec);
        for r in 0..d_in {
            for o in 0..d_out {
                let block = r / block_size;
                let absmax = (block * block_size..((block + 1) * block_size).min(d_in))
                    .map(|i| q.w[i * d_out + o].abs())
                    .fold(0f32, f32::max);
                assert_eq!(
                    q.scales[block * d_out + o],
                    absmax,
                    "{case:?} scale ({block}, {o})"
                );
                let x = q.w[r * d_out + o] / absmax;
                let got = dequantized[r * d_out + o] / absmax;
                match q.spec.format {
                    // No other level is nearer than the chosen one.
                    QuantFormat::Nf4 => {
                        let nearest = NF4.iter().fold(f32::INFINITY, |m, l| m.min((x - l).abs()));
                        assert!(
                            (x - got).abs() <= nearest + 1e-6,
                            "{case:?} ({r}, {o}): {x} coded as {got}, a level {nearest} away exists"
                        );
                    }
                    QuantFormat::Int8 => {
                        let want = (x * 127.0).round() / 127.0;
                        assert!(
                            (got - want).abs() <= 1e-6,
                            "{case:?} ({r}, {o}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn dequantized_values_equal_the_reference_on_every_path() {
    for (case, seed) in CASES.into_iter().zip(10..) {
        let q = Quantized::new(case, seed);
        let want = reference(&q.codes, &q.scales, &q.spec);
        let flex = to_vec(quant::dequantize::<B>(q.codes(), q.scales(), q.spec));
        let composed = to_vec(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(
            composed::dequantize::<B>(
                q.codes::<B>().into_primitive(),
                q.scales::<B>().into_primitive().tensor(),
                q.spec,
            ),
        )));
        let autodiff = to_vec(quant::dequantize::<AD>(q.codes(), q.scales(), q.spec));
        for (path, got) in [
            ("flex", flex),
            ("composed", composed),
            ("autodiff", autodiff),
        ] {
            assert_eq!(got.len(), want.len(), "{case:?} {path}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{case:?} {path}[{i}]: {g} vs {w}");
            }
        }
    }
}

#[test]
fn quantization_errors_stay_within_half_a_step() {
    let max_gap = NF4.windows(2).map(|p| p[1] - p[0]).fold(0f32, f32::max);
    for (case, seed) in CASES.into_iter().zip(20..) {
        let q = Quantized::new(case, seed);
        let got = to_vec(quant::dequantize::<B>(q.codes(), q.scales(), q.spec));
        let (block_size, d_out) = (q.spec.block_size, q.spec.d_out);
        let mut worst = 0f32;
        for (i, (g, w)) in got.iter().zip(&q.w).enumerate() {
            let absmax = q.scales[(i / d_out / block_size) * d_out + i % d_out];
            let bound = match q.spec.format {
                QuantFormat::Nf4 => max_gap / 2.0 * absmax,
                QuantFormat::Int8 => absmax / 254.0,
            };
            // The bound plus the f32 rounding of one division and one product.
            let err = (g - w).abs();
            assert!(
                err <= bound * (1.0 + 1e-5),
                "{case:?}[{i}]: error {err} > {bound}"
            );
            worst = worst.max(err / bound);
        }
        // The bound is nearly reached: the test can tell a coarser quantizer.
        assert!(
            worst > 0.5,
            "{case:?}: worst error only {worst} of the bound"
        );
    }
}

fn input<Bk: FusedBackend>(rows: usize, d_in: usize, seed: u64) -> Tensor<Bk, 2> {
    float_tensor(&weights(rows * d_in, seed), [rows, d_in]).mul_scalar(10.0)
}

#[test]
fn the_product_and_its_input_gradient_match_the_dequantized_weight() {
    let rows = 5;
    for (case, seed) in CASES.into_iter().zip(30..) {
        let q = Quantized::new(case, seed);
        let QuantSpec { d_in, d_out, .. } = q.spec;
        let x = input::<B>(rows, d_in, seed + 100);
        let r = float_tensor::<B>(&weights(rows * d_out, seed + 200), [rows, d_out]);
        let w = quant::dequantize::<B>(q.codes(), q.scales(), q.spec);

        // Values: Flex and autodiff against `x · W` with the dequantized weight.
        let want = to_vec(x.clone().matmul(w.clone()));
        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let flex = to_vec(quant::quantized_matmul::<B>(
            x.clone(),
            q.codes(),
            q.scales(),
            q.spec,
        ));
        let xa = Tensor::<AD, 2>::from_inner(x.clone()).require_grad();
        let ya = quant::quantized_matmul::<AD>(xa.clone(), q.codes(), q.scales(), q.spec);
        for (g, w) in flex
            .iter()
            .chain(&to_vec(ya.clone().inner()))
            .zip(want.iter().cycle())
        {
            assert!((g - w).abs() <= 1e-5 * scale, "{case:?}: {g} vs {w}");
        }

        // The input gradient of Σ y⊙r: against the plain product's and `r · Wᵀ`.
        let grads = (ya * Tensor::from_inner(r.clone())).sum().backward();
        let dx = to_vec(xa.grad(&grads).unwrap());
        let xp = Tensor::<AD, 2>::from_inner(x.clone()).require_grad();
        let plain = (xp.clone().matmul(Tensor::from_inner(w.clone()))
            * Tensor::from_inner(r.clone()))
        .sum()
        .backward();
        let dx_plain = to_vec(xp.grad(&plain).unwrap());
        let dscale = dx_plain.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (g, p) in dx.iter().zip(&dx_plain) {
            assert!(
                (g - p).abs() <= 1e-5 * dscale,
                "{case:?}: dx {g} vs plain {p}"
            );
        }

        // Central differences of the loss in a few entries of x (f64 sums of f32 outputs).
        let xs = to_vec(x.clone());
        let loss = |v: Vec<f32>| -> f64 {
            let y = to_vec(quant::quantized_matmul::<B>(
                float_tensor(&v, [rows, d_in]),
                q.codes(),
                q.scales(),
                q.spec,
            ));
            let r = to_vec(r.clone());
            y.iter()
                .zip(&r)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum()
        };
        for index in [0, xs.len() / 2, xs.len() - 1] {
            let h = 1e-2f32;
            let at = |d: f32| {
                let mut v = xs.clone();
                v[index] += d;
                loss(v)
            };
            let numeric = ((at(h) - at(-h)) / (2.0 * f64::from(h))) as f32;
            assert!(
                (numeric - dx[index]).abs() <= 1e-3 * (1.0 + numeric.abs()),
                "{case:?} dx[{index}]: autodiff {} vs finite difference {numeric}",
                dx[index]
            );
        }
    }
}

#[test]
fn the_codes_and_scales_get_no_gradient() {
    let q = Quantized::new(CASES[0], 40);
    let scales = q.scales::<AD>().require_grad();
    let x = input::<AD>(3, q.spec.d_in, 41).require_grad();
    let grads = quant::quantized_matmul::<AD>(x.clone(), q.codes(), scales.clone(), q.spec)
        .sum()
        .backward();
    assert!(x.grad(&grads).is_some());
    assert!(scales.grad(&grads).is_none(), "the scales are frozen");
}

/// What the backward node keeps is, by type, the packed codes and the scales (plus the
/// layout and precision): there is no slot for a dequantized weight. (That nothing larger
/// stays alive is measured in `tests/quant_memory.rs`.)
#[test]
fn the_backward_state_is_the_codes_not_the_weight() {
    fn state<Bk: FusedBackend>(
        s: <QuantizedMatmulBackward as Backward<Bk, 1>>::State,
    ) -> (IntTensor<Bk>, FloatTensor<Bk>, QuantSpec, MatmulPrecision) {
        s
    }
    let q = Quantized::new(CASES[0], 50);
    let (codes, scales, spec, _) = state::<B>((
        q.codes::<B>().into_primitive(),
        q.scales::<B>().into_primitive().tensor(),
        q.spec,
        MatmulPrecision::F32,
    ));
    let w: Tensor<B, 2> = Tensor::from_primitive(TensorPrimitive::Float(B::fused_dequantize(
        codes, scales, spec,
    )));
    assert_eq!(to_vec(w), reference(&q.codes, &q.scales, &q.spec));
}

/// At bf16 precision (passed to the backend op directly, so the process-wide setting of
/// the other tests is untouched) the product and its input gradient are the bf16
/// matmul's with the dequantized weight, bit for bit.
#[test]
fn at_bf16_precision_the_product_is_the_bf16_matmul_of_the_dequantized_weight() {
    use ember_ops::fused::matmul_bf16;
    let q = Quantized::new(CASES[1], 60);
    let QuantSpec { d_in, d_out, .. } = q.spec;
    let x = input::<B>(6, d_in, 61);
    let r = float_tensor::<B>(&weights(6 * d_out, 62), [6, d_out]);
    let w = quant::dequantize::<B>(q.codes(), q.scales(), q.spec);

    let xa = Tensor::<AD, 2>::from_inner(x.clone()).require_grad();
    let y: Tensor<AD, 2> =
        Tensor::from_primitive(TensorPrimitive::Float(AD::fused_quantized_matmul(
            xa.clone().into_primitive().tensor(),
            q.codes::<AD>().into_primitive(),
            q.scales::<AD>().into_primitive().tensor(),
            q.spec,
            MatmulPrecision::Bf16,
        )));
    let grads = (y.clone() * Tensor::from_inner(r.clone())).sum().backward();

    let f32_product = to_vec(x.clone().matmul(w.clone()));
    let xp = Tensor::<AD, 2>::from_inner(x).require_grad();
    let y_plain = matmul_bf16(xp.clone(), Tensor::from_inner(w));
    let plain = (y_plain.clone() * Tensor::from_inner(r)).sum().backward();

    let y = to_vec(y.inner());
    assert_ne!(y, f32_product, "bf16 rounding shows in the product");
    assert_eq!(y, to_vec(y_plain.inner()));
    assert_eq!(
        to_vec(xa.grad(&grads).unwrap()),
        to_vec(xp.grad(&plain).unwrap())
    );
}
