//! The loop: step, then what follows each step (hooks, evaluation, metrics,
//! checkpoints), until `train.steps`.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use ember_nn::FusedBackend;

use super::error::TrainError;
use super::evaluate::evaluate;
use super::options::{TrainExtras, TrainOptions, TrainSummary};
use super::report::{median_ms, shares};
use super::setup::Run;
use super::step::StepOutcome;
use crate::checkpoint;
use crate::config::TrainConfig;
use crate::hooks::{HookState, StepInfo};
use crate::metrics::StepMetrics;

/// Trains a model per `config` (see [`TrainOptions`]) and leaves a checkpoint in
/// `out_dir/checkpoint`: [`train_with`] without extras.
pub fn train<B>(
    config: TrainConfig,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<TrainSummary, TrainError>
where
    B: AutodiffBackend + FusedBackend,
    B::InnerBackend: FusedBackend,
{
    train_with::<B>(config, options, TrainExtras::default(), device)
}

/// [`train`] with code of the caller's: an objective replacing the configured one and
/// hooks called after every optimizer step (see [`TrainExtras`]).
pub fn train_with<B>(
    config: TrainConfig,
    options: &TrainOptions,
    extras: TrainExtras<B>,
    device: &B::Device,
) -> Result<TrainSummary, TrainError>
where
    B: AutodiffBackend + FusedBackend,
    B::InnerBackend: FusedBackend,
{
    let mut run = Run::open(config, options, extras, device)?;
    let mut stopped = false;
    while !run.done() {
        let mut stop = run.report.stop_requested();
        if let Some(ranks) = &run.ranks {
            // Every rank stops at the same step.
            stop = ranks.any(stop, run.state.step)?;
        }
        if stop {
            // Asked to stop: a checkpoint at this step, resumable with `--resume`.
            run.save()?;
            stopped = true;
            break;
        }
        let out = run.step()?;
        run.after_step(out)?;
    }
    run.finish(stopped)
}

impl<B> Run<'_, B>
where
    B: AutodiffBackend + FusedBackend,
    B::InnerBackend: FusedBackend,
{
    /// After optimizer step `state.step`: the hooks, then evaluation, the metrics record
    /// and the checkpoint when due.
    pub(super) fn after_step(&mut self, out: StepOutcome) -> Result<(), TrainError> {
        let info = StepInfo {
            step: self.state.step,
            total_steps: self.config.train.steps,
            lr: out.lr,
            train_loss: out.train_loss,
            grad_norm: out.grad_norm,
            tokens_seen: self.state.tokens_seen,
        };
        for hook in &mut self.hooks {
            let model = self
                .model
                .take()
                .expect("the model is in place between steps");
            self.model = Some(hook.after_step(model, &info));
        }

        let t = &self.config.train;
        let step = self.state.step;
        let done = step == t.steps;
        let mut val_loss = None;
        let mut retrieval_accuracy = None;
        let mut hook_val_loss = std::collections::BTreeMap::new();
        // Data-parallel: rank 0 alone evaluates, records and saves.
        let leads = self.ranks.as_ref().is_none_or(|r| r.leads());
        if leads && t.eval_every > 0 && (step.is_multiple_of(t.eval_every) || done) {
            // Contrastive runs: held-out InfoNCE and retrieval accuracy.
            let eval_pairs = |model: &ember_nn::Transformer<B::InnerBackend>| {
                let pairs = self.pairs.as_ref()?;
                Some(super::precision::in_f32(|| {
                    crate::objective::validate_pairs(
                        model,
                        pairs,
                        t.batch_size,
                        &t.contrastive.unwrap_or_default(),
                        self.device,
                    )
                }))
            };
            let eval = |model: &ember_nn::Transformer<B::InnerBackend>| {
                if let Some(pairs) = eval_pairs(model) {
                    return pairs.loss;
                }
                super::precision::in_f32(|| {
                    evaluate(
                        model,
                        &self.eval_loss,
                        &self.splits.val,
                        self.config
                            .data
                            .packing
                            .then_some(self.splits.val_documents.as_slice()),
                        t.eval_batches,
                        t.batch_size,
                        t.seed ^ 0x5eed_5eed_5eed_5eed,
                        self.device,
                    )
                })
            };
            let model = self.model().valid();
            let loss = match eval_pairs(&model) {
                Some(pairs) => {
                    retrieval_accuracy = Some(pairs.retrieval_accuracy);
                    pairs.loss
                }
                None => eval(&model),
            };
            for hook in &self.hooks {
                if let Some(model) = hook.evaluated() {
                    hook_val_loss.insert(hook.name().to_string(), eval(model));
                }
            }
            self.state.last_val_loss = Some(loss);
            val_loss = Some(loss);
        }
        self.state.elapsed_s = self.elapsed_before + self.started.elapsed().as_secs_f64();

        let tokens_per_s = self.tokens_per_step as f64 / (out.step_ms / 1e3);
        if step.is_multiple_of(t.log_every.max(1)) || val_loss.is_some() || done {
            let mut record = StepMetrics {
                step,
                train_loss: out.train_loss,
                val_loss,
                retrieval_accuracy,
                lr: out.lr,
                grad_norm: out.grad_norm,
                tokens_per_s,
                step_ms: out.step_ms,
                elapsed_s: self.state.elapsed_s,
                batch_shards: self.n_shards,
                loss_scale: out.loss_scale,
                skipped_step: out.skipped,
                objective: out.metrics,
                hook_val_loss,
                capture: out.capture,
                allreduce_ms: out.allreduce_ms,
                ..Default::default()
            };
            if self.config.model.moe.is_some() {
                self.tally.fill(&mut record);
            }
            self.report.record(&record, t.steps)?;
        }
        self.report.progress(step, out.train_loss, tokens_per_s);
        let periodic = t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every);
        if periodic || done {
            self.save()?;
        }
        Ok(())
    }

    /// Writes the checkpoint: model, optimizer, state and every hook's state.
    pub(super) fn save(&self) -> Result<(), TrainError> {
        if self.ranks.as_ref().is_some_and(|r| !r.leads()) {
            return Ok(());
        }
        let hooks: Vec<(String, HookState)> = self
            .hooks
            .iter()
            .map(|hook| (hook.name().to_string(), hook.save_state()))
            .collect();
        checkpoint::save_with_hooks(
            &self.checkpoint_dir,
            &self.config,
            &self.state,
            self.model(),
            &self.optim,
            &self.tokenizer,
            &hooks,
        )?;
        Ok(())
    }

    /// Ends the run: a checkpoint even when no step ran, and the summary.
    pub(super) fn finish(mut self, stopped: bool) -> Result<TrainSummary, TrainError> {
        if !self.checkpoint_dir.exists() {
            // Resumed at or past the final step: still leave a checkpoint behind.
            self.save()?;
        }
        // The observer hears of the end once the checkpoint is on disk.
        self.report.finish();
        Ok(TrainSummary {
            checkpoint: self.checkpoint_dir.clone(),
            step: self.state.step,
            last_train_loss: self.state.last_train_loss,
            last_val_loss: self.state.last_val_loss,
            median_step_ms: median_ms(&mut self.step_times),
            tokens_per_step: self.tokens_per_step,
            expert_load: self
                .config
                .model
                .moe
                .is_some()
                .then(|| shares(&self.tally.total)),
            stopped,
        })
    }
}
