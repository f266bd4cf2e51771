//! `ember`: train, sample from and inspect Ember language models.

mod adapter;
mod allocator;
mod backend;
mod commands;
mod error;
mod ids;
mod ranks;
mod tui;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands::attention::AttentionArgs;
use crate::commands::chat::ChatArgs;
use crate::commands::distill::DistillArgs;
use crate::commands::eval::EvalArgs;
use crate::commands::export::ExportArgs;
use crate::commands::finetune::FinetuneArgs;
use crate::commands::generate::GenerateArgs;
use crate::commands::info::InfoArgs;
use crate::commands::logits::LogitsArgs;
use crate::commands::merge::MergeArgs;
use crate::commands::perplexity::PerplexityArgs;
use crate::commands::plot::PlotArgs;
use crate::commands::prune::PruneArgs;
use crate::commands::quantize::QuantizeArgs;
use crate::commands::serve::ServeArgs;
use crate::commands::soup::SoupArgs;
use crate::commands::train::TrainArgs;

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
    /// Train a student on text files with a teacher's soft targets (knowledge distillation).
    Distill(DistillArgs),
    /// Fine-tune a model with LoRA, DoRA, IA3, prefix or prompt tuning on a .jsonl of examples.
    Finetune(FinetuneArgs),
    /// Generate text (or token ids) from an Ember checkpoint or a Hugging Face model.
    Generate(GenerateArgs),
    /// Write the logits of one token sequence to a safetensors file.
    Logits(LogitsArgs),
    /// Perplexity of a text file, with sliding windows.
    Perplexity(PerplexityArgs),
    /// Write a model as a Hugging Face directory (config.json, model.safetensors, tokenizer.json).
    Export(ExportArgs),
    /// Merge a `peft` adapter into a base model and write it as a Hugging Face directory.
    Merge(MergeArgs),
    /// Serve a model over an OpenAI-compatible HTTP API (continuous batching, paged KV cache).
    Serve(ServeArgs),
    /// Store a model's weights as int8 or 4-bit for the host decoder (what `generate` and `serve` load).
    Quantize(QuantizeArgs),
    /// Zero a model's smallest block weights (magnitude pruning) and write it as a Hugging Face directory.
    Prune(PruneArgs),
    /// Average models of one shape (uniform or greedy soup) into a Hugging Face directory.
    Soup(SoupArgs),
    /// Generate completions of a .jsonl of prompts (or read predictions) and score them:
    /// BLEU, chrF, ROUGE, exact match, perplexity.
    Eval(EvalArgs),
    /// Heatmaps and a summary of a prompt's attention (per-head patterns, entropy, rollout).
    Attention(AttentionArgs),
    /// Training curves of one or more runs (loss, learning rate, gradient norm, tokens/s).
    Plot(PlotArgs),
    /// Chat with a model in the terminal through its chat template, replies streamed.
    Chat(ChatArgs),
    /// Show a model's configuration and size (and a checkpoint's step and last validation loss).
    Info(InfoArgs),
}

fn main() -> ExitCode {
    // Die quietly when stdout is a closed pipe (`ember info | head`), like other Unix
    // tools, instead of panicking in `println!`.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    // `--nproc N` outside an MPI job: this command again as N ranks under mpirun.
    let (nproc, timeout) = match &cli.command {
        Command::Train(args) => (args.nproc, args.collective_timeout),
        Command::Distill(args) => (args.student.nproc, args.student.collective_timeout),
        Command::Finetune(args) => (args.nproc, args.collective_timeout),
        _ => (None, 1.0),
    };
    if let Err(err) = ranks::check_flags(nproc, timeout) {
        eprintln!("error: {err}");
        return ExitCode::from(err.exit_code());
    }
    if let Some(n) = nproc.filter(|&n| n > 1)
        && !ember_train::ddp::launched_by_mpi()
        && std::env::var_os(ranks::CHILD).is_none()
    {
        return ranks::launch(n).unwrap_or_else(|err| {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        });
    }
    let result = backend::dispatch(cli.backend, |runner| match cli.command {
        Command::Train(args) => runner.train(args),
        Command::Finetune(args) => runner.finetune(args),
        Command::Generate(args) => runner.generate(args),
        Command::Logits(args) => runner.logits(args),
        Command::Perplexity(args) => runner.perplexity(args),
        Command::Export(args) => runner.export(args),
        Command::Merge(args) => runner.export(args.into()),
        Command::Serve(args) => runner.serve(args),
        Command::Quantize(args) => runner.quantize(args),
        Command::Prune(args) => runner.prune(args),
        Command::Distill(args) => runner.distill(args),
        Command::Soup(args) => runner.soup(args),
        Command::Eval(args) => runner.eval(args),
        Command::Attention(args) => runner.attention(args),
        Command::Chat(args) => runner.chat(args),
        Command::Plot(args) => commands::plot::run(args),
        Command::Info(args) => commands::info::run(args),
    });
    match result {
        Ok(()) => {
            ranks::finish();
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {}{err}", ranks::rank_label());
            // A rank of a data-parallel job ends the others too.
            ranks::stop_job(err.exit_code());
            ExitCode::from(err.exit_code())
        }
    }
}
