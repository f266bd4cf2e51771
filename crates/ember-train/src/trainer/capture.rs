//! `train.capture`: per-module statistics of activations and gradients, logged in
//! `metrics.jsonl` every `train.capture_every` steps.

use std::collections::{BTreeMap, HashMap};

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use ember_data::Batch;
use ember_nn::{ActivationCapture, ForwardOptions, FusedBackend, ParamInfo, Transformer};

use super::evaluate::{batch_tensors, packing_of};
use crate::config::{ConfigError, LoopConfig};
use crate::metrics::CapturedModule;

/// The capture settings of a run, with each parameter's captured module.
pub(crate) struct Capture {
    patterns: Vec<String>,
    every: usize,
    modules: HashMap<ParamId, String>,
}

struct GradNorms<'a> {
    grads: &'a GradientsParams,
    modules: &'a HashMap<ParamId, String>,
    squares: BTreeMap<String, f64>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradNorms<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(module) = self.modules.get(&param.id) else {
            return;
        };
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let square = grad.square().sum().into_scalar().elem::<f64>();
            *self.squares.entry(module.clone()).or_insert(0.0) += square;
        }
    }
}

impl Capture {
    /// `None` without `train.capture`; globs that match no module are errors naming the
    /// key.
    pub(crate) fn new(
        t: &LoopConfig,
        n_layers: usize,
        params: &[ParamInfo],
    ) -> Result<Option<Self>, ConfigError> {
        if t.capture.is_empty() {
            return Ok(None);
        }
        let names: Vec<String> = (0..n_layers)
            .flat_map(|i| {
                [
                    format!("layers.{i}.attn"),
                    format!("layers.{i}.mlp"),
                    format!("layers.{i}"),
                ]
            })
            .collect();
        for pattern in &t.capture {
            if !names.iter().any(|n| ember_nn::matches_pattern(pattern, n)) {
                return Err(ConfigError(format!(
                    "train.capture: `{pattern}` matches no module (names are layers.N.attn, layers.N.mlp and layers.N, N < {n_layers})"
                )));
            }
        }
        let modules = params
            .iter()
            .filter_map(|p| Some((p.id, ember_nn::captured_module(&p.path, &t.capture)?)))
            .collect();
        Ok(Some(Self {
            patterns: t.capture.clone(),
            every: if t.capture_every > 0 {
                t.capture_every
            } else {
                t.log_every.max(1)
            },
            modules,
        }))
    }

    /// The globs of the captured modules.
    pub(crate) fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether the step that ends with `done` steps completed is captured.
    pub(crate) fn due(&self, done: usize) -> bool {
        done.is_multiple_of(self.every)
    }

    /// The L2 norm of the gradients of each captured module's parameters.
    pub(crate) fn grad_norms<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        model: &M,
        grads: &GradientsParams,
    ) -> BTreeMap<String, f64> {
        let mut visitor = GradNorms {
            grads,
            modules: &self.modules,
            squares: BTreeMap::new(),
        };
        model.visit(&mut visitor);
        visitor
            .squares
            .into_iter()
            .map(|(name, square)| (name, square.sqrt()))
            .collect()
    }

    /// The captured modules' activation statistics on `batch` (a forward pass without
    /// gradients), with `grad_norms` beside them.
    pub(crate) fn record<B: FusedBackend>(
        &self,
        model: &Transformer<B>,
        batch: &Batch,
        grad_norms: &BTreeMap<String, f64>,
        activation_grads: &BTreeMap<String, (f64, f64)>,
        device: &B::Device,
    ) -> BTreeMap<String, CapturedModule> {
        let mut capture = ActivationCapture::<B>::new(&self.patterns, false);
        let (inputs, _) = batch_tensors::<B>(batch, device);
        let (mask, positions) = packing_of(batch);
        model.forward(
            inputs,
            ForwardOptions {
                documents: mask.as_ref(),
                positions,
                hooks: Some(&mut capture),
                ..Default::default()
            },
        );
        capture
            .stats
            .into_iter()
            .map(|(name, stats)| {
                let grad_norm = grad_norms.get(&name).copied();
                let activation_grad = activation_grads.get(&name);
                let module = CapturedModule {
                    stats,
                    grad_norm,
                    activation_grad_rms: activation_grad.map(|g| g.0),
                    activation_grad_max_abs: activation_grad.map(|g| g.1),
                };
                (name, module)
            })
            .collect()
    }
}
