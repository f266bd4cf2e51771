//! `ember train`: a model from a preset or TOML config, trained on text files.

use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use ember_model::ModelDir;
use ember_nn::{ActivationCheckpointing, FusedBackend};
use ember_train::{CausalLm, Distill, TrainConfig, TrainExtras, TrainOptions, TrainSummary};

use crate::commands::On;
use crate::error::CliError;

#[derive(Args)]
pub struct TrainArgs {
    /// TOML config merged over the preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Named preset: tiny (default), nanogpt-cpu, gpt2, llama, mistral, mixtral.
    #[arg(long)]
    pub preset: Option<String>,
    /// Training text: a file, a directory of text files, or .jsonl with a `text` field.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Override one config value, e.g. `--set train.steps=100`.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory (checkpoint, metrics.jsonl, token cache).
    #[arg(long, default_value = "runs/ember")]
    pub out: PathBuf,
    /// Continue from a checkpoint (or run directory).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start over in (or resume into) an --out that already holds another run, replacing
    /// its checkpoint and metrics.
    #[arg(long)]
    pub force: bool,
    /// No per-step output.
    #[arg(long)]
    pub quiet: bool,
    /// Start from this model's weights (an Ember checkpoint or a Hugging Face directory of
    /// the configuration's shape and the data's tokenizer) instead of a random
    /// initialization: continued pre-training, or recovery after `ember prune`.
    #[arg(long, conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// A live dashboard in the terminal (loss curves, speed, ETA, memory; `q` stops with a
    /// checkpoint). Plain progress lines when stdout is not a terminal.
    #[arg(long, conflicts_with = "quiet")]
    pub tui: bool,
    /// Train data-parallel over N local processes, started through `mpirun`/`mpiexec`
    /// (an `mpi` build of ember and an MPI runtime). Under `mpirun -np N ember train …`
    /// the job's ranks are used and this, if given, must equal N.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
    /// Data-parallel runs: seconds a rank waits in a collective before it ends the job,
    /// naming the ranks that did not answer.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub collective_timeout: f64,
}

/// `ember distill`'s teacher and its weighting.
pub struct Teacher {
    pub dir: PathBuf,
    /// The weight `α` of the soft (teacher) term; `1 − α` goes to the student's own loss.
    pub alpha: f64,
    /// The softmax temperature `T`.
    pub temperature: f64,
}

/// `ember train` on backend `B`.
pub fn run<B: FusedBackend>(on: &On<B>, args: TrainArgs) -> Result<(), CliError> {
    run_with(on, args, None)
}

/// `ember train` (or, with a teacher, `ember distill`) on backend `B`.
pub fn run_with<B: FusedBackend>(
    on: &On<B>,
    args: TrainArgs,
    teacher: Option<Teacher>,
) -> Result<(), CliError> {
    crate::allocator::keep_freed_memory();
    crate::ranks::check_flags(args.nproc, args.collective_timeout)?;
    let config = TrainConfig::resolve(
        args.preset.as_deref(),
        args.config.as_deref(),
        &args.overrides,
    )
    .map_err(|e| CliError::Usage(e.to_string()))?;
    // Inside an MPI job: this process is one rank (the others print and write nothing).
    let data_parallel = crate::ranks::join(args.nproc, args.collective_timeout)?;
    let follower = crate::ranks::is_follower();
    let config_steps = config.train.steps;
    let options = TrainOptions {
        out_dir: args.out.clone(),
        data: args.data.clone(),
        resume: args.resume.clone(),
        force: args.force,
        verbose: !args.quiet && !follower,
        cpu_backend: on.cpu,
    };
    // `selective` checkpointing is burn's balanced strategy: memory-bound ops run again in
    // the backward pass.
    let start = Start {
        init_from: args.init_from.as_deref(),
        teacher: teacher.as_ref(),
        tui: args.tui && !follower,
        data_parallel: std::cell::Cell::new(data_parallel),
    };
    let summary = if config.train.activation_checkpointing == ActivationCheckpointing::Selective {
        start.train::<Autodiff<B, BalancedCheckpointing>, B>(config, &options, &on.device)?
    } else {
        start.train::<Autodiff<B>, B>(config, &options, &on.device)?
    };
    if follower {
        return Ok(());
    }
    let speed = if summary.median_step_ms > 0.0 {
        format!(
            "median {:.1} ms/step ({:.0} tokens/s)",
            summary.median_step_ms,
            summary.tokens_per_step as f64 / (summary.median_step_ms / 1e3)
        )
    } else {
        "no steps run".to_string()
    };
    println!(
        "done: step {} | train loss {} | val loss {} | {speed}",
        summary.step,
        summary
            .last_train_loss
            .map_or("-".into(), |l| format!("{l:.4}")),
        summary
            .last_val_loss
            .map_or("-".into(), |l| format!("{l:.4}")),
    );
    println!("checkpoint: {}", summary.checkpoint.display());
    if summary.stopped {
        println!(
            "stopped at step {} of {} on request; continue with --resume {}",
            summary.step,
            config_steps,
            args.out.display()
        );
    }
    // The run's curves beside its metrics; the trained model is already safe, so a
    // figure that cannot be drawn is a warning.
    let figure = args.out.join("curves.png");
    match ember_plot::plot_runs(std::slice::from_ref(&args.out), &figure) {
        Ok(_) => println!("curves: {}", figure.display()),
        Err(e) => eprintln!("warning: no curves figure: {e}"),
    }
    Ok(())
}

/// What a run starts from beyond its configuration.
struct Start<'a> {
    init_from: Option<&'a Path>,
    teacher: Option<&'a Teacher>,
    /// `--tui`: the dashboard, when stdout is a terminal.
    tui: bool,
    /// This process's place in a data-parallel job (taken by the run).
    data_parallel: std::cell::Cell<Option<ember_train::ddp::DataParallel>>,
}

impl Start<'_> {
    /// Trains on the autodiff backend `A` over `B`, with the initial weights and the
    /// teacher loaded.
    fn train<A, B>(
        &self,
        config: TrainConfig,
        options: &TrainOptions,
        device: &B::Device,
    ) -> Result<TrainSummary, CliError>
    where
        A: AutodiffBackend<InnerBackend = B, Device = B::Device> + FusedBackend,
        B: FusedBackend,
    {
        let mut extras = TrainExtras::<A> {
            data_parallel: self.data_parallel.take(),
            ..Default::default()
        };
        if self.tui {
            use std::io::IsTerminal;
            if std::io::stdout().is_terminal() {
                extras.observer = Some(Box::new(crate::tui::TuiObserver::new()));
            } else {
                eprintln!("--tui: stdout is not a terminal; printing progress lines instead");
            }
        }
        if let Some(path) = self.init_from {
            let flag = format!("--init-from {}", path.display());
            let dir = ModelDir::open(path)?;
            extras.initial_model = Some(dir.load::<A>(device)?);
            let tokenizer = dir.tokenizer().ok_or_else(|| {
                CliError::Usage(format!(
                    "{flag}: has no tokenizer to check against the data's"
                ))
            })?;
            extras.same_tokenizer_as.push((flag, tokenizer.clone()));
        }
        if let Some(teacher) = self.teacher {
            let flag = format!("--teacher {}", teacher.dir.display());
            let dir = ModelDir::open(&teacher.dir)?;
            let context = dir.config().max_seq_len;
            if context < config.model.max_seq_len {
                return Err(CliError::Usage(format!(
                    "{flag}: its context of {context} tokens is shorter than the student's model.max_seq_len = {}",
                    config.model.max_seq_len
                )));
            }
            let tokenizer = dir.tokenizer().ok_or_else(|| {
                CliError::Usage(format!(
                    "{flag}: has no tokenizer to check against the student's"
                ))
            })?;
            if dir.config().vocab_size != tokenizer.vocab_size() {
                return Err(CliError::Usage(format!(
                    "{flag}: its logits cover {} ids but its tokenizer {}; the student's vocabulary must be the teacher's",
                    dir.config().vocab_size,
                    tokenizer.vocab_size()
                )));
            }
            extras.same_tokenizer_as.push((flag, tokenizer.clone()));
            let model = dir.load::<B>(device)?;
            extras.objective = Some(Box::new(Distill::<A>::new(
                model,
                CausalLm::new(&config),
                teacher.alpha,
                teacher.temperature,
            )));
        }
        Ok(ember_train::train_with::<A>(
            config, options, extras, device,
        )?)
    }
}
