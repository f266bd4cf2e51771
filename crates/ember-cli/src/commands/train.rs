//! `ember train`: a model from a preset or TOML config, trained on text files.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use clap::Args;
use ember_nn::{ActivationCheckpointing, FusedBackend};
use ember_train::{TrainConfig, TrainOptions};

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
}

/// `ember train` on backend `B`.
pub fn run<B: FusedBackend>(on: &On<B>, args: TrainArgs) -> Result<(), CliError> {
    crate::allocator::keep_freed_memory();
    let config = TrainConfig::resolve(
        args.preset.as_deref(),
        args.config.as_deref(),
        &args.overrides,
    )
    .map_err(|e| CliError::Usage(e.to_string()))?;
    let options = TrainOptions {
        out_dir: args.out.clone(),
        data: args.data.clone(),
        resume: args.resume.clone(),
        force: args.force,
        verbose: !args.quiet,
        cpu_backend: on.cpu,
    };
    // `selective` checkpointing is burn's balanced strategy: memory-bound ops run again in
    // the backward pass.
    let summary = if config.train.activation_checkpointing == ActivationCheckpointing::Selective {
        ember_train::train::<Autodiff<B, BalancedCheckpointing>>(config, &options, &on.device)?
    } else {
        ember_train::train::<Autodiff<B>>(config, &options, &on.device)?
    };
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
    Ok(())
}
