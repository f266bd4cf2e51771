//! Rotary embeddings against closed-form values: both layouts, partial rotation, cached
//! offsets and each scaling rule; the interleaved layout also against burn's
//! `RotaryEncoding`; the sinusoidal table against its definition.

use std::f64::consts::PI;

use burn::backend::Flex;
use burn::nn::RotaryEncodingConfig;
use burn::tensor::{Distribution, Tensor, Tolerance};
use ember_ops::positions::sinusoidal_table;
use ember_ops::reference::naive_rope_with;
use ember_ops::{RopeConfig, RopeLayout, RopeScaling, RopeTables};

type B = Flex;

fn base_freqs(rotary_dim: usize, theta: f64) -> Vec<f64> {
    (0..rotary_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / rotary_dim as f64))
        .collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * y.abs().max(1e-30),
            "entry {i}: {x} vs {y}"
        );
    }
}

/// Applies `config` to random `[1, 2, seq, head_dim]` input at `start` and compares every
/// head with the f64 closed form from `inv_freq`/`mscale`.
fn check_apply(config: RopeConfig, max_seq: usize, start: usize, seq: usize) {
    let tables = RopeTables::<B>::with_config(config, max_seq, &Default::default());
    let x = Tensor::<B, 4>::random(
        [1, 2, seq, config.head_dim],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let got: Vec<f32> = tables.apply(x.clone(), start).into_data().to_vec().unwrap();
    let x: Vec<f32> = x.into_data().to_vec().unwrap();
    let (inv_freq, mscale) = config.inv_freq(start + seq);
    let per_head = seq * config.head_dim;
    for h in 0..2 {
        let slice = &x[h * per_head..(h + 1) * per_head];
        let want = naive_rope_with(
            slice,
            seq,
            config.head_dim,
            start,
            &inv_freq,
            mscale,
            config.layout == RopeLayout::Interleaved,
        );
        for (i, (g, w)) in got[h * per_head..(h + 1) * per_head]
            .iter()
            .zip(&want)
            .enumerate()
        {
            assert!(
                (g - w).abs() < 2e-5,
                "{config:?} start {start}: entry {i}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn both_layouts_partial_rotation_and_offsets_match_the_closed_form() {
    for layout in [RopeLayout::RotateHalf, RopeLayout::Interleaved] {
        for rotary_dim in [16, 8, 4] {
            let config = RopeConfig {
                head_dim: 16,
                rotary_dim,
                theta: 10_000.0,
                layout,
                scaling: None,
            };
            check_apply(config, 32, 0, 7);
            check_apply(config, 32, 9, 3);
            check_apply(config, 32, 20, 1);
        }
    }
}

#[test]
fn interleaved_layout_equals_burns_rotary_encoding() {
    let x = Tensor::<B, 4>::random(
        [2, 3, 10, 16],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let config = RopeConfig {
        layout: RopeLayout::Interleaved,
        ..RopeConfig::new(16, 10_000.0)
    };
    let ours = RopeTables::<B>::with_config(config, 32, &Default::default());
    let burns = RotaryEncodingConfig::new(32, 16).init::<B>(&Default::default());
    ours.apply(x.clone(), 4)
        .into_data()
        .assert_approx_eq::<f32>(&burns.apply(x, 4).into_data(), Tolerance::absolute(1e-5));
}

#[test]
fn linear_scaling_divides_every_frequency() {
    let config = RopeConfig {
        scaling: Some(RopeScaling::Linear { factor: 4.0 }),
        ..RopeConfig::new(32, 10_000.0)
    };
    let want: Vec<f64> = base_freqs(32, 10_000.0).iter().map(|f| f / 4.0).collect();
    close(&config.inv_freq(100).0, &want, 1e-12);
    check_apply(config, 64, 5, 6);
}

#[test]
fn dynamic_ntk_grows_theta_past_the_original_context() {
    let scaling = RopeScaling::DynamicNtk {
        factor: 2.0,
        original_max_seq: 16,
    };
    let config = RopeConfig {
        scaling: Some(scaling),
        ..RopeConfig::new(8, 10_000.0)
    };
    // Within the original context: unchanged.
    close(&config.inv_freq(16).0, &base_freqs(8, 10_000.0), 1e-12);
    // At 32 positions: theta' = 10000 · (2 · 32/16 − 1)^(8/6) = 10000 · 3^(4/3).
    let theta = 10_000.0 * 3f64.powf(4.0 / 3.0);
    close(&config.inv_freq(32).0, &base_freqs(8, theta), 1e-12);
    // Applying across the boundary uses the current length's frequencies.
    check_apply(config, 48, 28, 4);
    check_apply(config, 48, 3, 5);
}

#[test]
fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
    // Llama 3.1's published values.
    let (factor, low, high, orig) = (8.0, 1.0, 4.0, 8192usize);
    let config = RopeConfig {
        scaling: Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_seq: orig,
        }),
        ..RopeConfig::new(128, 500_000.0)
    };
    let got = config.inv_freq(0).0;
    let base = base_freqs(128, 500_000.0);
    for (i, (g, f)) in got.iter().zip(&base).enumerate() {
        let wavelen = 2.0 * PI / f;
        let want = if wavelen < orig as f64 / high {
            *f
        } else if wavelen > orig as f64 / low {
            f / factor
        } else {
            let smooth = (orig as f64 / wavelen - low) / (high - low);
            (1.0 - smooth) * f / factor + smooth * f
        };
        assert!((g - want).abs() <= 1e-12 * want, "dim {i}: {g} vs {want}");
    }
    // The first frequency is 1 (wavelength 2π, kept); the last is divided by 8.
    assert_eq!(got[0], 1.0);
    assert!((got[63] - base[63] / 8.0).abs() < 1e-18);
    // Some dimension falls in the blended band.
    assert!(
        got.iter()
            .zip(&base)
            .any(|(g, f)| *g < *f && *g > f / factor)
    );
    check_apply(config, 16, 3, 4);
}

#[test]
fn yarn_blends_interpolation_and_extrapolation_and_scales_attention() {
    let (factor, orig, dim, theta) = (4.0, 64usize, 32usize, 10_000.0f64);
    let config = RopeConfig {
        scaling: Some(RopeScaling::Yarn {
            factor,
            original_max_seq: orig,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
        }),
        ..RopeConfig::new(dim, theta)
    };
    let (got, mscale) = config.inv_freq(0);
    assert!((mscale - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
    // Dimension index i has wavelength 2π/inv_freq[i], completing orig/wavelength turns
    // over the original context; dims turning more than beta_fast times extrapolate
    // (keep the frequency), fewer than beta_slow interpolate (divide by factor).
    let base = base_freqs(dim, theta);
    for (i, (g, f)) in got.iter().zip(&base).enumerate() {
        let turns = orig as f64 * f / (2.0 * PI);
        if turns > 32.0 + 1e-9 {
            assert!(
                (g - f).abs() <= 1e-12 * f,
                "dim {i} ({turns} turns) should extrapolate"
            );
        }
        if turns < 1.0 - 1e-9 {
            assert!(
                (g - f / factor).abs() <= 1e-12 * f,
                "dim {i} ({turns} turns) should interpolate"
            );
        }
        assert!(*g <= f * (1.0 + 1e-12) && *g >= f / factor * (1.0 - 1e-12));
    }
    check_apply(config, 16, 2, 5);
}

#[test]
fn bad_rope_configs_are_reported() {
    let odd = RopeConfig {
        rotary_dim: 7,
        ..RopeConfig::new(8, 10_000.0)
    };
    assert!(odd.check().unwrap_err().contains("even"));
    let wide = RopeConfig {
        rotary_dim: 10,
        ..RopeConfig::new(8, 10_000.0)
    };
    assert!(wide.check().unwrap_err().contains("exceeds"));
    let llama3 = RopeConfig {
        scaling: Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 4.0,
            high_freq_factor: 1.0,
            original_max_seq: 8192,
        }),
        ..RopeConfig::new(8, 10_000.0)
    };
    assert!(llama3.check().unwrap_err().contains("high_freq_factor"));
}

#[test]
fn sinusoidal_table_matches_its_definition() {
    let t = sinusoidal_table(50, 6);
    assert_eq!(&t[0..6], &[0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
    for pos in [1usize, 7, 49] {
        let p = pos as f64;
        let want = [
            p.sin(),
            p.cos(),
            (p / 10_000f64.powf(2.0 / 6.0)).sin(),
            (p / 10_000f64.powf(2.0 / 6.0)).cos(),
            (p / 10_000f64.powf(4.0 / 6.0)).sin(),
            (p / 10_000f64.powf(4.0 / 6.0)).cos(),
        ];
        for (c, w) in want.iter().enumerate() {
            assert!((t[pos * 6 + c] as f64 - w).abs() < 1e-6);
        }
    }
}

#[test]
fn sequence_major_layout_rotates_like_the_head_major_one() {
    for layout in [RopeLayout::RotateHalf, RopeLayout::Interleaved] {
        let config = RopeConfig {
            rotary_dim: 8,
            layout,
            ..RopeConfig::new(12, 10_000.0)
        };
        let tables = RopeTables::<B>::with_config(config, 32, &Default::default());
        // [batch, seq, heads, head_dim]
        let x = Tensor::<B, 4>::random(
            [2, 5, 3, 12],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        );
        let seq_major = tables.apply_seq_major(x.clone(), 7).swap_dims(1, 2);
        let head_major = tables.apply(x.swap_dims(1, 2), 7);
        seq_major
            .into_data()
            .assert_approx_eq::<f32>(&head_major.into_data(), Tolerance::absolute(1e-6));
    }
}

/// YaRN inverse frequencies from `tools/fixtures/yarn_inv_freq.py` (an independent f64
/// transcription of transformers' `_compute_yarn_parameters`, `truncate = True`), run as
/// `python3 tools/fixtures/yarn_inv_freq.py --dim 64 --base 10000 --factor 16 --original-max 4096`.
/// Correction range low = 10, high = 23: indices 0..=10 extrapolate, 23..=31 interpolate,
/// 11..=22 are blended.
const YARN_64_F16_ORIG4096: [f64; 32] = [
    1.0,
    0.7498942093324559,
    0.5623413251903491,
    0.4216965034285823,
    0.31622776601683794,
    0.23713737056616555,
    0.17782794100389226,
    0.1333521432163324,
    0.1,
    0.07498942093324558,
    0.056234132519034905,
    0.039128569789286714, // 11: extrapolation weight 12/13
    0.027061799207210167,
    0.018583361251098544,
    0.012653141956046181,
    0.00852684377296741,
    0.005673076923076923, // 16: extrapolation weight 7/13
    0.0037134184404443733,
    0.002379136375805323,
    0.0014799925360714666,
    0.000881788962931567,
    0.0004902359103050537,
    0.00023938376673600877, // 22: extrapolation weight 1/13
    8.334508951020775e-05,
    6.25e-05,
    4.6868388083278484e-05,
    3.514633282439682e-05,
    2.6356031464286393e-05,
    1.976423537605237e-05,
    1.4821085660385346e-05,
    1.1114246312743267e-05,
    8.334508951020775e-06,
];

/// As above, run as
/// `python3 tools/fixtures/yarn_inv_freq.py --dim 64 --base 10000 --factor 8 --original-max 64`.
/// The beta_fast dimension is negative and clamps to low = 0; high = 9: index 0
/// extrapolates, 9..=31 interpolate, 1..=8 are blended.
const YARN_64_F8_ORIG64: [f64; 32] = [
    1.0,
    0.6769878278695782, // 1: extrapolation weight 8/9
    0.45299717862555894,
    0.29870168992857915,
    0.1932503014547343,
    0.12186225987427951,
    0.07409497541828845,
    0.042598601305217296,
    0.022222222222222227, // 8: extrapolation weight 1/9
    0.009373677616655697,
    0.007029266564879363,
    0.005271206292857278,
    0.003952847075210474,
    0.002964217132077069,
    0.0022228492625486537,
    0.001666901790204155,
    0.00125,
    0.0009373677616655698,
    0.0007029266564879364,
    0.0005271206292857279,
    0.00039528470752104737,
    0.00029642171320770687,
    0.00022228492625486537,
    0.0001666901790204155,
    0.000125,
    9.373677616655697e-05,
    7.029266564879364e-05,
    5.2712062928572786e-05,
    3.952847075210474e-05,
    2.9642171320770692e-05,
    2.2228492625486534e-05,
    1.666901790204155e-05,
];

/// Indices whose frequency lies strictly between pure interpolation (`f / factor`) and
/// pure extrapolation (`f`), with a margin far above rounding.
fn blended_indices(freqs: &[f64], base: &[f64], factor: f64) -> Vec<usize> {
    freqs
        .iter()
        .zip(base)
        .enumerate()
        .filter(|(_, (g, f))| **g < **f * (1.0 - 1e-9) && **g > **f / factor * (1.0 + 1e-9))
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn yarn_ramp_band_matches_transformers_formula() {
    let cases = [
        // (factor, original_max_seq, expected inv_freq, attention factor, blended band)
        (
            16.0,
            4096usize,
            &YARN_64_F16_ORIG4096,
            1.2772588722239782,
            11..23,
        ),
        (8.0, 64, &YARN_64_F8_ORIG64, 1.2079441541679836, 1..9),
    ];
    let base = base_freqs(64, 10_000.0);
    for (factor, orig, want, want_mscale, band) in cases {
        let config = RopeConfig {
            scaling: Some(RopeScaling::Yarn {
                factor,
                original_max_seq: orig,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attention_factor: None,
            }),
            ..RopeConfig::new(64, 10_000.0)
        };
        // The fixture itself covers the blend: every index of the band, and only those,
        // is neither pure interpolation nor pure extrapolation.
        let want_band = blended_indices(want, &base, factor);
        assert_eq!(
            want_band,
            band.clone().collect::<Vec<_>>(),
            "factor {factor}"
        );
        assert!(want_band.len() >= 3);

        let (got, mscale) = config.inv_freq(0);
        assert!(
            (mscale - want_mscale).abs() < 1e-15,
            "factor {factor}: attention factor {mscale} vs {want_mscale}"
        );
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            assert!(
                (g - w).abs() <= 1e-12 * w,
                "factor {factor}, original {orig}: inv_freq[{i}] = {g}, transformers' formula gives {w}"
            );
        }
        assert_eq!(blended_indices(&got, &base, factor), want_band);

        // The cos/sin tables carry the same frequencies, times the attention factor
        // (rotate-half layout: feature i and i + 32 share frequency i).
        for pos in [1usize, 37, 1000] {
            let (cos, sin) = ember_ops::rope::table_rows(&config, pos..pos + 1, 0);
            for (i, w) in want.iter().enumerate() {
                let angle = pos as f64 * w;
                let (c, s) = (angle.cos() * want_mscale, angle.sin() * want_mscale);
                for j in [i, i + 32] {
                    assert!(
                        (cos[j] as f64 - c).abs() < 1e-6 && (sin[j] as f64 - s).abs() < 1e-6,
                        "factor {factor}, position {pos}, feature {j}: ({}, {}) vs ({c}, {s})",
                        cos[j],
                        sin[j]
                    );
                }
            }
        }
    }
}
