//! Everything a run is made of before its first step: the checkpoint to resume, the run
//! directory's lock and checks, the token cache, the model, optimizer, schedule and
//! objective, the hooks' restored state, and the metrics file.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use ember_data::{BatchSampler, PairSet, TokenSplits, Tokenizer};
use ember_nn::{FusedBackend, Transformer, TransformerConfig, param_infos};
use ember_optim::{AdamWGroups, AdamWSettings, LrSchedule, decay_matrices};

use super::capture::Capture;
use super::clipping::Clipping;
use super::data::RunData;
use super::error::TrainError;
use super::freezing::Freezing;
use super::options::{TrainExtras, TrainOptions};
use super::precision::PrecisionScope;
use super::ranks::Ranks;
use super::report::{MoeTally, Reporter};
use crate::checkpoint::{Checkpoint, TrainState, error};
use crate::config::{ConfigError, TrainConfig};
use crate::hooks::StepHook;
use crate::loss::CrossEntropy;
use crate::objective::Objective;
use crate::run_dir::{self, RunLock};
use crate::shards::Shards;

/// A training run in progress: what its steps read and change.
pub(super) struct Run<'a, B: AutodiffBackend + FusedBackend> {
    pub(super) config: TrainConfig,
    pub(super) device: &'a B::Device,
    /// Always `Some` between steps; taken while the optimizer and hooks own it.
    pub(super) model: Option<Transformer<B>>,
    pub(super) optim: AdamWGroups<Transformer<B>, B>,
    pub(super) state: TrainState,
    pub(super) schedule: Box<dyn LrSchedule>,
    pub(super) clipping: Clipping,
    pub(super) freezing: Freezing,
    pub(super) capture: Option<Capture>,
    pub(super) objective: Box<dyn Objective<B>>,
    pub(super) hooks: Vec<Box<dyn StepHook<B>>>,
    /// Validation loss: plain cross-entropy whatever the objective.
    pub(super) eval_loss: CrossEntropy<B::InnerBackend>,
    pub(super) tokenizer: Tokenizer,
    pub(super) splits: TokenSplits,
    /// `train.objective = "contrastive"`: the pairs its batches and validation draw
    /// from (`splits` then holds no validation tokens).
    pub(super) pairs: Option<PairSet>,
    pub(super) shards: Shards,
    pub(super) n_shards: usize,
    pub(super) tokens_per_step: usize,
    pub(super) checkpoint_dir: PathBuf,
    pub(super) report: Reporter,
    pub(super) tally: MoeTally,
    /// Training time of earlier invocations (a resumed run's).
    pub(super) elapsed_before: f64,
    /// When this invocation's first step began.
    pub(super) started: Instant,
    /// This invocation's optimizer-step times, ms.
    pub(super) step_times: Vec<f64>,
    /// Data-parallel runs: this rank's place among the others.
    pub(super) ranks: Option<Ranks>,
    // Released last, in this order: the directory lock, then the matmul precision.
    _lock: RunLock,
    _precision: PrecisionScope,
}

impl<'a, B> Run<'a, B>
where
    B: AutodiffBackend + FusedBackend,
    B::InnerBackend: FusedBackend,
{
    /// Prepares a run per `config` and `options` (fresh, or resumed from
    /// `options.resume`) up to its first step.
    pub(super) fn open(
        mut config: TrainConfig,
        options: &TrainOptions,
        extras: TrainExtras<B>,
        device: &'a B::Device,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        check_backend_for(
            config.train.activation_checkpointing,
            B::recomputes_memory_bound_ops(),
        )?;
        let TrainExtras {
            objective,
            hooks,
            initial_model,
            same_tokenizer_as,
            observer,
            data_parallel,
        } = extras;
        crate::hooks::validate_names(hooks.iter().map(|hook| hook.name()))
            .map_err(TrainError::Hooks)?;
        // Data-parallel: every rank resumes from rank 0's checkpoint; the others run in
        // a private directory.
        let mut ranks = Ranks::new(data_parallel, config.train.ddp_bucket_mb);
        let rank_options;
        let options = match ranks.as_mut() {
            Some(ranks) => {
                ranks.refuse_unsupported(&config)?;
                let (resume, private_out) = ranks.place(options.resume.as_deref(), |path| {
                    Ok(Checkpoint::open(path).map_err(TrainError::Resume)?.dir)
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
        let precision = PrecisionScope::set(
            config.train.matmul_precision,
            config.train.precision,
            options.cpu_backend,
        );
        let resume = options
            .resume
            .as_deref()
            .map(Checkpoint::open)
            .transpose()
            .map_err(TrainError::Resume)?;
        let lock = run_dir::lock(&options.out_dir)?;
        let resume_dir = resume.as_ref().map(|ckpt| ckpt.dir.as_path());
        run_dir::check(&options.out_dir, resume_dir, options.force)?;
        let replace = run_dir::replaces_another(&options.out_dir, resume_dir);

        let RunData {
            cache,
            splits,
            pairs,
        } = RunData::load(
            &mut config,
            options,
            &same_tokenizer_as,
            objective.is_some(),
        )?;
        let vocab = cache.tokenizer.vocab_size();
        let block = config.model.max_seq_len;
        let contrastive = pairs.is_some();

        let (mut model, state) = model_and_state::<B>(&config, resume.as_ref(), device)?;
        if let Some(initial) = initial_model {
            if resume.is_some() {
                return Err(ConfigError(
                    "--init-from: a resumed run continues from its checkpoint; give one of --init-from and --resume".into(),
                )
                .into());
            }
            model = super::init_from::copy_weights(model, &initial, &config.model)?;
        }
        if let Some(ranks) = ranks.as_mut() {
            // The same run on every rank, from rank 0's weights.
            model = ranks.agree::<B, _>(&config, &splits, model)?;
        }
        let settings = AdamWSettings {
            beta1: config.optim.beta1,
            beta2: config.optim.beta2,
            eps: config.optim.eps,
            weight_decay: config.optim.weight_decay,
        };
        let infos = param_infos::<B, _>(&model);
        let clipping = Clipping::new(&config.optim, &infos);
        let freezing = Freezing::new(&config.train.freeze, &config.train.unfreeze, &infos)?;
        let capture = Capture::new(&config.train, config.model.n_layers, &infos)?;
        let model = match freezing.is_empty() {
            true => model,
            false => freezing.apply(model, state.step),
        };
        let params = infos.into_iter().map(|p| (p.id, p.path, p.shape));
        let mut optim = AdamWGroups::new(&settings, params, decay_matrices);
        // Ember's own hooks first: pruning, then the average of the pruned weights.
        let mut hooks: Vec<Box<dyn StepHook<B>>> = hooks;
        if config.train.ema_decay > 0.0 {
            hooks.insert(
                0,
                Box::new(crate::hooks::Ema::new(config.train.ema_decay, &model)),
            );
        }
        if let Some(prune) = &config.train.prune {
            hooks.insert(
                0,
                Box::new(crate::hooks::GradualPrune::new(prune.clone(), &model)),
            );
        }
        crate::hooks::validate_names(hooks.iter().map(|hook| hook.name()))
            .map_err(TrainError::Hooks)?;
        if let Some(ckpt) = &resume {
            optim = ckpt.load_optimizer(optim, device)?;
            restore_hooks(ckpt, &mut hooks)?;
        }
        let schedule = config.optim.schedule(config.train.steps)?;
        let objective = objective.unwrap_or_else(|| config.train.objective.build::<B>(&config));
        let eval_loss = CrossEntropy::<B::InnerBackend>::new(None, device);

        let resumed_at = resume
            .as_ref()
            .map(|ckpt| (ckpt.dir.as_path(), ckpt.state.step));
        let mut report = Reporter::open(
            &options.out_dir,
            resumed_at,
            replace,
            options.verbose,
            observer,
        )?;
        let t = &config.train;
        let tokens_per_step = t.batch_size * block * t.grad_accum;
        let no_dropout = config.model.dropout == 0.0;
        let world = ranks.as_ref().map_or(1, |r| r.world);
        let (shards, n_shards) = Shards::for_run(
            // In-batch negatives: a contrastive batch runs whole.
            if contrastive { 1 } else { t.batch_shards },
            // A rank's share of each micro-batch.
            t.batch_size.div_ceil(world),
            options.cpu_backend,
            no_dropout,
        )?;
        let packing = if config.data.packing {
            let starts = &splits.train_documents;
            let lengths: Vec<usize> = starts
                .iter()
                .zip(starts.iter().skip(1).chain([&splits.train.len()]))
                .map(|(a, b)| b - a)
                .collect();
            format!(
                ", {} packed documents (boundary targets {:.2}% of positions; padded rows would waste {:.1}%)",
                lengths.len(),
                100.0 * lengths.len().saturating_sub(1) as f64 / splits.train.len() as f64,
                100.0 * ember_data::padded_waste(&lengths, block),
            )
        } else {
            String::new()
        };
        let data = match &pairs {
            Some(p) => format!(
                "{} train / {} held-out pairs{}",
                p.train.len(),
                p.val.len(),
                match p.truncated {
                    0 => String::new(),
                    n => format!(" ({n} texts cut to {block} tokens)"),
                }
            ),
            None => format!(
                "{} train / {} val tokens",
                splits.train.len(),
                splits.val.len()
            ),
        };
        report.start(t.steps, state.step, || {
            format!(
                "ember train: {} parameters, {data}{packing}, vocab {vocab}, {} steps of {tokens_per_step} tokens{}{}{}",
                config.model.num_params(),
                t.steps,
                if n_shards > 1 {
                    format!(", each micro-batch in {n_shards} shards")
                } else {
                    String::new()
                },
                if cache.reused {
                    " (token cache reused)"
                } else {
                    ""
                },
                if world > 1 {
                    format!(", data-parallel over {world} ranks")
                } else {
                    String::new()
                }
            )
        });

        let tally = MoeTally::new(config.model.moe.as_ref().map_or(0, |m| m.n_experts));
        let elapsed_before = if state.elapsed_s.is_finite() && state.elapsed_s > 0.0 {
            state.elapsed_s
        } else {
            0.0
        };
        Ok(Self {
            device,
            model: Some(model),
            optim,
            state,
            schedule,
            clipping,
            freezing,
            capture,
            objective,
            hooks,
            eval_loss,
            tokenizer: cache.tokenizer,
            splits,
            pairs,
            shards,
            n_shards,
            tokens_per_step,
            checkpoint_dir: options.out_dir.join("checkpoint"),
            report,
            tally,
            elapsed_before,
            started: Instant::now(),
            step_times: Vec::new(),
            ranks,
            config,
            _lock: lock,
            _precision: precision,
        })
    }

    /// The model as it stands between steps.
    pub(super) fn model(&self) -> &Transformer<B> {
        self.model
            .as_ref()
            .expect("the model is in place between steps")
    }
}

/// The model and state to start from: fresh (seeded by `train.seed`), or the checkpoint's
/// when its model configuration is this run's.
fn model_and_state<B: AutodiffBackend + FusedBackend>(
    config: &TrainConfig,
    resume: Option<&Checkpoint>,
    device: &B::Device,
) -> Result<(Transformer<B>, TrainState), TrainError> {
    B::seed(device, config.train.seed);
    Ok(match resume {
        Some(ckpt) => {
            let diff = model_diff(&ckpt.config.model, &config.model);
            if !diff.is_empty() {
                return Err(ConfigError(format!(
                    "--resume {}: the model configuration differs from the checkpoint's ({})",
                    ckpt.dir.display(),
                    diff.join("; ")
                ))
                .into());
            }
            (ckpt.load_model::<B>(device)?, ckpt.state.clone())
        }
        None => (
            Transformer::<B>::new(&config.model, device).map_err(|e| ConfigError(e.to_string()))?,
            TrainState {
                step: 0,
                sampler: BatchSampler::new(config.train.seed),
                tokens_seen: 0,
                last_train_loss: None,
                last_val_loss: None,
                elapsed_s: 0.0,
                loss_scale: None,
            },
        ),
    })
}

/// Gives each hook its state saved in `ckpt`; errors name the hook and its file.
fn restore_hooks<B: AutodiffBackend>(
    ckpt: &Checkpoint,
    hooks: &mut [Box<dyn StepHook<B>>],
) -> Result<(), TrainError> {
    let names: Vec<String> = hooks.iter().map(|hook| hook.name().to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let states = ckpt.hook_states(&names).map_err(TrainError::Resume)?;
    for ((hook, name), state) in hooks.iter_mut().zip(&names).zip(states) {
        hook.load_state(state).map_err(|message| {
            TrainError::Resume(error(
                &crate::hooks::json_path(&ckpt.dir, name),
                format!("step hook `{name}` cannot use its saved state: {message}"),
            ))
        })?;
    }
    Ok(())
}

/// A different model configuration between a checkpoint and a resumed run, key by key.
pub(super) fn model_diff(saved: &TransformerConfig, now: &TransformerConfig) -> Vec<String> {
    let to_table = |c: &TransformerConfig| match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let (a, b) = (to_table(saved), to_table(now));
    // Both ways: a key only one side sets (an optional one) is a difference too.
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let show = |v: Option<&toml::Value>| v.map_or("-".into(), |x| x.to_string());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "model.{k}: checkpoint {}, now {}",
                show(a.get(k)),
                show(b.get(k))
            )
        })
        .collect()
}

/// `selective` checkpointing is a property of the autodiff backend (`Autodiff<_,
/// BalancedCheckpointing>`, which `ember train` and `ember finetune` pick for it): the
/// setting and the backend (`recomputes`: whether it recomputes memory-bound ops) must
/// agree.
pub(crate) fn check_backend_for(
    setting: ember_nn::ActivationCheckpointing,
    recomputes: bool,
) -> Result<(), ConfigError> {
    let selective = setting == ember_nn::ActivationCheckpointing::Selective;
    if selective == recomputes {
        return Ok(());
    }
    Err(ConfigError(format!(
        "train.activation_checkpointing = \"{setting}\": {}",
        if selective {
            "this backend keeps every op's output (run on `Autodiff<_, BalancedCheckpointing>`, as `ember train` and `ember finetune` do for this setting)"
        } else {
            "this backend recomputes memory-bound ops, which is the setting \"selective\""
        }
    )))
}
