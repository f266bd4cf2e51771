//! The step-based training loop.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use ember_data::{Batch, BatchSampler, TokenCache, TokenSplits, Tokenizer};
use ember_nn::FusedBackend;
use ember_nn::{ForwardOptions, MoeLosses, Transformer, param_infos};
use ember_ops::fused::{MatmulPrecision, matmul_precision, set_matmul_precision};
use ember_optim::{AdamWGroups, AdamWSettings, clip_global_norm, decay_matrices};
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::{self, Checkpoint, CheckpointError, TrainState};
use crate::config::{ConfigError, TrainConfig};
use crate::loss::{CrossEntropy, LmLoss};
use crate::metrics::StepMetrics;
use crate::run_dir;
use crate::shards::Shards;

/// Where the run reads and writes.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Run directory: `checkpoint/`, `metrics.jsonl` and the token cache `data/` go here.
    pub out_dir: PathBuf,
    /// Text files, directories or `.jsonl` files.
    pub data: Vec<PathBuf>,
    /// A checkpoint (or run directory) to continue from.
    pub resume: Option<PathBuf>,
    /// Start in (or resume into) an `out_dir` holding another run, replacing it.
    pub force: bool,
    /// Log lines on stderr/stdout; `false` silences the loop (tests).
    pub verbose: bool,
    /// Whether the backend computes on this machine's CPU cores (Flex): then
    /// `train.batch_shards = 0` shards each micro-batch over the cores.
    pub cpu_backend: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub checkpoint: PathBuf,
    pub step: usize,
    pub last_train_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    /// Median optimizer-step time of this invocation (evaluation excluded).
    pub median_step_ms: f64,
    pub tokens_per_step: usize,
    /// MoE models: share of routed assignments per expert over this invocation, all
    /// layers together.
    pub expert_load: Option<Vec<f64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Data(#[from] ember_data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint `--resume` names cannot be used.
    #[error("--resume {0}")]
    Resume(CheckpointError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: usize, loss: f64 },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Turns a batch into `([batch, block], [batch, block])` int tensors.
fn batch_tensors<B: Backend>(
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let shape = [batch.batch, batch.block];
    (
        Tensor::from_data(TensorData::new(batch.inputs.clone(), shape), device),
        Tensor::from_data(TensorData::new(batch.targets.clone(), shape), device),
    )
}

/// What one micro-batch (or one shard of it) contributes to a step.
struct MicroBatch {
    /// Gradients of `weight × loss`.
    grads: GradientsParams,
    /// The share of the step this micro-batch stands for (rows / step rows).
    weight: f64,
    /// Mean token cross-entropy over its rows.
    lm_loss: f64,
    moe: Option<MoeStats>,
}

/// A micro-batch's MoE auxiliary losses (unweighted) and routing counts.
struct MoeStats {
    balance: f64,
    z: f64,
    load: Vec<Vec<usize>>,
    dropped: usize,
}

/// Forward and backward over `batch`; the loss is scaled by `weight` before the backward
/// pass, so summing the gradients of a step's micro-batches gives the step's mean.
fn micro_batch<B>(
    model: &Transformer<B>,
    batch: &Batch,
    weight: f64,
    moe_config: Option<&ember_nn::MoeConfig>,
    label_smoothing: Option<f32>,
    device: &B::Device,
) -> MicroBatch
where
    B: AutodiffBackend + FusedBackend,
{
    let (inputs, targets) = batch_tensors::<B>(batch, device);
    let mut moe_losses = MoeLosses::default();
    let options = ForwardOptions {
        moe: moe_config.is_some().then_some(&mut moe_losses),
        ..Default::default()
    };
    let logits = model.forward(inputs, options);
    let lm_loss = CrossEntropy::<B>::new(label_smoothing, device).loss(logits, targets);
    let mut loss = lm_loss.clone();
    let mut moe = None;
    if let (Some(config), Some(balance), Some(z)) =
        (moe_config, moe_losses.balance_loss, moe_losses.z_loss)
    {
        moe = Some(MoeStats {
            balance: balance.clone().into_scalar().elem::<f64>(),
            z: z.clone().into_scalar().elem::<f64>(),
            load: moe_losses.load,
            dropped: moe_losses.dropped,
        });
        loss = loss + balance.mul_scalar(config.aux_loss_coef) + z.mul_scalar(config.z_loss_coef);
    }
    let loss = if weight != 1.0 {
        loss.mul_scalar(weight)
    } else {
        loss
    };
    MicroBatch {
        grads: GradientsParams::from_grads(loss.backward(), model),
        weight,
        lm_loss: lm_loss.into_scalar().elem::<f64>(),
        moe,
    }
}

/// Mean loss over `n_batches` batches drawn from `tokens` with a fixed seed, so every
/// evaluation of a run sees the same windows.
pub fn evaluate<B: FusedBackend>(
    model: &Transformer<B>,
    loss_fn: &dyn LmLoss<B>,
    tokens: &[u32],
    n_batches: usize,
    batch_size: usize,
    seed: u64,
    device: &B::Device,
) -> f64 {
    let block = model.config().max_seq_len;
    let mut sampler = BatchSampler::new(seed);
    let mut total = 0.0;
    for _ in 0..n_batches {
        let (inputs, targets) =
            batch_tensors::<B>(&sampler.sample(tokens, batch_size, block), device);
        let logits = model.forward(inputs, ForwardOptions::default());
        total += loss_fn.loss(logits, targets).into_scalar().elem::<f64>();
    }
    total / n_batches as f64
}

/// A different model configuration between a checkpoint and a resumed run, key by key.
fn model_diff(
    saved: &ember_nn::TransformerConfig,
    now: &ember_nn::TransformerConfig,
) -> Vec<String> {
    let to_table = |c: &ember_nn::TransformerConfig| match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let (a, b) = (to_table(saved), to_table(now));
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| {
            format!(
                "model.{k}: checkpoint {v}, now {}",
                b.get(k).map_or("-".into(), |x| x.to_string())
            )
        })
        .collect()
}

/// Sets the process's matmul precision for a training run and restores the previous one
/// when the run ends, however it ends.
struct PrecisionScope(MatmulPrecision);

impl PrecisionScope {
    fn set(precision: MatmulPrecision) -> Self {
        if precision == MatmulPrecision::Bf16 && !ember_ops::kernels::cpu_features::avx512_bf16() {
            eprintln!(
                "note: train.matmul_precision = \"bf16\": this CPU lacks AVX512-BF16, so CPU \
                 backends emulate it (slower than f32)"
            );
        }
        let previous = matmul_precision();
        set_matmul_precision(precision);
        Self(previous)
    }
}

impl Drop for PrecisionScope {
    fn drop(&mut self) {
        set_matmul_precision(self.0);
    }
}

/// Trains a model per `config` (see [`TrainOptions`]) and leaves a checkpoint in
/// `out_dir/checkpoint`.
pub fn train<B>(
    mut config: TrainConfig,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<TrainSummary, TrainError>
where
    B: AutodiffBackend + FusedBackend,
    B::InnerBackend: FusedBackend,
{
    config.validate()?;
    let _precision = PrecisionScope::set(config.train.matmul_precision);
    let resume = options
        .resume
        .as_deref()
        .map(Checkpoint::open)
        .transpose()
        .map_err(TrainError::Resume)?;
    let _lock = run_dir::lock(&options.out_dir)?;
    run_dir::check(&options.out_dir, resume.as_ref(), options.force)?;
    let replace = run_dir::replaces_another(&options.out_dir, resume.as_ref());

    // Data: tokenized once into out_dir/data and reused while unchanged.
    let kind = config.tokenizer_kind()?;
    let cache = TokenCache::load_or_build(&options.out_dir.join("data"), &options.data, kind)?;
    let tokenizer: Tokenizer = cache.tokenizer.clone();
    let vocab = tokenizer.vocab_size();
    if config.model.vocab_size != 0 && config.model.vocab_size != vocab {
        return Err(ConfigError(format!(
            "model.vocab_size: {} does not match the tokenizer's {vocab}",
            config.model.vocab_size
        ))
        .into());
    }
    config.model.vocab_size = vocab;
    if options.cpu_backend {
        // Activations live in host memory only on CPU backends.
        crate::footprint::check(&config)?;
    }
    let block = config.model.max_seq_len;
    let splits = TokenSplits::new(&cache.tokens, config.data.val_fraction, block)?;

    // Model, optimizer and state: fresh, or from the checkpoint.
    B::seed(device, config.train.seed);
    let (mut model, mut state) = match &resume {
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
            },
        ),
    };
    let settings = AdamWSettings {
        beta1: config.optim.beta1,
        beta2: config.optim.beta2,
        eps: config.optim.eps,
        weight_decay: config.optim.weight_decay,
    };
    let params = param_infos::<B, _>(&model)
        .into_iter()
        .map(|p| (p.id, p.path, p.shape));
    let mut optim = AdamWGroups::new(&settings, params, decay_matrices);
    if let Some(ckpt) = &resume {
        optim = ckpt.load_optimizer(optim, device)?;
    }
    let schedule = config.optim.schedule.build(
        config.optim.lr,
        config.optim.min_lr,
        config.optim.warmup_steps,
        config.optim.decay_steps,
    );
    let eval_loss_fn = CrossEntropy::<B::InnerBackend>::new(None, device);

    run_dir::start_metrics(&options.out_dir, resume.as_ref(), replace)?;
    let metrics_path = run_dir::metrics_path(&options.out_dir);
    let mut metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(io_error(&metrics_path))?;
    let checkpoint_dir = options.out_dir.join("checkpoint");

    let t = &config.train;
    let tokens_per_step = t.batch_size * block * t.grad_accum;
    let n_shards = match t.batch_shards {
        0 if options.cpu_backend && config.model.dropout == 0.0 => {
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(t.batch_size)
        }
        0 => 1,
        n => n,
    };
    let shards = Shards::new(n_shards).map_err(|e| {
        ConfigError(format!(
            "train.batch_shards: cannot start {n_shards} shard threads: {e}"
        ))
    })?;
    let progress = (options.verbose && std::io::stdout().is_terminal()).then(|| {
        let bar = ProgressBar::new(t.steps as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}")
                .expect("a valid template"),
        );
        bar.set_position(state.step as u64);
        bar
    });
    if options.verbose {
        let line = format!(
            "ember train: {} parameters, {} train / {} val tokens, vocab {vocab}, {} steps of {tokens_per_step} tokens{}{}",
            config.model.num_params(),
            splits.train.len(),
            splits.val.len(),
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
            }
        );
        match &progress {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    let moe_config = config.model.moe.clone();
    let label_smoothing = (t.label_smoothing > 0.0).then_some(t.label_smoothing as f32);
    let mut tally = MoeTally::new(moe_config.as_ref().map_or(0, |m| m.n_experts));
    // Time of earlier invocations (a resumed run's), plus this one's.
    let elapsed_before = if state.elapsed_s.is_finite() && state.elapsed_s > 0.0 {
        state.elapsed_s
    } else {
        0.0
    };
    let started = Instant::now();
    let mut step_times = Vec::new();
    while state.step < t.steps {
        let step = state.step;
        let step_start = Instant::now();
        // Dropout draws from the backend RNG; seeding it per step keeps resumes exact.
        B::seed(device, t.seed.wrapping_add(step as u64 + 1));
        let mut accumulator = GradientsAccumulator::<Transformer<B>>::new();
        let mut train_loss = 0.0;
        tally.start_step();
        for _ in 0..t.grad_accum {
            let batch = state.sampler.sample(&splits.train, t.batch_size, block);
            let parts = shards.run(&model, &batch, |model, rows, weight| {
                micro_batch(
                    model,
                    rows,
                    weight / t.grad_accum as f64,
                    moe_config.as_ref(),
                    label_smoothing,
                    device,
                )
            });
            for part in parts {
                train_loss += part.lm_loss * part.weight;
                if let Some(moe) = part.moe {
                    tally.add(
                        moe.balance * part.weight,
                        moe.z * part.weight,
                        &moe.load,
                        moe.dropped,
                    );
                }
                accumulator.accumulate(&model, part.grads);
            }
        }
        if !train_loss.is_finite() {
            return Err(TrainError::Diverged {
                step,
                loss: train_loss,
            });
        }
        let mut grads = accumulator.grads();
        let grad_norm = if config.optim.grad_clip > 0.0 {
            clip_global_norm(&model, &mut grads, config.optim.grad_clip)
        } else {
            ember_optim::global_grad_norm(&model, &grads)
        };
        let lr = schedule.lr_at(step);
        model = optim.step(lr, model, grads);
        let step_ms = step_start.elapsed().as_secs_f64() * 1e3;
        step_times.push(step_ms);

        state.step += 1;
        state.tokens_seen = state.tokens_seen.saturating_add(tokens_per_step as u64);
        state.last_train_loss = Some(train_loss);

        let done = state.step == t.steps;
        let mut val_loss = None;
        if t.eval_every > 0 && (state.step % t.eval_every == 0 || done) {
            let loss = evaluate(
                &model.valid(),
                &eval_loss_fn,
                &splits.val,
                t.eval_batches,
                t.batch_size,
                t.seed ^ 0x5eed_5eed_5eed_5eed,
                device,
            );
            state.last_val_loss = Some(loss);
            val_loss = Some(loss);
        }
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();

        if state.step % t.log_every.max(1) == 0 || val_loss.is_some() || done {
            let mut record = StepMetrics {
                step: state.step,
                train_loss,
                val_loss,
                lr,
                grad_norm,
                tokens_per_s: tokens_per_step as f64 / (step_ms / 1e3),
                step_ms,
                elapsed_s: state.elapsed_s,
                batch_shards: n_shards,
                ..Default::default()
            };
            if moe_config.is_some() {
                tally.fill(&mut record);
            }
            writeln!(metrics_file, "{}", serde_json::to_string(&record).unwrap())
                .map_err(io_error(&metrics_path))?;
            if options.verbose {
                let mut val = val_loss.map_or(String::new(), |v| format!(" | val {v:.4}"));
                if let Some(load) = &record.expert_load {
                    let load: Vec<String> =
                        load.iter().map(|s| format!("{:.0}%", s * 100.0)).collect();
                    val += &format!(
                        " | balance {:.3} z {:.3} | experts {}",
                        record.moe_balance_loss.unwrap_or(f64::NAN),
                        record.moe_z_loss.unwrap_or(f64::NAN),
                        load.join(" ")
                    );
                }
                let line = format!(
                    "step {:>5}/{} | loss {train_loss:.4}{val} | lr {lr:.2e} | grad {grad_norm:.3} | {:.0} tok/s | {step_ms:.1} ms | {:.1}s",
                    state.step, t.steps, record.tokens_per_s, state.elapsed_s
                );
                match &progress {
                    Some(bar) if val_loss.is_some() => bar.println(line),
                    Some(_) => {}
                    None => println!("{line}"),
                }
            }
        }
        if let Some(bar) = &progress {
            bar.set_position(state.step as u64);
            bar.set_message(format!(
                "loss {train_loss:.4} | {:.0} tok/s",
                tokens_per_step as f64 / (step_ms / 1e3)
            ));
        }
        let periodic = t.checkpoint_every > 0 && state.step % t.checkpoint_every == 0;
        if periodic || done {
            checkpoint::save(&checkpoint_dir, &config, &state, &model, &optim, &tokenizer)?;
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if !checkpoint_dir.exists() {
        // Resumed at or past the final step: still leave a checkpoint behind.
        checkpoint::save(&checkpoint_dir, &config, &state, &model, &optim, &tokenizer)?;
    }
    step_times.sort_by(f64::total_cmp);
    Ok(TrainSummary {
        checkpoint: checkpoint_dir,
        step: state.step,
        last_train_loss: state.last_train_loss,
        last_val_loss: state.last_val_loss,
        median_step_ms: step_times.get(step_times.len() / 2).copied().unwrap_or(0.0),
        tokens_per_step,
        expert_load: moe_config.is_some().then(|| shares(&tally.total)),
    })
}

/// Each expert's share of `load`.
fn shares(load: &[usize]) -> Vec<f64> {
    let total = load.iter().sum::<usize>().max(1) as f64;
    load.iter().map(|&n| n as f64 / total).collect()
}

/// MoE routing statistics between metric records, and over the run.
struct MoeTally {
    /// The last step's balance and z-loss (mean over its micro-batches).
    balance: f64,
    z: f64,
    since_log: Vec<usize>,
    total: Vec<usize>,
    dropped_since_log: usize,
}

impl MoeTally {
    fn new(n_experts: usize) -> Self {
        Self {
            balance: 0.0,
            z: 0.0,
            since_log: vec![0; n_experts],
            total: vec![0; n_experts],
            dropped_since_log: 0,
        }
    }

    /// One micro-batch: its share of the step's losses, and each layer's expert loads.
    fn add(&mut self, balance: f64, z: f64, load: &[Vec<usize>], dropped: usize) {
        self.balance += balance;
        self.z += z;
        for layer in load {
            for ((since, total), n) in self.since_log.iter_mut().zip(&mut self.total).zip(layer) {
                *since += n;
                *total += n;
            }
        }
        self.dropped_since_log += dropped;
    }

    /// Writes the step's MoE fields into `record` and starts the next interval.
    fn fill(&mut self, record: &mut StepMetrics) {
        record.moe_balance_loss = Some(self.balance);
        record.moe_z_loss = Some(self.z);
        record.expert_load = Some(shares(&self.since_log));
        record.moe_dropped = Some(self.dropped_since_log);
        self.since_log.iter_mut().for_each(|n| *n = 0);
        self.dropped_since_log = 0;
    }

    /// Starts a step.
    fn start_step(&mut self) {
        self.balance = 0.0;
        self.z = 0.0;
    }
}
