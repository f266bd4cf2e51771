//! Activation capture by module name: a [`ForwardHooks`] that records statistics (and,
//! when asked, the tensors) of the sub-layer outputs whose names match a glob, without
//! changing the model's code for each new probe.
//!
//! Names: `layers.N.attn` (the attention branch's output, before the residual add),
//! `layers.N.mlp` (the feed-forward branch's, MoE included) and `layers.N` (the block's
//! output). Globs use `*` for any run of characters ([`crate::matches_pattern`]).

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorPrimitive};
use ember_ops::fused::{FusedBackend, GradientSink};
use serde::{Deserialize, Serialize};

use crate::context::ForwardHooks;
use crate::params::matches_pattern;

/// What one captured activation `[batch, seq, d]` looked like.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActivationStats {
    /// `√mean(x²)`.
    pub rms: f64,
    /// `max |x|`.
    pub max_abs: f64,
    /// Share of the `d` features that are 0 (|x| ≤ 1e-6) at every position: dead units.
    pub dead_fraction: f64,
}

impl ActivationStats {
    /// The statistics of `x`, `[batch, seq, d]`.
    pub fn of<B: Backend>(x: &Tensor<B, 3>) -> Self {
        let [batch, seq, d] = x.dims();
        let x = x.clone().detach();
        let rms = x.clone().square().mean().sqrt().into_scalar().elem::<f64>();
        let abs = x.abs();
        let max_abs = abs.clone().max().into_scalar().elem::<f64>();
        let per_feature = abs.reshape([batch * seq, d]).max_dim(0);
        let dead = per_feature
            .lower_equal_elem(1e-6)
            .int()
            .sum()
            .into_scalar()
            .elem::<f64>();
        Self {
            rms,
            max_abs,
            dead_fraction: dead / d.max(1) as f64,
        }
    }
}

/// Records the outputs whose names match one of its globs (see the module docs).
pub struct ActivationCapture<B: Backend> {
    patterns: Vec<String>,
    keep_tensors: bool,
    /// Per captured name, the statistics of its last output.
    pub stats: BTreeMap<String, ActivationStats>,
    /// Per captured name, its last output (when capturing tensors).
    pub tensors: BTreeMap<String, Tensor<B, 3>>,
}

impl<B: Backend> ActivationCapture<B> {
    /// Statistics of the outputs matching `patterns`; with `keep_tensors`, the tensors
    /// too.
    pub fn new(patterns: &[String], keep_tensors: bool) -> Self {
        Self {
            patterns: patterns.to_vec(),
            keep_tensors,
            stats: BTreeMap::new(),
            tensors: BTreeMap::new(),
        }
    }

    /// Whether the output named `name` is captured.
    pub fn captures(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| matches_pattern(p, name))
    }

    fn record(&mut self, name: String, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.captures(&name) {
            self.stats.insert(name.clone(), ActivationStats::of(&x));
            if self.keep_tensors {
                self.tensors.insert(name, x.clone());
            }
        }
        x
    }
}

impl<B: Backend> ForwardHooks<B> for ActivationCapture<B> {
    fn attention_output(&mut self, layer: usize, out: Tensor<B, 3>) -> Tensor<B, 3> {
        self.record(format!("layers.{layer}.attn"), out)
    }

    fn ffn_output(&mut self, layer: usize, out: Tensor<B, 3>) -> Tensor<B, 3> {
        self.record(format!("layers.{layer}.mlp"), out)
    }

    fn block_output(&mut self, layer: usize, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.record(format!("layers.{layer}"), x)
    }
}

/// Per captured name, `(rms, max |·|)` of the gradient that reached its output.
pub type GradientStats = std::sync::Arc<std::sync::Mutex<BTreeMap<String, (f64, f64)>>>;

/// The backward side of a capture: passes the outputs matching its globs through
/// [`FusedBackend::observe_gradient`], so the backward pass records the RMS and max |·|
/// of the gradient with respect to each (on an autodiff backend; elsewhere nothing).
pub struct GradientCapture {
    patterns: Vec<String>,
    /// Filled during the backward pass.
    pub stats: GradientStats,
}

impl GradientCapture {
    pub fn new(patterns: &[String]) -> Self {
        Self {
            patterns: patterns.to_vec(),
            stats: GradientStats::default(),
        }
    }

    fn observe<B: FusedBackend>(&mut self, name: String, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if !self.patterns.iter().any(|p| matches_pattern(p, &name)) {
            return x;
        }
        let stats = self.stats.clone();
        let sink = GradientSink(std::sync::Arc::new(move |rms, max_abs| {
            if let Ok(mut stats) = stats.lock() {
                stats.insert(name.clone(), (rms, max_abs));
            }
        }));
        Tensor::from_primitive(TensorPrimitive::Float(B::observe_gradient(
            x.into_primitive().tensor(),
            sink,
        )))
    }
}

impl<B: FusedBackend> ForwardHooks<B> for GradientCapture {
    fn attention_output(&mut self, layer: usize, out: Tensor<B, 3>) -> Tensor<B, 3> {
        self.observe(format!("layers.{layer}.attn"), out)
    }

    fn ffn_output(&mut self, layer: usize, out: Tensor<B, 3>) -> Tensor<B, 3> {
        self.observe(format!("layers.{layer}.mlp"), out)
    }

    fn block_output(&mut self, layer: usize, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.observe(format!("layers.{layer}"), x)
    }
}

/// The captured module a parameter at `path` belongs to, among `n_layers` layers'
/// `layers.N.attn`, `layers.N.mlp` (MoE experts too) and `layers.N`, the most specific
/// that `patterns` capture.
pub fn captured_module(path: &str, patterns: &[String]) -> Option<String> {
    let rest = path.strip_prefix("layers.")?;
    let (layer, inner) = rest.split_once('.')?;
    let branch = match inner.split('.').next()? {
        "attn" => Some("attn"),
        "mlp" | "moe" => Some("mlp"),
        _ => None,
    };
    let captured = |name: &str| patterns.iter().any(|p| matches_pattern(p, name));
    branch
        .map(|b| format!("layers.{layer}.{b}"))
        .filter(|name| captured(name))
        .or_else(|| Some(format!("layers.{layer}")).filter(|name| captured(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    #[test]
    fn the_gradient_reaching_an_output_is_recorded() {
        // Through `block_output`, `x` reaches `loss = Σ w ⊙ x`: its gradient is `w`.
        let device = Default::default();
        let w: Vec<f32> = vec![0.5, -3.0, 1.0, 2.0, 0.0, -1.0];
        let x = Tensor::<Autodiff<Flex>, 3>::from_data(
            TensorData::new(vec![1.0f32; 6], [1, 2, 3]),
            &device,
        )
        .require_grad();
        let mut capture = GradientCapture::new(&["layers.*".to_string()]);
        let y = ForwardHooks::block_output(&mut capture, 2, x.clone());
        let weights = Tensor::from_data(TensorData::new(w.clone(), [1, 2, 3]), &device);
        let grads = (y * weights).sum().backward();
        let (rms, max_abs) = capture.stats.lock().unwrap()["layers.2"];
        let want = (w.iter().map(|v| (v * v) as f64).sum::<f64>() / 6.0).sqrt();
        assert!((rms - want).abs() < 1e-6, "{rms} vs {want}");
        assert_eq!(max_abs, 3.0);
        // The gradient itself passes on unchanged.
        let dx: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        assert_eq!(dx, w);
    }

    #[test]
    fn statistics_are_the_written_out_ones() {
        // [1, 2, 3]: the last feature is zero everywhere (dead).
        let values = vec![3.0f32, -1.0, 0.0, -4.0, 2.0, 0.0];
        let x = Tensor::<Flex, 3>::from_data(
            TensorData::new(values.clone(), [1, 2, 3]),
            &Default::default(),
        );
        let s = ActivationStats::of(&x);
        let rms = (values.iter().map(|v| (v * v) as f64).sum::<f64>() / 6.0).sqrt();
        assert!((s.rms - rms).abs() < 1e-6);
        assert_eq!(s.max_abs, 4.0);
        assert!((s.dead_fraction - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn parameters_belong_to_the_captured_modules() {
        let mlp = vec!["layers.*.mlp".to_string()];
        assert_eq!(
            captured_module("layers.3.mlp.up_proj.weight", &mlp).as_deref(),
            Some("layers.3.mlp")
        );
        assert_eq!(captured_module("layers.3.attn.q_proj.weight", &mlp), None);
        let blocks = vec!["layers.1".to_string()];
        assert_eq!(
            captured_module("layers.1.attn_norm.gamma", &blocks).as_deref(),
            Some("layers.1")
        );
        assert_eq!(captured_module("tok_embeddings.weight", &blocks), None);
    }
}
