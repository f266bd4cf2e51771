//! `ember attention`: the attention probabilities of a prompt as heatmaps (one head with
//! token labels, every head of a layer, every layer × head), attention rollout, and a
//! JSON summary of per-head entropy and patterns; `--compare A B` does it for two models
//! and writes how each head changed.

use std::path::{Path, PathBuf};

use clap::Args;
use ember_eval::attention::{
    AttentionSummary, Comparison, HeadSelection, attention_maps, write_report,
};
use ember_model::ModelDir;
use ember_nn::FusedBackend;

use crate::commands::On;
use crate::error::CliError;

/// Prompt tokens at most: the maps take `layers · heads · n²` floats and the figures
/// `n²` cells per head.
const MAX_PROMPT_TOKENS: usize = 512;

#[derive(Args)]
pub struct AttentionArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long, required_unless_present = "compare", conflicts_with = "compare")]
    pub model: Option<PathBuf>,
    /// The text whose attention is shown.
    #[arg(long)]
    pub prompt: String,
    /// Draw this layer's figures only, with a labelled heatmap per head (the overview,
    /// rollout and summary cover every layer).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Draw this head's labelled heatmap (of each drawn layer).
    #[arg(long)]
    pub head: Option<usize>,
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Two models (e.g. untrained and trained checkpoints) analysed on the same prompt:
    /// their reports in OUT/a and OUT/b, the head-by-head changes in OUT/compare.json.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub compare: Option<Vec<PathBuf>>,
}

/// One model's analysis written to `out`; returns its summary.
fn analyse<B: FusedBackend>(
    on: &On<B>,
    model: &Path,
    args: &AttentionArgs,
    out: &Path,
) -> Result<(AttentionSummary, Vec<u32>), CliError> {
    let dir = ModelDir::open(model)?;
    let config = dir.config().clone();
    if let Some(layer) = args.layer
        && layer >= config.n_layers
    {
        return Err(CliError::Usage(format!(
            "--layer {layer}: {} has {} layers (0 to {})",
            model.display(),
            config.n_layers,
            config.n_layers - 1
        )));
    }
    if let Some(head) = args.head
        && head >= config.n_heads
    {
        return Err(CliError::Usage(format!(
            "--head {head}: {} has {} heads per layer (0 to {})",
            model.display(),
            config.n_heads,
            config.n_heads - 1
        )));
    }
    if dir.tokenizer().is_none() {
        return Err(CliError::Usage(format!(
            "--model {}: has no tokenizer (tokenizer.json) to turn --prompt into tokens",
            model.display()
        )));
    }
    let ids = dir.encode(&args.prompt, "--prompt")?;
    if ids.is_empty() {
        return Err(CliError::Usage("--prompt: the prompt is empty".into()));
    }
    let limit = config.max_seq_len.min(MAX_PROMPT_TOKENS);
    if ids.len() > limit {
        return Err(CliError::Usage(format!(
            "--prompt: {} tokens; attention maps are drawn for at most {limit} (the model's context is {}, the maps' limit {MAX_PROMPT_TOKENS})",
            ids.len(),
            config.max_seq_len
        )));
    }
    // Each token's own text, as the server lists log-probabilities.
    let codec =
        ember_serve::Codec::of(&dir).map_err(|e| CliError::Usage(format!("--model: {e}")))?;
    let tokens: Vec<String> = ids.iter().map(|&id| codec.token_text(id)).collect();
    let loaded = dir.load::<B>(&on.device)?;
    let maps = attention_maps(&loaded, &ids, None, &on.device);
    let summary = AttentionSummary::new(&maps, &tokens, true);
    std::fs::create_dir_all(out)
        .map_err(|e| CliError::Runtime(format!("--out {}: {e}", out.display())))?;
    let selection = HeadSelection {
        layer: args.layer,
        head: args.head,
    };
    let written = write_report(out, &maps, &summary, selection)
        .map_err(|e| CliError::Runtime(format!("--out: {e}")))?;
    eprintln!(
        "ember attention: {} files in {}",
        written.len(),
        out.display()
    );
    Ok((summary, ids))
}

fn print_patterns(name: &str, summary: &AttentionSummary) {
    let counts: Vec<String> = summary
        .pattern_counts
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    println!("{name}: heads by pattern: {}", counts.join(", "));
    for layer in &summary.layers {
        let heads: Vec<String> = layer
            .heads
            .iter()
            .map(|h| {
                format!(
                    "H{} {} ({:.2})",
                    h.head,
                    serde_json::to_value(h.pattern)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    h.entropy
                )
            })
            .collect();
        println!("  layer {}: {}", layer.layer, heads.join(" | "));
    }
}

/// `ember attention` on backend `B`.
pub fn run<B: FusedBackend>(on: &On<B>, args: AttentionArgs) -> Result<(), CliError> {
    if args.out.exists() && !args.out.is_dir() {
        return Err(CliError::Usage(format!(
            "--out {}: exists and is not a directory",
            args.out.display()
        )));
    }
    match (&args.compare, &args.model) {
        (Some(pair), _) => {
            let (a, b) = (&pair[0], &pair[1]);
            let (summary_a, ids_a) = analyse(on, a, &args, &args.out.join("a"))?;
            let (summary_b, ids_b) = analyse(on, b, &args, &args.out.join("b"))?;
            if ids_a != ids_b {
                return Err(CliError::Usage(format!(
                    "--compare: {} and {} tokenize the prompt differently; compare models that share a tokenizer",
                    a.display(),
                    b.display()
                )));
            }
            let comparison = Comparison::new(&summary_a, &summary_b);
            let json = serde_json::to_string_pretty(&comparison)
                .map_err(|e| CliError::Runtime(e.to_string()))?;
            let path = args.out.join("compare.json");
            ember_data::files::write_atomic(&path, json.as_bytes())
                .map_err(|e| CliError::Runtime(format!("--out {}: {e}", path.display())))?;
            print_patterns(&format!("A ({})", a.display()), &summary_a);
            print_patterns(&format!("B ({})", b.display()), &summary_b);
            println!(
                "mean head entropy: A {:.3} nats, B {:.3} nats",
                comparison.mean_entropy_a, comparison.mean_entropy_b
            );
        }
        (None, Some(model)) => {
            let (summary, _) = analyse(on, model, &args, &args.out)?;
            print_patterns(&model.display().to_string(), &summary);
        }
        (None, None) => return Err(CliError::Usage("--model or --compare: name a model".into())),
    }
    Ok(())
}
