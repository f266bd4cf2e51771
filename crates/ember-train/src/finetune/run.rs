//! `finetune`: a base model, a method and a file of examples in; an adapter out.
//!
//! ```text
//! let mut run = FinetuneRun::<B>::open(config, options, device)?;   // base, data, adapter, resume
//! while !run.done() {
//!     let out = run.step()?;                                     // step.rs
//!     run.after_step(out)?;                                      // evaluation, metrics, checkpoint
//! }
//! run.finish()
//! ```

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use ember_hf::HfArch;
use ember_model::{ModelDir, base_fingerprint};
use ember_nn::{FusedBackend, param_infos};
use ember_optim::{AdamWGroups, AdamWSettings, LrSchedule, decay_matrices};
use ember_peft::{PeftReport, RankAllocator};

use super::checkpoint::{self, BaseRecord, FinetuneCheckpoint, FinetuneState, SaveParts};
use super::config::{FinetuneConfig, PeftMethod};
use super::data::{Framing, SftData};
use super::method::{Tuned, attach};
use crate::config::ConfigError;
use crate::metrics::StepMetrics;
use crate::run_dir::{self, RunLock};
use crate::shards::Shards;
use crate::trainer::TrainError;
use crate::trainer::precision::PrecisionScope;
use crate::trainer::ranks::Ranks;
use crate::trainer::report::{Reporter, median_ms};

/// Where a fine-tune reads and writes.
#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    /// The base: a Hugging Face directory or an Ember checkpoint.
    pub model: PathBuf,
    /// The examples, `.jsonl`.
    pub data: PathBuf,
    /// Run directory: `checkpoint/` (the adapter) and `metrics.jsonl`.
    pub out_dir: PathBuf,
    /// A fine-tune checkpoint (or its run directory) to continue from.
    pub resume: Option<PathBuf>,
    /// Start in (or resume into) an `out_dir` holding another run, replacing it.
    pub force: bool,
    /// Log lines on stdout; `false` silences the loop (tests).
    pub verbose: bool,
    /// Whether the backend computes on this machine's CPU cores.
    pub cpu_backend: bool,
}

/// What a finished fine-tune reports.
#[derive(Debug, Clone)]
pub struct FinetuneSummary {
    pub checkpoint: PathBuf,
    pub step: usize,
    pub last_train_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    /// Median optimizer-step time of this invocation.
    pub median_step_ms: f64,
    /// Positions per optimizer step.
    pub tokens_per_step: usize,
    /// What trains, as `peft` counts it.
    pub params: PeftReport,
    pub train_examples: usize,
    pub val_examples: usize,
    /// Examples cut to fit a row, and left out because nothing trainable remained.
    pub truncated: usize,
    pub dropped: usize,
}

/// `peft`'s `print_trainable_parameters` line.
pub fn trainable_line(report: &PeftReport) -> String {
    let group = |n: usize| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    format!(
        "trainable params: {} || all params: {} || trainable%: {:.4}",
        group(report.trainable),
        group(report.total),
        100.0 * report.trainable as f64 / report.total.max(1) as f64
    )
}

/// Fine-tunes per `config` and `options`; leaves the adapter in `out_dir/checkpoint`.
pub fn finetune<B>(
    config: FinetuneConfig,
    options: &FinetuneOptions,
    device: &B::Device,
) -> Result<FinetuneSummary, TrainError>
where
    B: AutodiffBackend + FusedBackend,
    B::InnerBackend: FusedBackend,
{
    finetune_with::<B>(config, options, None, device)
}

/// [`finetune`] as one rank of a data-parallel job (see [`crate::ddp`]): each rank loads
/// the base itself, rank 0's adapter (and checkpoint) is sent to the others, only the
/// adapter's gradients are summed, and rank 0 alone evaluates and writes.
pub fn finetune_with<B>(
    config: FinetuneConfig,
    options: &FinetuneOptions,
    data_parallel: Option<crate::ddp::DataParallel>,
    device: &B::Device,
) -> Result<FinetuneSummary, TrainError>
where
    B: AutodiffBackend + FusedBackend,
    B::InnerBackend: FusedBackend,
{
    let mut run = FinetuneRun::<B>::open(config, options, data_parallel, device)?;
    while !run.done() {
        let out = run.step()?;
        run.after_step(out)?;
    }
    run.finish()
}

/// A fine-tune in progress.
pub(super) struct FinetuneRun<'a, B: AutodiffBackend + FusedBackend> {
    pub(super) config: FinetuneConfig,
    pub(super) device: &'a B::Device,
    /// Always `Some` between steps.
    pub(super) tuned: Option<Tuned<B>>,
    pub(super) optim: AdamWGroups<Tuned<B>, B>,
    pub(super) state: FinetuneState,
    pub(super) schedule: Box<dyn LrSchedule>,
    pub(super) clipping: crate::trainer::Clipping,
    pub(super) data: SftData,
    pub(super) base: BaseRecord,
    pub(super) arch: HfArch,
    pub(super) params: PeftReport,
    /// AdaLoRA's rank allocator.
    pub(super) allocator: Option<RankAllocator>,
    pub(super) shards: Shards,
    pub(super) n_shards: usize,
    pub(super) checkpoint_dir: PathBuf,
    pub(super) report: Reporter,
    pub(super) elapsed_before: f64,
    pub(super) started: Instant,
    pub(super) step_times: Vec<f64>,
    /// Data-parallel runs: this rank's place among the others.
    pub(super) ranks: Option<Ranks>,
    _lock: RunLock,
    _precision: PrecisionScope,
}

impl<'a, B> FinetuneRun<'a, B>
where
    B: AutodiffBackend + FusedBackend,
    B::InnerBackend: FusedBackend,
{
    pub(super) fn open(
        config: FinetuneConfig,
        options: &FinetuneOptions,
        data_parallel: Option<crate::ddp::DataParallel>,
        device: &'a B::Device,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        // Data-parallel: every rank resumes from rank 0's checkpoint; the others run in
        // a private directory.
        let mut ranks = Ranks::new(data_parallel, None);
        let rank_options;
        let options = match ranks.as_mut() {
            Some(ranks) => {
                ranks.refuse_small_batch(config.train.batch_size)?;
                let (resume, private_out) = ranks.place(options.resume.as_deref(), |path| {
                    Ok(FinetuneCheckpoint::open(path)
                        .map_err(TrainError::Resume)?
                        .dir)
                })?;
                let mut mine = options.clone();
                mine.resume = resume;
                if let Some(out) = private_out {
                    (mine.out_dir, mine.force, mine.verbose) = (out, true, false);
                }
                rank_options = mine;
                &rank_options
            }
            None => options,
        };
        let resume = options
            .resume
            .as_deref()
            .map(FinetuneCheckpoint::open)
            .transpose()
            .map_err(TrainError::Resume)?;
        if let Some(ckpt) = &resume {
            same_setup(&ckpt.config, &config, &ckpt.dir.display().to_string())?;
        }
        crate::trainer::check_backend_for(
            config.train.activation_checkpointing,
            B::recomputes_memory_bound_ops(),
        )?;
        let precision = PrecisionScope::set(
            config.train.matmul_precision,
            crate::config::Precision::F32,
            false,
        );
        let lock = run_dir::lock(&options.out_dir)?;
        let resume_dir = resume.as_ref().map(|c| c.dir.as_path());
        run_dir::check(&options.out_dir, resume_dir, options.force)?;
        let replace = run_dir::replaces_another(&options.out_dir, resume_dir);

        let model_dir = ModelDir::open(&options.model)?;
        let arch = match &model_dir {
            ModelDir::Hf(hf) => hf.arch(),
            ModelDir::Quantized(q) => {
                return Err(ConfigError(format!(
                    "--model {}: holds quantized host-decoder weights (`ember quantize`); fine-tune the model they came from",
                    q.dir.display()
                ))
                .into());
            }
            ModelDir::Ember(_) => ember_hf::export_arch(model_dir.config()).map_err(|e| {
                ConfigError(format!(
                    "--model {}: the adapter is saved in peft's format, which names Hugging Face modules: {e}",
                    options.model.display()
                ))
            })?,
        };
        let max = model_dir.config().max_seq_len;
        let virtual_tokens = if config.peft.method.is_prompt_learning() {
            config.peft.num_virtual_tokens
        } else {
            0
        };
        let block = match config.data.seq_len {
            0 => max.min(1024).saturating_sub(virtual_tokens),
            n => n,
        };
        if block == 0 || block + virtual_tokens > max {
            return Err(ConfigError(format!(
                "data.seq_len: {block} positions{} do not fit the model's context of {max}",
                if virtual_tokens > 0 {
                    format!(" after {virtual_tokens} virtual tokens")
                } else {
                    String::new()
                }
            ))
            .into());
        }
        let framing = Framing::of(&model_dir, "--model")?;
        let data = super::data::load(&options.data, &framing, &config, block)?;

        let base_model = model_dir.load::<B>(device)?;
        let base = BaseRecord {
            fingerprint: base_fingerprint(&base_model),
            model: options.model.display().to_string(),
            params: model_dir.config().num_params(),
        };
        if let Some(ckpt) = &resume {
            // The wrong --model is the user's to fix: a usage error.
            ckpt.check_base(&base.fingerprint, "--model")
                .map_err(|e| ConfigError(format!("--resume {e}")))?;
        }
        let tokenize = |text: &str| match &framing.tokenizer {
            Some(tokenizer) => tokenizer.encode(text).map_err(|e| e.to_string()),
            None => Err("the model has no tokenizer.json".into()),
        };
        let (mut tuned, params) = attach(base_model, &config, &tokenize, device)?;
        // QLoRA freed the f32 base: hand those pages back before training allocates on
        // other threads' heaps, or they stay in the process's peak memory.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free heap memory to the system.
        unsafe {
            libc::malloc_trim(0);
        }
        let settings = AdamWSettings {
            beta1: config.optim.beta1,
            beta2: config.optim.beta2,
            eps: config.optim.eps,
            weight_decay: config.optim.weight_decay,
        };
        let infos = param_infos::<B, _>(&tuned);
        let clipping = crate::trainer::Clipping::new(&config.optim, &infos);
        let infos = infos.into_iter().map(|p| (p.id, p.path, p.shape));
        let mut optim = AdamWGroups::new(&settings, infos, decay_matrices);
        let mut allocator = match config.peft.method {
            PeftMethod::Adalora => Some(
                RankAllocator::new(&tuned.model, &config.adalora())
                    .map_err(|e| ConfigError(e.0))?,
            ),
            _ => None,
        };
        let state = match &resume {
            Some(ckpt) => {
                if ckpt.state.data != data.digest {
                    return Err(ConfigError(format!(
                        "--data {}: not the file {} was trained on ({} bytes, CRC-32 {:08x}; this one {} bytes, CRC-32 {:08x})",
                        options.data.display(),
                        ckpt.dir.display(),
                        ckpt.state.data.bytes,
                        ckpt.state.data.crc32,
                        data.digest.bytes,
                        data.digest.crc32
                    ))
                    .into());
                }
                tuned = ckpt.load_trainable(tuned).map_err(TrainError::Resume)?;
                optim = ckpt
                    .load_optimizer(optim, device)
                    .map_err(TrainError::Resume)?;
                if let Some(allocator) = &mut allocator {
                    ckpt.load_allocator(allocator).map_err(TrainError::Resume)?;
                }
                ckpt.state.clone()
            }
            None => FinetuneState {
                step: 0,
                sampler: if config.data.shuffle {
                    ember_data::sft::RowSampler::new(config.train.seed)
                } else {
                    ember_data::sft::RowSampler::in_order()
                },
                tokens_seen: 0,
                trained_tokens_seen: 0,
                last_train_loss: None,
                last_val_loss: None,
                elapsed_s: 0.0,
                data: data.digest.clone(),
            },
        };
        if let Some(ranks) = ranks.as_mut() {
            // The same fine-tune on every rank (settings, examples, base), from rank 0's
            // adapter; each rank loaded the frozen base itself.
            let data_fingerprint = (data.digest.bytes << 32) ^ u64::from(data.digest.crc32);
            tuned = ranks.agree_on::<B, _>(
                toml::to_string(&config).unwrap_or_default(),
                data_fingerprint,
                Some(base.fingerprint.clone()),
                tuned,
                true,
            )?;
        }
        let schedule = config.optim.schedule(config.train.steps)?;
        let resumed_at = resume.as_ref().map(|c| (c.dir.as_path(), c.state.step));
        let mut report =
            Reporter::open(&options.out_dir, resumed_at, replace, options.verbose, None)?;
        let t = &config.train;
        let no_dropout = config.peft.lora_dropout == 0.0 && tuned.model.config().dropout == 0.0;
        let world = ranks.as_ref().map_or(1, |r| r.world);
        let (shards, n_shards) = Shards::for_run(
            t.batch_shards,
            // A rank's share of each micro-batch.
            t.batch_size.div_ceil(world),
            options.cpu_backend,
            no_dropout,
        )?;
        report.start(t.steps, state.step, || {
            format!(
                "ember finetune: {} ({:?}) on {}\n{}\n{} train / {} val examples in {} / {} rows of {block}; {} truncated, {} dropped; chat template: {}",
                options.model.display(),
                config.peft.method,
                options.data.display(),
                trainable_line(&params),
                data.train_examples,
                data.val_examples,
                data.train.rows(),
                data.val.as_ref().map_or(0, |v| v.rows()),
                data.train.truncated + data.val.as_ref().map_or(0, |v| v.truncated),
                data.train.dropped + data.val.as_ref().map_or(0, |v| v.dropped),
                data.template
            )
        });
        let elapsed_before = if state.elapsed_s.is_finite() && state.elapsed_s > 0.0 {
            state.elapsed_s
        } else {
            0.0
        };
        Ok(Self {
            device,
            tuned: Some(tuned),
            optim,
            state,
            schedule,
            clipping,
            data,
            base,
            arch,
            params,
            allocator,
            shards,
            n_shards,
            checkpoint_dir: options.out_dir.join("checkpoint"),
            report,
            elapsed_before,
            started: Instant::now(),
            step_times: Vec::new(),
            ranks,
            config,
            _lock: lock,
            _precision: precision,
        })
    }

    pub(super) fn done(&self) -> bool {
        self.state.step >= self.config.train.steps
    }

    pub(super) fn tuned(&self) -> &Tuned<B> {
        self.tuned
            .as_ref()
            .expect("the model is in place between steps")
    }

    /// After a step: evaluation, the metrics record and the checkpoint when due.
    pub(super) fn after_step(&mut self, out: super::step::StepOutcome) -> Result<(), TrainError> {
        let t = &self.config.train;
        let step = self.state.step;
        let done = step == t.steps;
        let mut val_loss = None;
        // Data-parallel: rank 0 alone evaluates, records and saves.
        let leads = self.ranks.as_ref().is_none_or(|r| r.leads());
        if leads && t.eval_every > 0 && (step.is_multiple_of(t.eval_every) || done) {
            val_loss = self.evaluate();
            self.state.last_val_loss = val_loss.or(self.state.last_val_loss);
        }
        self.state.elapsed_s = self.elapsed_before + self.started.elapsed().as_secs_f64();
        let tokens_per_s = out.tokens as f64 / (out.step_ms / 1e3);
        if step.is_multiple_of(t.log_every.max(1)) || val_loss.is_some() || done {
            let record = StepMetrics {
                step,
                train_loss: out.train_loss,
                val_loss,
                lr: out.lr,
                grad_norm: out.grad_norm,
                tokens_per_s,
                step_ms: out.step_ms,
                elapsed_s: self.state.elapsed_s,
                batch_shards: self.n_shards,
                ..Default::default()
            };
            self.report.record(&record, t.steps)?;
        }
        self.report.progress(step, out.train_loss, tokens_per_s);
        if (t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every)) || done {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<(), TrainError> {
        if self.ranks.as_ref().is_some_and(|r| !r.leads()) {
            return Ok(());
        }
        checkpoint::save(
            &self.checkpoint_dir,
            SaveParts {
                config: &self.config,
                state: &self.state,
                base: &self.base,
                tuned: self.tuned(),
                optim: &self.optim,
                arch: self.arch,
                allocator: self.allocator.as_ref(),
            },
        )?;
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<FinetuneSummary, TrainError> {
        self.report.finish();
        if !self.checkpoint_dir.exists() {
            self.save()?;
        }
        let val = self.data.val.as_ref();
        Ok(FinetuneSummary {
            checkpoint: self.checkpoint_dir.clone(),
            step: self.state.step,
            last_train_loss: self.state.last_train_loss,
            last_val_loss: self.state.last_val_loss,
            median_step_ms: median_ms(&mut self.step_times),
            tokens_per_step: self.config.train.batch_size
                * self.config.train.grad_accum
                * self.data.train.block,
            params: self.params.clone(),
            train_examples: self.data.train_examples,
            val_examples: self.data.val_examples,
            truncated: self.data.train.truncated + val.map_or(0, |v| v.truncated),
            dropped: self.data.train.dropped + val.map_or(0, |v| v.dropped),
        })
    }
}

/// Refuses to resume with another method or other data settings than the checkpoint's
/// (the adapter or the rows would not be the ones saved); names each differing key.
fn same_setup(
    saved: &FinetuneConfig,
    now: &FinetuneConfig,
    origin: &str,
) -> Result<(), ConfigError> {
    let table = |c: &FinetuneConfig| match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let (a, b) = (table(saved), table(now));
    let mut diff = Vec::new();
    for section in ["peft", "data"] {
        let (Some(x), Some(y)) = (a.get(section), b.get(section)) else {
            continue;
        };
        if let (Some(x), Some(y)) = (x.as_table(), y.as_table()) {
            for (key, value) in x {
                if y.get(key) != Some(value) {
                    diff.push(format!(
                        "{section}.{key}: checkpoint {value}, now {}",
                        y.get(key).map_or("-".into(), ToString::to_string)
                    ));
                }
            }
        }
    }
    if a.get("train").and_then(|t| t.get("seed")) != b.get("train").and_then(|t| t.get("seed")) {
        diff.push("train.seed differs".into());
    }
    if diff.is_empty() {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "--resume {origin}: the fine-tune's settings differ from the checkpoint's ({})",
            diff.join("; ")
        )))
    }
}
