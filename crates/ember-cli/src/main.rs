//! `ember`: train, sample from and inspect Ember language models.

mod backend;
mod commands;
mod error;
mod model_dir;

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
    /// Generate text (or token ids) from an Ember checkpoint or a Hugging Face model.
    Generate(GenerateArgs),
    /// Write the logits of one token sequence to a safetensors file.
    Logits(LogitsArgs),
    /// Perplexity of a text file, with sliding windows.
    Perplexity(PerplexityArgs),
    /// Write a model as a Hugging Face directory (config.json, model.safetensors, tokenizer.json).
    Export(ExportArgs),
    /// Show a model's configuration and size (and a checkpoint's step and last validation loss).
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
    /// Start over in (or resume into) an --out that already holds another run, replacing
    /// its checkpoint and metrics.
    #[arg(long)]
    pub force: bool,
    /// No per-step output.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Text to continue; defaults to the checkpoint's `sample.prompt`.
    #[arg(long, conflicts_with = "ids")]
    pub prompt: Option<String>,
    /// Token ids to continue instead of text, e.g. `1,2,3`.
    #[arg(long)]
    pub ids: Option<String>,
    /// Print only the new token ids, comma-separated.
    #[arg(long)]
    pub print_ids: bool,
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
    /// Who decodes: `auto` (the host decoder on CPU backends when it supports the model,
    /// else burn), `burn`, `host` (f32 weights, the same numbers as burn) or `host-int8`
    /// (int8 weights with block scales: faster, approximate).
    #[arg(long, value_enum, default_value_t = DecoderArg::Auto)]
    pub decoder: DecoderArg,
    /// Print prefill and decoding speed to stderr.
    #[arg(long)]
    pub stats: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecoderArg {
    Auto,
    Burn,
    Host,
    HostInt8,
}

#[derive(Args)]
pub struct LogitsArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Token ids, e.g. `1,2,3`.
    #[arg(long, required_unless_present = "prompt")]
    pub ids: Option<String>,
    /// Text to encode instead of ids.
    #[arg(long, conflicts_with = "ids")]
    pub prompt: Option<String>,
    /// Output file: one f32 tensor `logits` of shape `[T, vocab]`.
    #[arg(long)]
    pub out: std::path::PathBuf,
}

#[derive(Args)]
pub struct PerplexityArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Text file to score.
    #[arg(long)]
    pub data: std::path::PathBuf,
    /// Tokens between window starts (default: half the window).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Window length in tokens (default and maximum: the model's context).
    #[arg(long)]
    pub context: Option<usize>,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Output directory: new, empty, or an earlier export (replaced atomically).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Replace --out even when it is a file or a directory of something else.
    #[arg(long)]
    pub force: bool,
    /// Element type of the written weights.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Args)]
pub struct InfoArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: std::path::PathBuf,
}

fn main() -> ExitCode {
    // Die quietly when stdout is a closed pipe (`ember info | head`), like other Unix
    // tools, instead of panicking in `println!`.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = backend::dispatch(cli.backend, |runner| match cli.command {
        Command::Train(args) => runner.train(args),
        Command::Generate(args) => runner.generate(args),
        Command::Logits(args) => runner.logits(args),
        Command::Perplexity(args) => runner.perplexity(args),
        Command::Export(args) => runner.export(args),
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
