//! `ember finetune`: a parameter-efficient adapter trained on a base model from examples.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use clap::Args;
use ember_nn::{ActivationCheckpointing, FusedBackend};
use ember_train::finetune::{FinetuneCheckpoint, FinetuneSources, trainable_line};
use ember_train::{FinetuneConfig, FinetuneOptions};

use crate::commands::On;
use crate::error::CliError;

#[derive(Args)]
pub struct FinetuneArgs {
    /// The base model: a Hugging Face directory or an Ember checkpoint.
    #[arg(long)]
    pub model: PathBuf,
    /// Examples, one JSON object a line: {"prompt", "completion"}, {"messages": [...]} or {"text"}.
    #[arg(long)]
    pub data: PathBuf,
    /// Method preset: lora (default), dora, ia3, prefix, prompt.
    #[arg(long)]
    pub method: Option<String>,
    /// TOML config merged over the method preset ([peft], [data], [optim], [train]).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A peft adapter_config.json (or its directory) giving the [peft] settings.
    #[arg(long = "adapter-config")]
    pub adapter_config: Option<PathBuf>,
    /// Override one config value, e.g. `--set peft.r=16`.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory: checkpoint/ (the adapter, in peft's format) and metrics.jsonl.
    #[arg(long, default_value = "runs/finetune")]
    pub out: PathBuf,
    /// Continue a fine-tune from its checkpoint (or run directory), with its saved
    /// settings (--set may change the loop's, e.g. train.steps).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start over in (or resume into) an --out that already holds another run.
    #[arg(long)]
    pub force: bool,
    /// No per-step output.
    #[arg(long)]
    pub quiet: bool,
    /// Fine-tune data-parallel over N local processes, started through `mpirun`/`mpiexec`
    /// (an `mpi` build of ember and an MPI runtime); under `mpirun -np N ember finetune …`
    /// the job's ranks are used and this, if given, must equal N.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
    /// Data-parallel runs: seconds a rank waits in a collective before it ends the job,
    /// naming the ranks that did not answer.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub collective_timeout: f64,
}

/// `ember finetune` on backend `B`.
pub fn run<B: FusedBackend>(on: &On<B>, args: FinetuneArgs) -> Result<(), CliError> {
    crate::allocator::keep_freed_memory();
    crate::ranks::check_flags(args.nproc, args.collective_timeout)?;
    // A resume starts from the checkpoint's settings; flags change them from there.
    let saved = match &args.resume {
        Some(path) => Some(
            FinetuneCheckpoint::open(path)
                .map_err(|e| CliError::Runtime(format!("--resume {e}")))?
                .config,
        ),
        None => None,
    };
    let config = FinetuneConfig::resolve(&FinetuneSources {
        method: args.method.as_deref(),
        file: args.config.as_deref(),
        adapter_config: args.adapter_config.as_deref(),
        overrides: &args.overrides,
        saved: saved.as_ref(),
    })
    .map_err(|e| CliError::Usage(e.to_string()))?;
    // Inside an MPI job: this process is one rank (the others print and write nothing).
    let data_parallel = crate::ranks::join(args.nproc, args.collective_timeout)?;
    let follower = crate::ranks::is_follower();
    let options = FinetuneOptions {
        model: args.model,
        data: args.data,
        out_dir: args.out,
        resume: args.resume,
        force: args.force,
        verbose: !args.quiet && !follower,
        cpu_backend: on.cpu,
    };
    // `selective` checkpointing is burn's balanced strategy (as for `ember train`).
    let summary = if config.train.activation_checkpointing == ActivationCheckpointing::Selective {
        ember_train::finetune_with::<Autodiff<B, BalancedCheckpointing>>(
            config,
            &options,
            data_parallel,
            &on.device,
        )?
    } else {
        ember_train::finetune_with::<Autodiff<B>>(config, &options, data_parallel, &on.device)?
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
    println!("{}", trainable_line(&summary.params));
    println!(
        "examples: {} train, {} val; {} truncated, {} dropped",
        summary.train_examples, summary.val_examples, summary.truncated, summary.dropped
    );
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
    println!("adapter: {}", summary.checkpoint.display());
    Ok(())
}
