//! One fine-tuning step (micro-batches over shards, the loss on covered targets only, the
//! gradients of the trainable tensors, clipping, AdamW) and the validation loss.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use ember_data::sft::IGNORE;
use ember_nn::{BlockCheckpoints, FusedBackend};
use ember_ops::MaskMod;
use ember_peft::orthogonal_penalty;

use super::data::SftBatch;
use super::method::Tuned;
use super::run::FinetuneRun;
use crate::loss::masked_cross_entropy;
use crate::trainer::TrainError;
use crate::trainer::ranks::Ranks;
use crate::trainer::step_gradients;

/// What a step did.
pub(super) struct StepOutcome {
    pub(super) lr: f64,
    pub(super) grad_norm: f64,
    /// Mean cross-entropy over the step's covered targets.
    pub(super) train_loss: f64,
    pub(super) step_ms: f64,
    /// Positions the step fed the model.
    pub(super) tokens: usize,
}

/// Mean loss over `batch`'s covered targets, `[1]`.
fn batch_loss<B: FusedBackend>(
    tuned: &Tuned<B>,
    batch: &SftBatch,
    device: &B::Device,
    checkpoints: Option<&mut BlockCheckpoints<B>>,
) -> Tensor<B, 1> {
    let inputs = Tensor::<B, 2, Int>::from_data(
        TensorData::new(
            batch.inputs.iter().map(|&t| i64::from(t)).collect(),
            [batch.rows, batch.block],
        ),
        device,
    );
    let documents = batch
        .packs_several()
        .then(|| MaskMod::document(batch.document_rows()));
    let logits = tuned.forward(inputs, documents.as_ref(), checkpoints);
    masked_cross_entropy(logits, &batch.targets, IGNORE)
}

/// Gradients of `weight × (loss + orth × AdaLoRA's orthogonality penalty)` over one
/// shard, and its loss (without the penalty).
fn shard<B: AutodiffBackend + FusedBackend>(
    tuned: &Tuned<B>,
    batch: &SftBatch,
    weight: f64,
    orth: Option<f64>,
    device: &B::Device,
    mut checkpoints: BlockCheckpoints<B>,
) -> (GradientsParams, f64, f64) {
    if batch.trained == 0 {
        return (GradientsParams::new(), 0.0, 0.0);
    }
    let loss = batch_loss(tuned, batch, device, Some(&mut checkpoints));
    let objective = match orth {
        Some(w) => loss.clone() + orthogonal_penalty(&tuned.model).mul_scalar(w),
        None => loss.clone(),
    };
    // Through the checkpointed blocks (plain `backward()` when none were recorded).
    let grads = checkpoints.backward_with(objective.mul_scalar(weight), &tuned.model, tuned);
    (grads, loss.into_scalar().elem::<f64>(), weight)
}

impl<B> FinetuneRun<'_, B>
where
    B: AutodiffBackend + FusedBackend,
    B::InnerBackend: FusedBackend,
{
    /// Runs optimizer step `state.step` and counts it.
    pub(super) fn step(&mut self) -> Result<StepOutcome, TrainError> {
        let t = &self.config.train;
        let device = self.device;
        let step = self.state.step;
        let started = Instant::now();
        // Dropout draws from the backend RNG; seeding it per step keeps resumes exact.
        let rank_salt = Ranks::seed_salt(self.ranks.as_ref());
        B::seed(device, t.seed.wrapping_add(step as u64 + 1) ^ rank_salt);
        let rows = &self.data.train;
        let batches: Vec<SftBatch> = (0..t.grad_accum)
            .map(|_| {
                let ids = self.state.sampler.next(rows.rows(), t.batch_size);
                SftBatch::gather(rows, &ids)
            })
            .collect();
        // Each micro-batch weighs by its covered targets: the step's loss is the mean
        // over all of them, as one big batch would give.
        let covered: usize = batches.iter().map(|b| b.trained).sum();
        let orth = self
            .allocator
            .is_some()
            .then_some(self.config.peft.orth_reg_weight);
        let tuned = self
            .tuned
            .as_ref()
            .expect("the model is in place between steps");
        let mut accumulator = GradientsAccumulator::<Tuned<B>>::new();
        let mut train_loss = 0.0;
        // Dropout masks from per-block seeds (the same whether or not a block runs again
        // in the backward pass); sharded runs draw from the shared generator.
        let dropout = self.config.peft.lora_dropout > 0.0 || tuned.model.config().dropout > 0.0;
        let seeded = dropout && self.n_shards == 1;
        for (micro, batch) in batches.iter().enumerate() {
            // Data-parallel: this rank's rows of the global micro-batch.
            let batch = &*Ranks::own_rows(self.ranks.as_ref(), batch);
            let share = batch.trained as f64 / covered.max(1) as f64;
            let seed =
                t.seed ^ ((step as u64) << 20 | micro as u64).wrapping_mul(0x9e37_79b9) ^ rank_salt;
            let parts = self.shards.run(tuned, batch, |model, part, weight| {
                let mut checkpoints = BlockCheckpoints::new(t.activation_checkpointing);
                if seeded {
                    checkpoints = checkpoints.with_dropout_seed(seed);
                }
                shard(model, part, weight * share, orth, device, checkpoints)
            });
            for (grads, loss, weight) in parts {
                train_loss += loss * weight;
                accumulator.accumulate(tuned, grads);
            }
        }
        let mut grads = accumulator.grads();
        if let Some(ranks) = &self.ranks {
            // Every rank's weighted share summed: the global batch's step (the adapter's
            // gradients only: the base is frozen).
            let mut loss = [train_loss];
            ranks.sum(&mut loss, step)?;
            train_loss = loss[0];
            ranks.sum_gradients(tuned, &mut grads, step)?;
        }
        let (grads, grad_norm) = step_gradients(
            tuned,
            grads,
            train_loss,
            step,
            &self.clipping,
            1.0,
            &mut |_| {},
        )?;
        let lr = self.schedule.lr_at(step);
        if let Some(beta1) = self.schedule.beta1_at(step) {
            self.optim.set_beta1(beta1 as f32);
        }
        // AdaLoRA sees the gradients the optimizer applies (peft's `global_step` counts
        // from 1), then prunes after the update.
        let adalora_error = |e: ember_peft::PeftError| TrainError::Hooks(e.0);
        if let Some(allocator) = &mut self.allocator {
            allocator
                .observe(&tuned.model, &grads, step + 1)
                .map_err(adalora_error)?;
        }
        let tuned = self
            .tuned
            .take()
            .expect("the model is in place between steps");
        let mut tuned = self.optim.step(lr, tuned, grads);
        let pruned = match &mut self.allocator {
            Some(allocator) => allocator
                .update_and_allocate(&mut tuned.model, step + 1)
                .map(|_| ()),
            None => Ok(()),
        };
        self.tuned = Some(tuned);
        pruned.map_err(adalora_error)?;
        let step_ms = started.elapsed().as_secs_f64() * 1e3;
        self.step_times.push(step_ms);

        let tokens = batches.iter().map(|b| b.rows * b.block).sum::<usize>();
        self.state.step += 1;
        self.state.tokens_seen = self.state.tokens_seen.saturating_add(tokens as u64);
        self.state.trained_tokens_seen = self
            .state
            .trained_tokens_seen
            .saturating_add(covered as u64);
        self.state.last_train_loss = Some(train_loss);
        Ok(StepOutcome {
            lr,
            grad_norm,
            train_loss,
            step_ms,
            tokens,
        })
    }

    /// Mean cross-entropy over every covered target of the held-out rows (`None` without
    /// any).
    pub(super) fn evaluate(&self) -> Option<f64> {
        let val = self.data.val.as_ref()?;
        heldout_loss(
            &self.tuned().valid(),
            val,
            self.config.train.batch_size,
            self.device,
        )
    }
}

/// Held-out loss for a model outside a run: the mean cross-entropy of `tuned` over every
/// covered target of `rows`, `batch_size` rows at a time.
pub fn heldout_loss<B: Backend + FusedBackend>(
    tuned: &Tuned<B>,
    rows: &ember_data::sft::PackedRows,
    batch_size: usize,
    device: &B::Device,
) -> Option<f64> {
    let (mut total, mut covered) = (0.0, 0usize);
    let ids: Vec<usize> = (0..rows.rows()).collect();
    for chunk in ids.chunks(batch_size.max(1)) {
        let batch = SftBatch::gather(rows, chunk);
        if batch.trained == 0 {
            continue;
        }
        let loss = batch_loss(tuned, &batch, device, None);
        total += loss.into_scalar().elem::<f64>() * batch.trained as f64;
        covered += batch.trained;
    }
    (covered > 0).then(|| total / covered as f64)
}
