//! `ember perplexity`: perplexity of a text file, with sliding windows.

use std::path::PathBuf;

use clap::Args;
use ember_nn::FusedBackend;

use crate::commands::On;
use crate::error::CliError;
use ember_model::ModelDir;

#[derive(Args)]
pub struct PerplexityArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Text file to score.
    #[arg(long)]
    pub data: PathBuf,
    /// Tokens between window starts (default: half the window).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Window length in tokens (default and maximum: the model's context).
    #[arg(long)]
    pub context: Option<usize>,
    /// A `peft` adapter directory (LoRA, rsLoRA, DoRA, IA3) or an `ember finetune` run,
    /// merged into the weights before scoring.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

/// `ember perplexity` on backend `B`.
pub fn run<B: FusedBackend>(on: &On<B>, args: PerplexityArgs) -> Result<(), CliError> {
    let dir = ModelDir::open(&args.model)?;
    // The same reader as `ember train --data`: regular text files, directories of them,
    // or `.jsonl`; the same errors and exit codes.
    let text = ember_data::Corpus::read(std::slice::from_ref(&args.data))
        .map_err(|e| CliError::from_data("--data", e))?
        .joined();
    let ids = dir.encode(&text, "--data")?;
    let max = dir.config().max_seq_len;
    let context = args.context.unwrap_or(max);
    if context < 2 || context > max {
        return Err(CliError::Usage(format!(
            "--context: must be between 2 and the model's context of {max}, got {context}"
        )));
    }
    let stride = args.stride.unwrap_or(context.div_ceil(2));
    if stride == 0 || stride > context {
        return Err(CliError::Usage(format!(
            "--stride: must be between 1 and the window of {context} tokens, got {stride}"
        )));
    }
    let model = dir.load::<B>(&on.device)?;
    let adapted = crate::adapter::apply(&dir, model, args.adapter.as_deref(), &on.device)?
        .without_bottleneck("`ember perplexity`")?;
    if adapted.prompt.is_some() {
        return Err(CliError::Usage(
            "--adapter: prefix- and prompt-tuning adapters work with `ember logits` and `ember generate`; perplexity takes projection adapters (LoRA, DoRA, IA3)".into(),
        ));
    }
    let model = adapted.model;
    let result = ember_infer::perplexity(&model, &ids, context, stride, &on.device)
        .map_err(|e| CliError::Usage(format!("--data {}: {e}", args.data.display())))?;
    println!("tokens: {}", result.tokens);
    println!("mean nll: {:.6}", result.mean_nll);
    println!("perplexity: {:.6}", result.perplexity);
    Ok(())
}
