//! One optimizer step: micro-batches (each cut into shards) through the objective,
//! their gradients accumulated, the global norm clipped, the learning rate looked up and
//! the optimizer applied.

use std::collections::BTreeMap;
use std::time::Instant;

use super::clipping::Clipping;
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use ember_data::Batch;
use ember_nn::{BlockCheckpoints, FusedBackend, GradientCapture, GradientStats, Transformer};

use super::error::TrainError;
use super::evaluate::batch_tensors;
use super::loss_scale::LossScale;
use super::ranks::Ranks;
use super::setup::Run;
use crate::objective::{MoeStats, Objective, ObjectiveBatch};
use crate::shards::Rows;

/// What an optimizer step did, for what follows it.
pub(super) struct StepOutcome {
    /// The learning rate it used.
    pub(super) lr: f64,
    /// The global gradient norm before clipping.
    pub(super) grad_norm: f64,
    /// The objective's `train_loss`, row-weighted mean over the step.
    pub(super) train_loss: f64,
    /// The objective's named metrics, row-weighted means over the step.
    pub(super) metrics: BTreeMap<String, f64>,
    /// Duration of the step, ms.
    pub(super) step_ms: f64,
    /// Loss scaling: the scale the step ran with.
    pub(super) loss_scale: Option<f64>,
    /// Loss scaling: the gradients were not finite and the optimizer skipped the step.
    pub(super) skipped: bool,
    /// `train.capture` on this step: per module, activation and gradient statistics.
    pub(super) capture: BTreeMap<String, crate::metrics::CapturedModule>,
    /// Data-parallel runs: the gradient all-reduce's duration, ms.
    pub(super) allreduce_ms: Option<f64>,
}

/// What one micro-batch (or one shard of it) contributes to a step.
struct MicroBatch {
    /// Gradients of `weight × loss`.
    grads: GradientsParams,
    /// The share of the step this micro-batch stands for (rows / step rows).
    weight: f64,
    /// The objective's `train_loss` over its rows.
    train_loss: f64,
    moe: Option<MoeStats>,
    metrics: Vec<(String, f64)>,
}

/// What a micro-batch's forward pass carries besides its rows.
struct Pass<'h, B: AutodiffBackend> {
    checkpoints: BlockCheckpoints<B>,
    /// Capture steps: the hooks recording the gradients reaching captured outputs.
    hooks: Option<&'h mut dyn ember_nn::ForwardHooks<B>>,
}

/// Forward and backward over `batch`; the loss is scaled by `weight` before the backward
/// pass, so summing the gradients of a step's micro-batches gives the step's mean.
fn micro_batch<B: AutodiffBackend + FusedBackend>(
    model: &Transformer<B>,
    objective: &dyn Objective<B>,
    batch: &Batch,
    weight: f64,
    loss_scale: f64,
    device: &B::Device,
    pass: Pass<'_, B>,
) -> MicroBatch {
    let Pass {
        mut checkpoints,
        mut hooks,
    } = pass;
    let (inputs, targets) = batch_tensors::<B>(batch, device);
    let out = objective.loss(
        model,
        ObjectiveBatch {
            inputs,
            targets,
            batch,
            device,
            checkpoints: Some(&mut checkpoints),
            // Reborrowed: the trait object's lifetime shrinks to this call's.
            hooks: match hooks {
                Some(ref mut h) => Some(&mut **h),
                None => None,
            },
        },
    );
    let loss = if weight * loss_scale != 1.0 {
        out.loss.mul_scalar(weight * loss_scale)
    } else {
        out.loss
    };
    let grads = checkpoints.backward(loss, model);
    MicroBatch {
        grads,
        weight,
        train_loss: out.train_loss.into_scalar().elem::<f64>(),
        moe: out.moe,
        metrics: out
            .metrics
            .into_iter()
            .map(|(name, value)| (name, value.into_scalar().elem::<f64>()))
            .collect(),
    }
}

/// The step's gradients `grads` (summed over its micro-batches), multiplied by `unscale` (the inverse of a
/// loss scale; 1 without one), clipped as `clipping` says, and their global norm before
/// clipping; `Err` when `train_loss` is not finite (the run diverged at `step`).
pub(crate) fn step_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    mut grads: GradientsParams,
    train_loss: f64,
    step: usize,
    clipping: &Clipping,
    unscale: f64,
    before_clipping: &mut dyn FnMut(&GradientsParams),
) -> Result<(GradientsParams, f64), TrainError> {
    if !train_loss.is_finite() {
        return Err(TrainError::Diverged {
            step,
            loss: train_loss,
        });
    }
    if unscale != 1.0 {
        ember_optim::scale_grads(model, &mut grads, unscale);
    }
    before_clipping(&grads);
    let norm = clipping.apply(model, &mut grads);
    Ok((grads, norm))
}

impl<B> Run<'_, B>
where
    B: AutodiffBackend + FusedBackend,
    B::InnerBackend: FusedBackend,
{
    /// Whether the run has reached `train.steps`.
    pub(super) fn done(&self) -> bool {
        self.state.step >= self.config.train.steps
    }

    /// Runs optimizer step `state.step` and counts it in the state.
    pub(super) fn step(&mut self) -> Result<StepOutcome, TrainError> {
        let t = &self.config.train;
        let (device, block) = (self.device, self.config.model.max_seq_len);
        let step = self.state.step;
        let step_start = Instant::now();
        // Dropout draws from the backend RNG; seeding it per step keeps resumes exact.
        let rank_salt = Ranks::seed_salt(self.ranks.as_ref());
        B::seed(device, t.seed.wrapping_add(step as u64 + 1) ^ rank_salt);
        if self.freezing.changes_at(step) {
            let model = self
                .model
                .take()
                .expect("the model is in place between steps");
            self.model = Some(self.freezing.apply(model, step));
        }
        let model = self
            .model
            .as_ref()
            .expect("the model is in place between steps");
        let objective = &*self.objective;
        let mut accumulator = GradientsAccumulator::<Transformer<B>>::new();
        let mut train_loss = 0.0;
        let mut metrics = BTreeMap::new();
        self.tally.start_step();
        // Dropout masks come from per-block seeds (the same whether or not a block runs
        // again in the backward pass); sharded runs draw from the shared generator.
        let dropout_seeds = self.config.model.dropout > 0.0 && self.n_shards == 1;
        // f16-mixed: the loss is scaled for the backward pass, the gradients unscaled. (A
        // run resumed in another precision drops the scale.)
        if self.config.train.precision == crate::config::Precision::F16Mixed {
            self.state.loss_scale.get_or_insert_with(LossScale::default);
        } else {
            self.state.loss_scale = None;
        }
        let scale = self.state.loss_scale.map_or(1.0, |s| s.scale);
        // Every micro-batch first: each weighs its share of the step's rows (packed rows:
        // of the targets the loss covers, so the step's loss is a mean over tokens).
        let batches: Vec<Batch> = (0..t.grad_accum)
            .map(|_| {
                let sampler = &mut self.state.sampler;
                let train = &self.splits.train;
                if let Some(pairs) = &self.pairs {
                    return pairs.sample(&mut sampler.rng, t.batch_size);
                }
                match self.config.data.packing {
                    true => sampler.sample_packed(
                        train,
                        &self.splits.train_documents,
                        t.batch_size,
                        block,
                    ),
                    false => sampler.sample(train, t.batch_size, block),
                }
            })
            .collect();
        let step_weight: f64 = batches.iter().map(Rows::weight).sum();
        let capture_patterns = self
            .capture
            .as_ref()
            .filter(|c| c.due(step + 1))
            .map(|c| c.patterns());
        let activation_grads = GradientStats::default();
        for (micro, batch) in batches.iter().enumerate() {
            // Data-parallel: this rank's rows of the global micro-batch.
            let batch = &*Ranks::own_rows(self.ranks.as_ref(), batch);
            let share = if step_weight > 0.0 {
                batch.weight() / step_weight
            } else {
                0.0
            };
            let seed =
                t.seed ^ ((step as u64) << 20 | micro as u64).wrapping_mul(0x9e37_79b9) ^ rank_salt;
            let parts = self.shards.run(model, batch, |model, rows, weight| {
                let mut checkpoints = BlockCheckpoints::new(t.activation_checkpointing);
                if dropout_seeds {
                    checkpoints = checkpoints.with_dropout_seed(seed);
                }
                // Capture steps: the first micro-batch's pass records the gradients
                // reaching the captured outputs (that pass checkpoints nothing).
                let mut hooks = capture_patterns.filter(|_| micro == 0).map(|patterns| {
                    let mut hooks = GradientCapture::new(patterns);
                    hooks.stats = activation_grads.clone();
                    hooks
                });
                micro_batch(
                    model,
                    objective,
                    rows,
                    weight * share,
                    scale,
                    device,
                    Pass {
                        checkpoints,
                        hooks: hooks
                            .as_mut()
                            .map(|h| h as &mut dyn ember_nn::ForwardHooks<B>),
                    },
                )
            });
            for part in parts {
                train_loss += part.train_loss * part.weight;
                for (name, value) in part.metrics {
                    *metrics.entry(name).or_insert(0.0) += value * part.weight;
                }
                if let Some(moe) = &part.moe {
                    self.tally.add(moe, part.weight);
                }
                accumulator.accumulate(model, part.grads);
            }
        }
        let mut grads = accumulator.grads();
        let mut allreduce_ms = None;
        if let Some(ranks) = &self.ranks {
            // Every rank's weighted share summed: the global batch's step.
            // (An objective may leave a metric out where a rank's rows give it nothing.)
            ranks.align_names(&mut metrics, step)?;
            let mut values = vec![train_loss];
            values.extend(metrics.values());
            values.extend(self.tally.step_values());
            ranks.sum(&mut values, step)?;
            train_loss = values[0];
            for (value, summed) in metrics.values_mut().zip(&values[1..]) {
                *value = *summed;
            }
            self.tally.set_step_values(&values[1 + metrics.len()..]);
            // Timed after the ranks met at the sum above: the exchange, not a wait for
            // a slower rank.
            allreduce_ms = Some(ranks.sum_gradients(model, &mut grads, step)?);
        }
        // Under loss scaling an overflow in the forward pass (a non-finite loss) skips the
        // step like one in the backward pass; the run diverges only when the scale
        // collapses.
        let scaled = self.state.loss_scale.is_some();
        let checked_loss = if scaled && !train_loss.is_finite() {
            0.0
        } else {
            train_loss
        };
        let capturing = self.capture.as_ref().filter(|c| c.due(step + 1));
        let mut grad_norms = BTreeMap::new();
        let (grads, mut grad_norm) = step_gradients(
            model,
            grads,
            checked_loss,
            step,
            &self.clipping,
            1.0 / scale,
            &mut |grads| {
                if let Some(capture) = capturing {
                    grad_norms = capture.grad_norms(model, grads);
                }
            },
        )?;
        // The activations the step's weights produce, before the update.
        let leads = self.ranks.as_ref().is_none_or(|r| r.leads());
        let capture = match capturing.filter(|_| leads) {
            Some(capture) => {
                let activation_grads = activation_grads
                    .lock()
                    .map(|stats| stats.clone())
                    .unwrap_or_default();
                super::precision::in_f32(|| {
                    capture.record(
                        &model.valid(),
                        &batches[0],
                        &grad_norms,
                        &activation_grads,
                        device,
                    )
                })
            }
            None => BTreeMap::new(),
        };
        if !train_loss.is_finite() {
            grad_norm = f64::NAN;
        }
        if scaled && scale < super::loss_scale::MIN_SCALE {
            return Err(TrainError::Diverged {
                step,
                loss: train_loss,
            });
        }
        let lr = self.schedule.lr_at(step);
        let loss_scale = self.state.loss_scale.map(|s| s.scale);
        let apply = match self.state.loss_scale.as_mut() {
            Some(scaler) => scaler.update(grad_norm.is_finite()),
            None => true,
        };
        if let Some(beta1) = self.schedule.beta1_at(step) {
            self.optim.set_beta1(beta1 as f32);
        }
        if apply {
            let model = self
                .model
                .take()
                .expect("the model is in place between steps");
            self.model = Some(self.optim.step(lr, model, grads));
        }
        let step_ms = step_start.elapsed().as_secs_f64() * 1e3;
        self.step_times.push(step_ms);

        self.state.step += 1;
        self.state.tokens_seen = self
            .state
            .tokens_seen
            .saturating_add(self.tokens_per_step as u64);
        self.state.last_train_loss = Some(train_loss);
        Ok(StepOutcome {
            lr,
            grad_norm,
            train_loss,
            metrics,
            step_ms,
            loss_scale,
            skipped: !apply,
            capture,
            allreduce_ms,
        })
    }
}
