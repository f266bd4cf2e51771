//! `ember prune`: magnitude pruning of a model's block weights (or, with `--method heads`,
//! structured head pruning: `prune_heads.rs`), written as a Hugging Face directory, with
//! sparsity, parameter counts and (given `--data`) perplexity before and after.

use std::path::{Path, PathBuf};

use clap::Args;
use ember_model::ModelDir;
use ember_nn::{FusedBackend, Transformer};
use ember_train::prune::{PruneScope, apply_masks, masks_of, sparsity_of};

use crate::commands::On;
use crate::commands::export::{DTypeArg, check_out, write_model};
use crate::error::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PruneMethod {
    /// Zero the weights of smallest magnitude.
    Magnitude,
    /// Remove the least important attention heads of every layer (their importance
    /// measured by gradients on --data), shrinking the projections.
    Heads,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeArg {
    /// The smallest weights of all block matrices together.
    Global,
    /// The same share of every block matrix.
    Layer,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value_t = PruneMethod::Magnitude)]
    pub method: PruneMethod,
    /// Magnitude: share of the block matrices' weights set to zero, in [0, 1). Heads:
    /// share of every layer's attention heads removed.
    #[arg(long)]
    pub sparsity: f64,
    /// Magnitude only (default: global).
    #[arg(long, value_enum)]
    pub scope: Option<ScopeArg>,
    /// Output directory (a Hugging Face model directory, written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out even when it holds something else.
    #[arg(long)]
    pub force: bool,
    /// A text file to measure perplexity on, before and after pruning (heads: also
    /// where their importance is measured; required).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Heads: windows drawn from --data to measure importance on.
    #[arg(long, default_value_t = 32)]
    pub importance_windows: usize,
    /// Heads: tokens per window (default: the model's context, at most 1024).
    #[arg(long)]
    pub context: Option<usize>,
}

/// Token ids of the text file `path` in `dir`'s tokenizer.
pub fn read_ids(dir: &ModelDir, path: &Path) -> Result<Vec<u32>, CliError> {
    let text = ember_data::Corpus::read(&[path.to_path_buf()])
        .map_err(|e| CliError::from_data("--data", e))?
        .joined();
    Ok(dir.encode(&text, "--data")?)
}

/// Mean next-token loss of `model` over `ids` (windows of the model's context, half
/// overlapping).
pub fn mean_nll<B: FusedBackend>(
    model: &Transformer<B>,
    ids: &[u32],
    data: &Path,
    device: &B::Device,
) -> Result<f64, CliError> {
    let context = model.config().max_seq_len;
    ember_infer::perplexity(model, ids, context, context.div_ceil(2), device)
        .map(|p| p.mean_nll)
        .map_err(|e| CliError::Usage(format!("--data {}: {e}", data.display())))
}

/// `ember prune` on backend `B`.
pub fn run<B: FusedBackend>(on: &On<B>, args: PruneArgs) -> Result<(), CliError> {
    if !(0.0..1.0).contains(&args.sparsity) {
        return Err(CliError::Usage(format!(
            "--sparsity: must be in [0, 1), got {}",
            args.sparsity
        )));
    }
    check_out(&[&args.model], &args.out, args.force)?;
    if args.method == PruneMethod::Heads {
        if args.scope.is_some() {
            return Err(CliError::Usage(
                "--scope: applies to --method magnitude; --method heads removes the same share of every layer's heads".into(),
            ));
        }
        return super::prune_heads::run(on, &args);
    }
    if args.context.is_some() {
        return Err(CliError::Usage(
            "--context: applies to --method heads (the windows importance is measured on)".into(),
        ));
    }
    let dir = ModelDir::open(&args.model)?;
    ember_hf::export_arch(dir.config())
        .map_err(|e| CliError::Runtime(format!("--model {}: {e}", args.model.display())))?;
    let ids = match &args.data {
        Some(path) => Some((path, read_ids(&dir, path)?)),
        None => None,
    };
    let model = dir.load::<B>(&on.device)?;
    let scope = match args.scope.unwrap_or(ScopeArg::Global) {
        ScopeArg::Global => PruneScope::Global,
        ScopeArg::Layer => PruneScope::Layer,
    };
    let before = match &ids {
        Some((path, ids)) => Some(mean_nll(&model, ids, path, &on.device)?),
        None => None,
    };
    let masks = masks_of(&model, args.sparsity, scope);
    let pruned = apply_masks(model, &masks).map_err(CliError::Runtime)?;
    let (zeros, prunable) = sparsity_of(&pruned);
    let total = pruned.config().num_params();
    println!(
        "sparsity: {:.2}% of {prunable} block weights are zero ({zeros}); parameters: {total}, nonzero {}",
        100.0 * zeros as f64 / prunable.max(1) as f64,
        total - zeros
    );
    if let (Some((path, ids)), Some(before)) = (&ids, before) {
        let after = mean_nll(&pruned, ids, path, &on.device)?;
        println!(
            "perplexity: before {:.4} (mean nll {before:.4}), after {:.4} (mean nll {after:.4})",
            before.exp(),
            after.exp()
        );
    }
    write_model(&dir, &pruned, &args.out, DTypeArg::F32)
}
