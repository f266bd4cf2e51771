//! Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): a small residual MLP
//! `h + up(act(down(h)))` on a sub-layer's output, before the block's residual add.
//!
//! - Houlsby: one after the attention branch and one after the feed-forward branch of
//!   every layer.
//! - Pfeiffer: after the feed-forward branch only.
//!
//! `down` is `[d_model, d_model / reduction_factor]` (Kaiming-uniform, as `nn.Linear`),
//! `up` starts at zero, so training starts from the base model. They ride on the model's
//! [`ForwardHooks`]: [`BottleneckAdapters::hooks`] gives the hooks for one forward pass.
//!
//! `peft` has no format for them; Ember writes `adapter_config.json` with
//! `"peft_type": "EMBER_BOTTLENECK"` and `adapter_model.safetensors` with
//! `layers.{i}.{attention,ffn}.{down,down_bias,up,up_bias}` (see `docs/peft.md`).

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, relu, silu, tanh};
use burn::tensor::backend::Backend;
use ember_nn::{ForwardHooks, TransformerConfig};
use serde::{Deserialize, Serialize};

use crate::targets::PeftError;

/// Where the adapters go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// After attention and after the feed-forward branch.
    Houlsby,
    /// After the feed-forward branch only.
    Pfeiffer,
}

/// The adapter MLP's non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonLinearity {
    Relu,
    Gelu,
    Silu,
    Tanh,
}

/// A bottleneck-adapter configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BottleneckConfig {
    pub placement: Placement,
    /// `d_model / reduction_factor` hidden units.
    pub reduction_factor: usize,
    pub non_linearity: NonLinearity,
}

impl BottleneckConfig {
    /// The hidden width for `d_model`; `Err` names `peft.reduction_factor`.
    pub fn hidden(&self, d_model: usize) -> Result<usize, PeftError> {
        if self.reduction_factor == 0 || self.reduction_factor > d_model {
            return Err(PeftError(format!(
                "peft.reduction_factor = {}: expected 1 to d_model ({d_model})",
                self.reduction_factor
            )));
        }
        Ok(d_model / self.reduction_factor)
    }
}

/// One adapter: `h + up(act(h·down + down_bias)) + up_bias`.
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    /// `[d_model, hidden]`
    pub down: Param<Tensor<B, 2>>,
    /// `[hidden]`
    pub down_bias: Param<Tensor<B, 1>>,
    /// `[hidden, d_model]`
    pub up: Param<Tensor<B, 2>>,
    /// `[d_model]`
    pub up_bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Bottleneck<B> {
    fn new(d_model: usize, hidden: usize, device: &B::Device) -> Self {
        let bound = 1.0 / (d_model as f64).sqrt();
        let uniform = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        Self {
            down: uniform.init([d_model, hidden], device),
            down_bias: uniform.init([hidden], device),
            up: Initializer::Zeros.init([hidden, d_model], device),
            up_bias: Initializer::Zeros.init([d_model], device),
        }
    }

    /// `h`: `[batch, seq, d_model]`.
    pub fn forward(&self, h: Tensor<B, 3>, act: NonLinearity) -> Tensor<B, 3> {
        let [batch, seq, d] = h.dims();
        let rows = h.clone().reshape([batch * seq, d]);
        let inner = rows.matmul(self.down.val()) + self.down_bias.val().unsqueeze::<2>();
        let inner = match act {
            NonLinearity::Relu => relu(inner),
            NonLinearity::Gelu => gelu(inner),
            NonLinearity::Silu => silu(inner),
            NonLinearity::Tanh => tanh(inner),
        };
        let out = inner.matmul(self.up.val()) + self.up_bias.val().unsqueeze::<2>();
        h + out.reshape([batch, seq, d])
    }
}

/// A layer's adapters.
#[derive(Module, Debug)]
pub struct BottleneckLayer<B: Backend> {
    /// Houlsby only.
    pub attention: Option<Bottleneck<B>>,
    pub ffn: Bottleneck<B>,
}

/// Every layer's bottleneck adapters.
#[derive(Module, Debug)]
pub struct BottleneckAdapters<B: Backend> {
    pub layers: Vec<BottleneckLayer<B>>,
    #[module(skip)]
    pub config: BottleneckConfig,
}

impl<B: Backend> BottleneckAdapters<B> {
    /// Fresh adapters for `model`'s layers (`up` at zero: the model is unchanged).
    pub fn new(
        model: &TransformerConfig,
        config: &BottleneckConfig,
        device: &B::Device,
    ) -> Result<Self, PeftError> {
        let hidden = config.hidden(model.d_model)?;
        let layers = (0..model.n_layers)
            .map(|_| BottleneckLayer {
                attention: (config.placement == Placement::Houlsby)
                    .then(|| Bottleneck::new(model.d_model, hidden, device)),
                ffn: Bottleneck::new(model.d_model, hidden, device),
            })
            .collect();
        Ok(Self {
            layers,
            config: config.clone(),
        })
    }

    /// Parameters, as a trainable count.
    pub fn num_params(&self) -> usize {
        ember_nn::param_infos::<B, _>(self)
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// The hooks that apply these adapters in one forward pass.
    pub fn hooks(&self) -> BottleneckHooks<'_, B> {
        BottleneckHooks { adapters: self }
    }
}

/// [`ForwardHooks`] applying [`BottleneckAdapters`].
pub struct BottleneckHooks<'a, B: Backend> {
    adapters: &'a BottleneckAdapters<B>,
}

impl<B: Backend> ForwardHooks<B> for BottleneckHooks<'_, B> {
    fn attention_output(&mut self, layer: usize, out: Tensor<B, 3>) -> Tensor<B, 3> {
        match self
            .adapters
            .layers
            .get(layer)
            .and_then(|l| l.attention.as_ref())
        {
            Some(adapter) => adapter.forward(out, self.adapters.config.non_linearity),
            None => out,
        }
    }

    fn ffn_output(&mut self, layer: usize, out: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.adapters.layers.get(layer) {
            Some(l) => l.ffn.forward(out, self.adapters.config.non_linearity),
            None => out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;
    use ember_nn::{ForwardOptions, Transformer};

    type A = Autodiff<Flex>;

    fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
        t.into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// A bottleneck with every part non-zero, values from a fixed formula.
    fn filled<B: Backend>(d: usize, hidden: usize, device: &B::Device) -> Bottleneck<B> {
        let t = |n: usize, k: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7 + k * 13) % 17) as f32 - 8.0) * 0.05)
                .collect()
        };
        Bottleneck {
            down: Param::from_tensor(Tensor::from_data(
                TensorData::new(t(d * hidden, 1), [d, hidden]),
                device,
            )),
            down_bias: Param::from_tensor(Tensor::from_data(
                TensorData::new(t(hidden, 2), [hidden]),
                device,
            )),
            up: Param::from_tensor(Tensor::from_data(
                TensorData::new(t(hidden * d, 3), [hidden, d]),
                device,
            )),
            up_bias: Param::from_tensor(Tensor::from_data(TensorData::new(t(d, 4), [d]), device)),
        }
    }

    /// `h + up(act(h·down + b1)) + b2`, in f64 loops.
    fn naive(h: &[f64], b: &[Vec<f64>; 4], d: usize, hidden: usize, act: NonLinearity) -> Vec<f64> {
        let [down, b1, up, b2] = b;
        let f = |x: f64| match act {
            NonLinearity::Relu => x.max(0.0),
            NonLinearity::Gelu => 0.5 * x * (1.0 + libm_erf(x / std::f64::consts::SQRT_2)),
            NonLinearity::Silu => x / (1.0 + (-x).exp()),
            NonLinearity::Tanh => x.tanh(),
        };
        let rows = h.len() / d;
        let mut out = h.to_vec();
        for r in 0..rows {
            let inner: Vec<f64> = (0..hidden)
                .map(|j| {
                    f((0..d)
                        .map(|i| h[r * d + i] * down[i * hidden + j])
                        .sum::<f64>()
                        + b1[j])
                })
                .collect();
            for i in 0..d {
                out[r * d + i] +=
                    (0..hidden).map(|j| inner[j] * up[j * d + i]).sum::<f64>() + b2[i];
            }
        }
        out
    }

    /// erf by Abramowitz–Stegun 7.1.26 is too coarse for 1e-5; integrate instead.
    fn libm_erf(x: f64) -> f64 {
        let n = 2000;
        let h = x / n as f64;
        let g = |t: f64| (-t * t).exp();
        let mut sum = g(0.0) + g(x);
        for k in 1..n {
            sum += g(k as f64 * h) * if k % 2 == 1 { 4.0 } else { 2.0 };
        }
        sum * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn forward_matches_a_host_computation() {
        let device = Default::default();
        let (d, hidden) = (6, 3);
        let adapter = filled::<Flex>(d, hidden, &device);
        let parts = [
            values(adapter.down.val()),
            values(adapter.down_bias.val()),
            values(adapter.up.val()),
            values(adapter.up_bias.val()),
        ];
        let h: Vec<f32> = (0..2 * 3 * d)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let input = Tensor::<Flex, 3>::from_data(TensorData::new(h.clone(), [2, 3, d]), &device);
        let h64: Vec<f64> = h.iter().map(|&x| f64::from(x)).collect();
        for act in [
            NonLinearity::Relu,
            NonLinearity::Gelu,
            NonLinearity::Silu,
            NonLinearity::Tanh,
        ] {
            let got = values(adapter.forward(input.clone(), act));
            let want = naive(&h64, &parts, d, hidden, act);
            let diff = got
                .iter()
                .zip(&want)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-5, "{act:?}: {diff}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let device = Default::default();
        let (d, hidden) = (5, 2);
        let adapter = filled::<A>(d, hidden, &device);
        let h: Vec<f32> = (0..3 * d)
            .map(|i| ((i * 3 % 7) as f32 - 3.0) * 0.4)
            .collect();
        let weights: Vec<f32> = (0..3 * d)
            .map(|i| ((i * 11 % 5) as f32 - 2.0) * 0.5)
            .collect();
        let loss = |a: &Bottleneck<A>| {
            let x = Tensor::<A, 3>::from_data(TensorData::new(h.clone(), [1, 3, d]), &device);
            let w = Tensor::<A, 3>::from_data(TensorData::new(weights.clone(), [1, 3, d]), &device);
            (a.forward(x, NonLinearity::Tanh) * w).sum()
        };
        let grads = loss(&adapter).backward();
        let analytic = [
            values(adapter.down.grad(&grads).unwrap()),
            values(adapter.up.grad(&grads).unwrap()),
        ];
        let eps = 1e-2f32;
        for (which, grad) in analytic.iter().enumerate() {
            for i in [0usize, 3, 7] {
                let nudged = |delta: f32| {
                    let mut a = filled::<A>(d, hidden, &device);
                    let target = if which == 0 { &mut a.down } else { &mut a.up };
                    let shape = target.dims();
                    let mut v: Vec<f32> = target.val().into_data().to_vec().unwrap();
                    v[i] += delta;
                    *target =
                        Param::from_tensor(Tensor::from_data(TensorData::new(v, shape), &device));
                    f64::from(loss(&a).into_scalar())
                };
                let fd = (nudged(eps) - nudged(-eps)) / (2.0 * f64::from(eps));
                assert!(
                    (fd - grad[i]).abs() < 2e-3,
                    "part {which} [{i}]: {fd} vs {}",
                    grad[i]
                );
            }
        }
    }

    #[test]
    fn placements_hook_the_right_branches_and_start_as_the_identity() {
        let device = Default::default();
        let config = TransformerConfig::llama(13, 8, 2, 2, 1, 12, 8);
        let model = Transformer::<Flex>::new(&config, &device).unwrap();
        let tokens = || {
            Tensor::<Flex, 2, burn::tensor::Int>::from_data(
                TensorData::new(vec![1i64, 5, 7, 2], [1, 4]),
                &device,
            )
        };
        let plain = values(model.forward(tokens(), ForwardOptions::default()));
        let settings = |placement| BottleneckConfig {
            placement,
            reduction_factor: 4,
            non_linearity: NonLinearity::Relu,
        };
        let houlsby =
            BottleneckAdapters::<Flex>::new(&config, &settings(Placement::Houlsby), &device)
                .unwrap();
        let pfeiffer =
            BottleneckAdapters::<Flex>::new(&config, &settings(Placement::Pfeiffer), &device)
                .unwrap();
        // Two adapters of 8·2 + 2 + 2·8 + 8 per layer for Houlsby, one for Pfeiffer.
        assert_eq!(houlsby.num_params(), 2 * 2 * 42);
        assert_eq!(pfeiffer.num_params(), 2 * 42);
        let with = |adapters: &BottleneckAdapters<Flex>| {
            let mut hooks = adapters.hooks();
            values(model.forward(
                tokens(),
                ForwardOptions {
                    hooks: Some(&mut hooks),
                    ..Default::default()
                },
            ))
        };
        assert_eq!(with(&houlsby), plain, "up = 0: the base model");
        // A non-zero attention adapter changes Houlsby's output, not Pfeiffer's layout.
        let mut changed =
            BottleneckAdapters::<Flex>::new(&config, &settings(Placement::Houlsby), &device)
                .unwrap();
        changed.layers[1].attention = Some(filled(8, 2, &device));
        assert_ne!(with(&changed), plain);
        let mut ffn_only =
            BottleneckAdapters::<Flex>::new(&config, &settings(Placement::Pfeiffer), &device)
                .unwrap();
        ffn_only.layers[0].ffn = filled(8, 2, &device);
        assert_ne!(with(&ffn_only), plain);
    }
}
