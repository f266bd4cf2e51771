//! [`RankAllocator`]: `peft`'s `RankAllocator` together with
//! `AdaLoraModel.update_and_allocate`, which prune AdaLoRA's singular values by
//! importance on a cubic budget schedule.
//!
//! At each step `t` `peft` (1) while `t < total_step − tfinal`, updates for every entry of
//! every `A`, `E`, `B` the sensitivity `I = |p·∂L/∂p|`, its smoothing
//! `Ī ← β₁·Ī + (1−β₁)·I` and uncertainty `Ū ← β₂·Ū + (1−β₂)·|I − Ī|`; (2) takes the
//! budget `b(t)`: `init` (the sum of the ranks) while `t ≤ tinit`, else
//! `⌊(init − target)·(1 − (t − tinit)/(total_step − tfinal − tinit))³ + target⌋`
//! (`target = target_r ×` the number of adapted projections); (3) when `t % deltaT == 0`
//! (and, forced, at `t = total_step − tfinal`), scores each rank `k` of each projection as
//! `s(E_k) + mean_i s(A_ki) + mean_j s(B_jk)` with `s = Ī·Ū`, and sets to zero every `E_k`
//! whose score is at most the `(init − b(t))`-th smallest (the parameters keep their
//! shapes and keep training); that mask is the `rank_pattern`. At
//! `t = total_step − tfinal` the scores are dropped; after it, each step zeroes `E` again
//! by the last `rank_pattern`.
//!
//! The state is host-side, keyed by Ember path, in Ember's layout (`down` `[d_in, r]`,
//! `rank_scale` `[r]`, `up` `[r, d_out]`).

mod importance;
mod state;

use std::collections::BTreeMap;

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Tensor, TensorData};
use ember_nn::{FusedBackend, Transformer};
use importance::{Scores, Triplet};

use super::apply::adalora_adapters;
use super::config::AdaLoraConfig;
use crate::targets::PeftError;

/// What [`RankAllocator::update_and_allocate`] did at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// The rank budget of the step: when it masked, the number of surviving ranks (fewer
    /// where scores tie at the threshold, as in `peft`).
    pub budget: usize,
    /// Whether singular values were masked.
    pub masked: bool,
}

/// A named f32 tensor of the allocator's state: `(name, shape, values)`.
pub type AllocatorTensor = (String, Vec<usize>, Vec<f32>);

const PARTS: [&str; 3] = ["down", "rank_scale", "up"];

/// One adapted projection.
#[derive(Debug, Clone, PartialEq)]
struct Module {
    path: String,
    d_in: usize,
    d_out: usize,
    rank: usize,
}

impl Module {
    fn shapes(&self) -> [Vec<usize>; 3] {
        [
            vec![self.d_in, self.rank],
            vec![self.rank],
            vec![self.rank, self.d_out],
        ]
    }
}

/// `peft`'s AdaLoRA rank allocation. Per training step, around the optimizer step
/// (`step` counts as `peft`'s `global_step`; a trainer counting completed optimizer steps
/// from 1 reaches the final mask at `total_step − tfinal` with `tfinal = 0` too):
///
/// ```text
/// let grads = GradientsParams::from_grads(loss.backward(), &model);
/// allocator.observe(&model, &grads, step)?;            // before the optimizer step
/// model = optimizer.step(lr, model, grads);
/// allocator.update_and_allocate(&mut model, step)?;   // after it, as peft documents
/// ```
///
/// The sensitivity is `|p·g|` with the parameters as they are when
/// [`Self::update_and_allocate`] runs (after the optimizer step, as in `peft`'s loop) and
/// the gradients [`Self::observe`] copied.
#[derive(Debug, Clone)]
pub struct RankAllocator {
    tinit: usize,
    tfinal: usize,
    delta_t: usize,
    total_step: usize,
    beta1: f64,
    beta2: f64,
    modules: Vec<Module>,
    init_budget: usize,
    target_budget: usize,
    scores: BTreeMap<String, Scores>,
    /// Gradients copied by `observe`, with their step.
    pending: Option<(usize, BTreeMap<String, Triplet>)>,
    rank_pattern: Option<BTreeMap<String, Vec<bool>>>,
}

/// `t`'s values as f32.
fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .expect("float values")
}

impl RankAllocator {
    /// The allocator for the AdaLoRA adapters of `model` ([`crate::apply_adalora`]);
    /// `init` is the sum of their ranks, `target` is `target_r` per adapter, and the last
    /// rank pattern starts as `config.rank_pattern`. `Err` names the key at fault
    /// ([`AdaLoraConfig::validate_schedule`]) or says that `model` has no AdaLoRA adapter.
    pub fn new<B: FusedBackend>(
        model: &Transformer<B>,
        config: &AdaLoraConfig,
    ) -> Result<Self, PeftError> {
        let total_step = config.validate_schedule()?;
        let modules: Vec<Module> = adalora_adapters(model)
            .into_iter()
            .map(|parts| Module {
                rank: parts.rank(),
                path: parts.path,
                d_in: parts.d_in,
                d_out: parts.d_out,
            })
            .collect();
        if modules.is_empty() {
            return Err(PeftError(
                "the model has no AdaLoRA adapter to allocate ranks for".into(),
            ));
        }
        Ok(Self {
            tinit: config.tinit,
            tfinal: config.tfinal,
            delta_t: config.delta_t,
            total_step,
            beta1: config.beta1,
            beta2: config.beta2,
            init_budget: modules.iter().map(|m| m.rank).sum(),
            target_budget: config.target_r * modules.len(),
            modules,
            scores: BTreeMap::new(),
            pending: None,
            rank_pattern: config.rank_pattern.clone(),
        })
    }

    /// The starting budget: the sum of the adapters' ranks.
    pub fn init_budget(&self) -> usize {
        self.init_budget
    }

    /// The final budget: `target_r` × the number of adapters.
    pub fn target_budget(&self) -> usize {
        self.target_budget
    }

    /// The last rank pattern (which ranks survived, by Ember path): what `peft` stores
    /// in the config's `rank_pattern` and saves the adapter by. `None` before the first
    /// pruning.
    pub fn rank_pattern(&self) -> Option<&BTreeMap<String, Vec<bool>>> {
        self.rank_pattern.as_ref()
    }

    /// `peft`'s `budget_schedule(step)`: the budget, and whether this step masks (before
    /// the forced final mask, which [`Self::update_and_allocate`] adds).
    pub fn budget_schedule(&self, step: usize) -> (usize, bool) {
        let (init, target) = (self.init_budget, self.target_budget);
        if step <= self.tinit {
            (init, false)
        } else if step > self.total_step - self.tfinal {
            (target, true)
        } else {
            let span = (self.total_step - self.tfinal - self.tinit) as f64;
            let mul = 1.0 - (step - self.tinit) as f64 / span;
            let budget = (init as f64 - target as f64) * mul.powf(3.0) + target as f64;
            (budget as usize, step.is_multiple_of(self.delta_t))
        }
    }

    /// Whether [`Self::update_and_allocate`] at `step` uses gradients (`step <
    /// total_step − tfinal`).
    pub fn needs_gradients(&self, step: usize) -> bool {
        step < self.total_step - self.tfinal
    }

    /// Copies the gradients of every adapter's `down`, `rank_scale` and `up` from `grads`
    /// (those the optimizer is about to apply), for [`Self::update_and_allocate`] at the
    /// same `step`. Does nothing when the step needs none. `Err` names a parameter
    /// without a gradient.
    pub fn observe<B: AutodiffBackend + FusedBackend>(
        &mut self,
        model: &Transformer<B>,
        grads: &GradientsParams,
        step: usize,
    ) -> Result<(), PeftError> {
        self.pending = None;
        if !self.needs_gradients(step) {
            return Ok(());
        }
        let mut observed = BTreeMap::new();
        for parts in adalora_adapters(model) {
            let path = parts.path;
            let Some((down, e, up)) = parts.tensors else {
                observed.insert(path, Triplet::default());
                continue;
            };
            let missing = |part: &str| PeftError(format!("{path}.adapter.{part}: no gradient"));
            let triplet = Triplet {
                down: host(
                    grads
                        .get::<B::InnerBackend, 2>(down.id)
                        .ok_or_else(|| missing("down"))?,
                ),
                e: host(
                    grads
                        .get::<B::InnerBackend, 1>(e.id)
                        .ok_or_else(|| missing("rank_scale"))?,
                ),
                up: host(
                    grads
                        .get::<B::InnerBackend, 2>(up.id)
                        .ok_or_else(|| missing("up"))?,
                ),
            };
            observed.insert(path, triplet);
        }
        self.pending = Some((step, observed));
        Ok(())
    }

    /// `peft`'s `AdaLoraModel.update_and_allocate(step)` on `model`: the importance
    /// update from the gradients [`Self::observe`] copied at `step` (while `step <
    /// total_step − tfinal`), the budget, and the masking of `model`'s singular values
    /// (`rank_scale`) in place. `Err` (with `model` unchanged) when the gradients of
    /// `step` were not observed, or `model`'s adapters are not the allocator's.
    pub fn update_and_allocate<B: FusedBackend>(
        &mut self,
        model: &mut Transformer<B>,
        step: usize,
    ) -> Result<Allocation, PeftError> {
        let end = self.total_step - self.tfinal;
        if step < end {
            let grads = match self.pending.take() {
                Some((observed, grads)) if observed == step => grads,
                other => {
                    let seen = other.map(|(s, _)| s);
                    self.pending = None;
                    return Err(PeftError(format!(
                        "AdaLoRA step {step}: no gradients observed for this step (last \
                         observed: {seen:?}); call observe(model, grads, {step}) before the \
                         optimizer step"
                    )));
                }
            };
            let params = self.read(model)?;
            self.update_scores(&params, &grads)?;
            let (budget, mask) = self.budget_schedule(step);
            if mask {
                let pattern = self.pattern_for_budget(budget)?;
                self.apply(model, &pattern)?;
                self.rank_pattern = Some(pattern);
            }
            Ok(Allocation {
                budget,
                masked: mask,
            })
        } else if step == end {
            if self.scores.is_empty() {
                return Err(PeftError(format!(
                    "AdaLoRA step {step} (total_step - tfinal): no importance scores to take \
                     the final rank pattern from"
                )));
            }
            let (budget, _) = self.budget_schedule(step);
            let pattern = self.pattern_for_budget(budget)?;
            self.apply(model, &pattern)?;
            self.rank_pattern = Some(pattern);
            self.scores.clear();
            Ok(Allocation {
                budget,
                masked: true,
            })
        } else {
            let Some(pattern) = self.rank_pattern.clone() else {
                return Err(PeftError(format!(
                    "AdaLoRA step {step} (after total_step - tfinal): no rank pattern to mask by"
                )));
            };
            self.apply(model, &pattern)?;
            Ok(Allocation {
                budget: self.target_budget,
                masked: true,
            })
        }
    }

    /// The current `down`, `rank_scale`, `up` of every module, from `model`.
    fn read<B: FusedBackend>(
        &self,
        model: &Transformer<B>,
    ) -> Result<BTreeMap<String, Triplet>, PeftError> {
        let adapters: BTreeMap<_, _> = adalora_adapters(model)
            .into_iter()
            .map(|parts| (parts.path.clone(), parts))
            .collect();
        self.modules
            .iter()
            .map(|m| {
                let a = adapters.get(&m.path).ok_or_else(|| {
                    PeftError(format!(
                        "{}: the model has no AdaLoRA adapter there",
                        m.path
                    ))
                })?;
                let t = match &a.tensors {
                    Some((down, e, up)) => Triplet {
                        down: host(down.val()),
                        e: host(e.val()),
                        up: host(up.val()),
                    },
                    None => Triplet::default(),
                };
                let zeros = Triplet::zeros(m);
                if t.parts().map(Vec::len) != zeros.parts().map(Vec::len) {
                    return Err(PeftError(format!(
                        "{}: the adapter's shapes changed since the allocator was made",
                        m.path
                    )));
                }
                Ok((m.path.clone(), t))
            })
            .collect()
    }

    /// Sets to zero the singular values `pattern` does not keep (`peft`'s
    /// `masked_fill_`); `model` is unchanged on `Err`.
    fn apply<B: FusedBackend>(
        &self,
        model: &mut Transformer<B>,
        pattern: &BTreeMap<String, Vec<bool>>,
    ) -> Result<(), PeftError> {
        let adapters: BTreeMap<_, _> = adalora_adapters(model)
            .into_iter()
            .map(|parts| (parts.path.clone(), parts.rank()))
            .collect();
        for (path, keep) in pattern {
            let rank = adapters
                .get(path)
                .copied()
                .ok_or_else(|| PeftError(format!("rank_pattern: {path} has no AdaLoRA adapter")))?;
            if rank != keep.len() {
                return Err(PeftError(format!(
                    "rank_pattern: {path} has {} entries for an adapter of rank {rank}",
                    keep.len()
                )));
            }
        }
        for (path, projection) in model.projections_mut() {
            let Some(keep) = pattern.get(&path).filter(|k| !k.is_empty()) else {
                continue;
            };
            let adapter = projection.adapter.as_mut().expect("checked above");
            let e = adapter.rank_scale.take().expect("checked above");
            let value = e.val();
            let dropped: Vec<bool> = keep.iter().map(|k| !k).collect();
            let mask = Tensor::<B, 1, Bool>::from_data(
                TensorData::new(dropped, [keep.len()]),
                &value.device(),
            );
            let masked = value
                .mask_fill(mask, 0.0)
                .detach()
                .set_require_grad(e.is_require_grad());
            adapter.rank_scale = Some(Param::initialized(e.id, masked));
        }
        Ok(())
    }
}
