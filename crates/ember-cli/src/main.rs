//! `ember`: train, sample from and inspect Ember language models.

mod backend;
mod commands;
mod error;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::backend::BackendName;

#[derive(Parser)]
#[command(
    name = "ember",
    version,
    about = "Train, sample from and inspect transformer language models."
)]
struct Cli {
    /// Compute backend (those compiled in; see `ember --help`).
    #[arg(long, global = true, value_enum, default_value_t = BackendName::default_name())]
    backend: BackendName,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (from a preset or TOML config) on text files.
    Train(TrainArgs),
    /// Generate text from a trained model.
    Generate(GenerateArgs),
    /// Show a checkpoint's configuration, size, step and last validation loss.
    Info(InfoArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    /// TOML config merged over the preset.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Named preset: tiny (default), nanogpt-cpu, gpt2, llama, mistral, mixtral.
    #[arg(long)]
    pub preset: Option<String>,
    /// Training text: a file, a directory of text files, or .jsonl with a `text` field.
    #[arg(long, required = true)]
    pub data: Vec<std::path::PathBuf>,
    /// Override one config value, e.g. `--set train.steps=100`.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory (checkpoint, metrics.jsonl, token cache).
    #[arg(long, default_value = "runs/ember")]
    pub out: std::path::PathBuf,
    /// Continue from a checkpoint (or run directory).
    #[arg(long)]
    pub resume: Option<std::path::PathBuf>,
    /// No per-step output.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Checkpoint directory (or the run directory holding `checkpoint/`).
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Text to continue; defaults to the checkpoint's `sample.prompt`.
    #[arg(long)]
    pub prompt: Option<String>,
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// 0 = off.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// 1.0 = off.
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Recompute the whole context for every token instead of using the KV cache.
    #[arg(long)]
    pub no_cache: bool,
}

#[derive(Args)]
pub struct InfoArgs {
    /// Checkpoint directory (or the run directory holding `checkpoint/`).
    #[arg(long)]
    pub model: std::path::PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = backend::dispatch(cli.backend, |runner| match cli.command {
        Command::Train(args) => runner.train(args),
        Command::Generate(args) => runner.generate(args),
        Command::Info(args) => commands::info(args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
