//! Rotary position embeddings (RoPE): both layouts, partial rotation and the scaling
//! rules of long-context checkpoints.
//!
//! - Layouts: [`RopeLayout::RotateHalf`] pairs `x[i]` with `x[i + r/2]` (Hugging Face
//!   Llama/Mistral/Qwen checkpoints, GPT-NeoX); [`RopeLayout::Interleaved`] pairs
//!   `x[2i]` with `x[2i+1]` (Meta's original Llama code, GPT-J, burn's `RotaryEncoding`).
//! - Partial rotation: only the first `rotary_dim` features of each head are rotated
//!   (GPT-NeoX, Phi); the rest pass through.
//! - Frequencies `inv_freq[i] = theta^(-2i/rotary_dim)`, changed by [`RopeScaling`]:
//!   linear position interpolation, dynamic NTK, Llama 3.1 and YaRN, following the
//!   definitions Hugging Face transformers uses (`modeling_rope_utils`).

use std::f64::consts::PI;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// Which features are rotated together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeLayout {
    /// `(x[i], x[i + r/2])`.
    #[default]
    RotateHalf,
    /// `(x[2i], x[2i+1])`.
    Interleaved,
}

/// How the rotary frequencies are stretched for contexts beyond the training length.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RopeScaling {
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Dynamic NTK: past `original_max_seq` positions, theta grows to
    /// `theta · (factor · len / original_max_seq - (factor - 1))^(r / (r - 2))` for the
    /// current length `len`.
    DynamicNtk {
        factor: f64,
        original_max_seq: usize,
    },
    /// Llama 3.1: wavelengths above `original_max_seq / low_freq_factor` are divided by
    /// `factor`, below `original_max_seq / high_freq_factor` kept, and blended between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_seq: usize,
    },
    /// YaRN: interpolation blended with extrapolation by a linear ramp over the
    /// dimensions between `beta_fast` and `beta_slow` rotations, and cos/sin multiplied
    /// by `attention_factor` (default `0.1 ln(factor) + 1`).
    Yarn {
        factor: f64,
        original_max_seq: usize,
        #[serde(default = "default_beta_fast")]
        beta_fast: f64,
        #[serde(default = "default_beta_slow")]
        beta_slow: f64,
        #[serde(default)]
        attention_factor: Option<f64>,
    },
}

fn default_beta_fast() -> f64 {
    32.0
}
fn default_beta_slow() -> f64 {
    1.0
}

impl RopeScaling {
    /// Checks the values; the message names the offending key.
    pub fn check(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be positive, got {v}"))
            }
        };
        let original = |n: usize| {
            if n == 0 {
                Err("original_max_seq must be at least 1".to_string())
            } else {
                Ok(())
            }
        };
        match *self {
            RopeScaling::Linear { factor } => positive("factor", factor),
            RopeScaling::DynamicNtk {
                factor,
                original_max_seq,
            } => positive("factor", factor).and(original(original_max_seq)),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_seq,
            } => {
                positive("factor", factor)?;
                positive("low_freq_factor", low_freq_factor)?;
                positive("high_freq_factor", high_freq_factor)?;
                original(original_max_seq)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "high_freq_factor ({high_freq_factor}) must exceed low_freq_factor ({low_freq_factor})"
                    ));
                }
                Ok(())
            }
            RopeScaling::Yarn {
                factor,
                original_max_seq,
                beta_fast,
                beta_slow,
                attention_factor,
            } => {
                positive("factor", factor)?;
                original(original_max_seq)?;
                positive("beta_fast", beta_fast)?;
                positive("beta_slow", beta_slow)?;
                if let Some(a) = attention_factor {
                    positive("attention_factor", a)?;
                }
                Ok(())
            }
        }
    }
}

/// Everything that defines a rotary embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    pub head_dim: usize,
    /// Rotated features per head (even, `<= head_dim`).
    pub rotary_dim: usize,
    pub theta: f64,
    pub layout: RopeLayout,
    pub scaling: Option<RopeScaling>,
}

impl RopeConfig {
    /// Full rotation in the rotate-half layout without scaling.
    pub fn new(head_dim: usize, theta: f64) -> Self {
        Self {
            head_dim,
            rotary_dim: head_dim,
            theta,
            layout: RopeLayout::RotateHalf,
            scaling: None,
        }
    }

    /// The frequencies for a sequence of `len` positions (only dynamic NTK depends on
    /// it), and the factor cos and sin are multiplied by (YaRN's attention factor, else 1).
    pub fn inv_freq(&self, len: usize) -> (Vec<f64>, f64) {
        let r = self.rotary_dim as f64;
        let base = |theta: f64| -> Vec<f64> {
            (0..self.rotary_dim / 2)
                .map(|i| theta.powf(-2.0 * i as f64 / r))
                .collect()
        };
        match self.scaling {
            None => (base(self.theta), 1.0),
            Some(RopeScaling::Linear { factor }) => {
                (base(self.theta).iter().map(|f| f / factor).collect(), 1.0)
            }
            Some(RopeScaling::DynamicNtk {
                factor,
                original_max_seq,
            }) => {
                let orig = original_max_seq as f64;
                let len = len.max(original_max_seq) as f64;
                let theta = self.theta * (factor * len / orig - (factor - 1.0)).powf(r / (r - 2.0));
                (base(theta), 1.0)
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_seq,
            }) => {
                let orig = original_max_seq as f64;
                let (low_wavelen, high_wavelen) = (orig / low_freq_factor, orig / high_freq_factor);
                let freqs = base(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (orig / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (freqs, 1.0)
            }
            Some(RopeScaling::Yarn {
                factor,
                original_max_seq,
                beta_fast,
                beta_slow,
                attention_factor,
            }) => {
                let attention_factor = attention_factor.unwrap_or(if factor <= 1.0 {
                    1.0
                } else {
                    0.1 * factor.ln() + 1.0
                });
                // The dimension whose wavelength makes `rotations` turns over the
                // original context.
                let dim_of = |rotations: f64| {
                    r * (original_max_seq as f64 / (rotations * 2.0 * PI)).ln()
                        / (2.0 * self.theta.ln())
                };
                let low = dim_of(beta_fast).floor().max(0.0);
                let high = dim_of(beta_slow).ceil().min(r - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                let freqs = base(self.theta)
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        f / factor * (1.0 - extrapolation) + f * extrapolation
                    })
                    .collect();
                (freqs, attention_factor)
            }
        }
    }

    /// Checks the values; the message names the offending key.
    pub fn check(&self) -> Result<(), String> {
        if !self.rotary_dim.is_multiple_of(2) || self.rotary_dim == 0 {
            return Err(format!(
                "RoPE rotates feature pairs: the rotary dimension must be even and positive, got {}",
                self.rotary_dim
            ));
        }
        if self.rotary_dim > self.head_dim {
            return Err(format!(
                "rotary dimension {} exceeds the head dimension {}",
                self.rotary_dim, self.head_dim
            ));
        }
        if !(self.theta > 0.0 && self.theta.is_finite()) {
            return Err(format!("rope_theta must be positive, got {}", self.theta));
        }
        self.scaling.as_ref().map_or(Ok(()), RopeScaling::check)
    }
}

/// Precomputed `cos`/`sin` tables, each `[max_seq, rotary_dim]`, laid out to match the
/// features they multiply.
#[derive(Module, Debug)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    #[module(skip)]
    config: RopeConfig,
}

/// `cos`/`sin` rows (`rotary_dim` values each) for `positions` in the layout's order,
/// angles computed in f64, for a sequence of `len` positions (only dynamic NTK depends on
/// it). The tables [`RopeTables`] holds, computed on the host.
pub fn table_rows(
    config: &RopeConfig,
    positions: std::ops::Range<usize>,
    len: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (inv_freq, mscale) = config.inv_freq(len);
    let r = config.rotary_dim;
    let n = positions.len() * r;
    let (mut cos, mut sin) = (vec![0f32; n], vec![0f32; n]);
    for (i, pos) in positions.enumerate() {
        let rows = i * r..(i + 1) * r;
        table_row_into(
            config.layout,
            &inv_freq,
            mscale,
            pos,
            &mut cos[rows.clone()],
            &mut sin[rows],
        );
    }
    (cos, sin)
}

/// Writes position `pos`'s `cos`/`sin` row (`2 · inv_freq.len()` values each, in
/// `layout`'s order) for the frequencies and factor [`RopeConfig::inv_freq`] returns,
/// without allocating.
pub fn table_row_into(
    layout: RopeLayout,
    inv_freq: &[f64],
    mscale: f64,
    pos: usize,
    cos: &mut [f32],
    sin: &mut [f32],
) {
    let half = inv_freq.len();
    for (i, f) in inv_freq.iter().enumerate() {
        let (s, c) = (pos as f64 * f).sin_cos();
        let (c, s) = ((c * mscale) as f32, (s * mscale) as f32);
        let (a, b) = match layout {
            RopeLayout::RotateHalf => (i, i + half),
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
        };
        cos[a] = c;
        cos[b] = c;
        sin[a] = s;
        sin[b] = s;
    }
}

impl<B: Backend> RopeTables<B> {
    /// Full rotate-half tables for positions `0..max_seq` with `theta^(-2i/head_dim)`.
    pub fn new(head_dim: usize, max_seq: usize, theta: f64, device: &B::Device) -> Self {
        Self::with_config(RopeConfig::new(head_dim, theta), max_seq, device)
    }

    /// Tables for positions `0..max_seq`.
    ///
    /// # Panics
    /// If [`RopeConfig::check`] fails; model configs are validated before this.
    pub fn with_config(config: RopeConfig, max_seq: usize, device: &B::Device) -> Self {
        if let Err(e) = config.check() {
            panic!("RoPE: {e}");
        }
        // Dynamic NTK's static tables hold the unscaled frequencies of the original
        // context; `apply` recomputes rows for longer sequences.
        let (cos, sin) = table_rows(&config, 0..max_seq, 0);
        let shape = [max_seq, config.rotary_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            config,
        }
    }

    /// Number of positions the tables cover.
    pub fn max_seq(&self) -> usize {
        self.cos.dims()[0]
    }

    /// The configuration the tables were built from.
    pub fn config(&self) -> RopeConfig {
        self.config
    }

    /// Rotates `x`: `[batch, heads, seq, head_dim]` whose first row is position `start`.
    pub fn apply(&self, x: Tensor<B, 4>, start: usize) -> Tensor<B, 4> {
        self.rotate(x, start, 2)
    }

    /// Rotates `x`: `[batch, seq, heads, head_dim]` (the layout of a projection's output
    /// before the heads are moved forward, where every operand is contiguous) whose first
    /// row is position `start`.
    pub fn apply_seq_major(&self, x: Tensor<B, 4>, start: usize) -> Tensor<B, 4>
    where
        B: crate::FusedBackend,
    {
        let (cos, sin) = self.rows(start, x.dims()[1], &x.device());
        crate::fused::rope(x, cos, sin, self.config.layout == RopeLayout::Interleaved)
    }

    /// Rotates `x`: `[1, seq, heads, head_dim]` (sequence-major, one row) whose tokens sit
    /// at `positions` (`seq` of them, each below [`Self::max_seq`]): packed documents,
    /// each restarting at 0. The tables' rows are gathered; dynamic NTK's rescaling for
    /// lengths past its original context does not apply.
    pub fn apply_seq_major_at(&self, x: Tensor<B, 4>, positions: &[usize]) -> Tensor<B, 4>
    where
        B: crate::FusedBackend,
    {
        let device = x.device();
        let ids: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let index = Tensor::<B, 1, burn::tensor::Int>::from_data(
            TensorData::new(ids, [positions.len()]),
            &device,
        );
        let cos = self.cos.clone().select(0, index.clone());
        let sin = self.sin.clone().select(0, index);
        crate::fused::rope(x, cos, sin, self.config.layout == RopeLayout::Interleaved)
    }

    /// The `cos`, `sin` rows `[seq, rotary_dim]` for positions `start..start + seq`.
    fn rows(&self, start: usize, seq: usize, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let config = self.config();
        match config.scaling {
            // Dynamic NTK's frequencies depend on the current length.
            Some(RopeScaling::DynamicNtk {
                original_max_seq, ..
            }) if start + seq > original_max_seq => {
                let (cos, sin) = table_rows(&config, start..start + seq, start + seq);
                let t = |v: Vec<f32>| {
                    Tensor::<B, 2>::from_data(TensorData::new(v, [seq, config.rotary_dim]), device)
                };
                (t(cos), t(sin))
            }
            _ => (
                self.cos.clone().narrow(0, start, seq),
                self.sin.clone().narrow(0, start, seq),
            ),
        }
    }

    /// Rotates `x` whose dimension `seq_dim` (1 or 2) is the sequence.
    fn rotate(&self, x: Tensor<B, 4>, start: usize, seq_dim: usize) -> Tensor<B, 4> {
        let [d0, d1, d2, head_dim] = x.dims();
        let seq = x.dims()[seq_dim];
        let config = self.config();
        let r = config.rotary_dim;
        let (cos, sin) = match config.scaling {
            // Dynamic NTK's frequencies depend on the current length.
            Some(RopeScaling::DynamicNtk {
                original_max_seq, ..
            }) if start + seq > original_max_seq => {
                let (cos, sin) = table_rows(&config, start..start + seq, start + seq);
                let device = x.device();
                let t =
                    |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [seq, r]), &device);
                (t(cos), t(sin))
            }
            _ => (
                self.cos.clone().narrow(0, start, seq),
                self.sin.clone().narrow(0, start, seq),
            ),
        };
        let table_shape = if seq_dim == 1 {
            [1, seq, 1, r]
        } else {
            [1, 1, seq, r]
        };
        let (cos, sin) = (cos.reshape(table_shape), sin.reshape(table_shape));
        let (rot, pass) = if r == head_dim {
            (x, None)
        } else {
            (
                x.clone().narrow(3, 0, r),
                Some(x.narrow(3, r, head_dim - r)),
            )
        };
        let rotated = match config.layout {
            RopeLayout::RotateHalf => {
                let x1 = rot.clone().narrow(3, 0, r / 2);
                let x2 = rot.clone().narrow(3, r / 2, r / 2);
                Tensor::cat(vec![x2.neg(), x1], 3)
            }
            RopeLayout::Interleaved => {
                let pairs = rot.clone().reshape([d0, d1, d2, r / 2, 2]);
                let even = pairs.clone().narrow(4, 0, 1);
                let odd = pairs.narrow(4, 1, 1);
                Tensor::cat(vec![odd.neg(), even], 4).reshape([d0, d1, d2, r])
            }
        };
        let out = rot * cos + rotated * sin;
        match pass {
            Some(pass) => Tensor::cat(vec![out, pass], 3),
            None => out,
        }
    }
}
