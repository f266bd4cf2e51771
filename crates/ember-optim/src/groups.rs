//! AdamW with parameter groups: one burn `AdamW` per group, each stepping only the
//! gradients of its own parameters.

use std::collections::HashSet;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

/// Decides whether a parameter (its dotted path and shape) gets weight decay.
pub type DecayRule = fn(path: &str, shape: &[usize]) -> bool;

/// nanoGPT's rule: decay matrices (embeddings and projection weights), not vectors
/// (biases and norm scales).
pub fn decay_matrices(_path: &str, shape: &[usize]) -> bool {
    shape.len() >= 2
}

/// Hyper-parameters shared by both groups.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

fn adamw<M: AutodiffModule<B>, B: AutodiffBackend>(
    settings: &AdamWSettings,
    weight_decay: f32,
) -> OptimizerAdaptor<AdamW, M, B> {
    AdamWConfig::new()
        .with_beta_1(settings.beta1)
        .with_beta_2(settings.beta2)
        .with_epsilon(settings.eps)
        .with_weight_decay(weight_decay)
        .init()
}

/// Two AdamW instances: weight decay for parameters the [`DecayRule`] selects, none for
/// the rest.
pub struct AdamWGroups<M: AutodiffModule<B>, B: AutodiffBackend> {
    decay: OptimizerAdaptor<AdamW, M, B>,
    no_decay: OptimizerAdaptor<AdamW, M, B>,
    decay_ids: HashSet<ParamId>,
    settings: AdamWSettings,
}

/// The optimizer state of both groups, for checkpoints.
pub struct AdamWGroupsRecord<M: AutodiffModule<B>, B: AutodiffBackend> {
    pub decay: <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record,
    pub no_decay: <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record,
}

struct Split<'a> {
    source: &'a mut GradientsParams,
    decay: GradientsParams,
    no_decay: GradientsParams,
    decay_ids: &'a HashSet<ParamId>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Split<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.source.remove::<B::InnerBackend, D>(param.id) {
            let target = if self.decay_ids.contains(&param.id) {
                &mut self.decay
            } else {
                &mut self.no_decay
            };
            target.register::<B::InnerBackend, D>(param.id, grad);
        }
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> AdamWGroups<M, B> {
    /// Groups `module`'s parameters with `rule`; `params` lists `(id, path, shape)`.
    pub fn new(
        settings: &AdamWSettings,
        params: impl IntoIterator<Item = (ParamId, String, Vec<usize>)>,
        rule: DecayRule,
    ) -> Self {
        Self {
            decay: adamw(settings, settings.weight_decay),
            no_decay: adamw(settings, 0.0),
            settings: settings.clone(),
            decay_ids: params
                .into_iter()
                .filter(|(_, path, shape)| rule(path, shape))
                .map(|(id, _, _)| id)
                .collect(),
        }
    }

    /// Sets Adam's `β1` for the following steps (a cyclic schedule's momentum), keeping
    /// every moment estimate; bias correction then uses the new `β1`, as PyTorch's does.
    pub fn set_beta1(&mut self, beta1: f32) {
        if beta1 == self.settings.beta1 {
            return;
        }
        self.settings.beta1 = beta1;
        let record = self.to_record();
        self.decay = adamw(&self.settings, self.settings.weight_decay).load_record(record.decay);
        self.no_decay = adamw(&self.settings, 0.0).load_record(record.no_decay);
    }

    /// The `β1` the next step uses.
    pub fn beta1(&self) -> f32 {
        self.settings.beta1
    }

    /// Number of parameters in the decayed group.
    pub fn num_decayed(&self) -> usize {
        self.decay_ids.len()
    }

    /// One update of every parameter that has a gradient in `grads`.
    pub fn step(&mut self, lr: f64, module: M, mut grads: GradientsParams) -> M {
        let mut split = Split {
            source: &mut grads,
            decay: GradientsParams::new(),
            no_decay: GradientsParams::new(),
            decay_ids: &self.decay_ids,
        };
        module.visit(&mut split);
        let (decay, no_decay) = (split.decay, split.no_decay);
        let module = self.decay.step(lr, module, decay);
        self.no_decay.step(lr, module, no_decay)
    }

    pub fn to_record(&self) -> AdamWGroupsRecord<M, B> {
        AdamWGroupsRecord {
            decay: self.decay.to_record(),
            no_decay: self.no_decay.to_record(),
        }
    }

    pub fn load_record(mut self, record: AdamWGroupsRecord<M, B>) -> Self {
        self.decay = self.decay.load_record(record.decay);
        self.no_decay = self.no_decay.load_record(record.no_decay);
        self
    }
}
