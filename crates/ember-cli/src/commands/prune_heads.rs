//! `ember prune --method heads`: structured attention-head pruning. Each head's
//! importance is measured by gradients on `--data` (`ember_train::head_importance`), the
//! least important `--sparsity` share of every layer's heads is removed for real
//! (`ember_nn::prune_heads`, GQA-aware), and the smaller model is written as a Hugging
//! Face directory, with head and parameter counts and perplexity before and after.

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use ember_data::BatchSampler;
use ember_model::ModelDir;
use ember_nn::FusedBackend;
use ember_nn::prune_heads::kept_heads;

use super::On;
use super::export::{DTypeArg, write_model};
use super::prune::{PruneArgs, mean_nll, read_ids};
use crate::error::CliError;

/// Windows drawn per backward pass while measuring importance.
const WINDOWS_PER_BATCH: usize = 4;

/// `ember prune --method heads` on backend `B` (`args` checked by the caller).
pub fn run<B: FusedBackend>(on: &On<B>, args: &PruneArgs) -> Result<(), CliError> {
    let Some(data) = &args.data else {
        return Err(CliError::Usage(
            "--method heads: give --data, a text file to measure the heads' importance on".into(),
        ));
    };
    if args.importance_windows == 0 {
        return Err(CliError::Usage(
            "--importance-windows: must be at least 1".into(),
        ));
    }
    let dir = ModelDir::open(&args.model)?;
    ember_hf::export_arch(dir.config())
        .map_err(|e| CliError::Runtime(format!("--model {}: {e}", args.model.display())))?;
    let config = dir.config().clone();
    let remove = (args.sparsity * config.n_heads as f64).round() as usize;
    if remove == 0 {
        return Err(CliError::Usage(format!(
            "--sparsity {}: removes no head of {} per layer",
            args.sparsity, config.n_heads
        )));
    }
    let ids = read_ids(&dir, data)?;
    let context = config.max_seq_len.min(ids.len().saturating_sub(1));
    if context < 2 {
        return Err(CliError::Usage(format!(
            "--data {}: {} tokens are too few to measure importance on",
            data.display(),
            ids.len()
        )));
    }
    // The model with gradients, and the importance of each head.
    let model = dir.load::<Autodiff<B>>(&on.device)?;
    let mut sampler = BatchSampler::new(0);
    let batches: Vec<_> = (0..args.importance_windows.div_ceil(WINDOWS_PER_BATCH))
        .map(|i| {
            let rows = WINDOWS_PER_BATCH.min(args.importance_windows - i * WINDOWS_PER_BATCH);
            sampler.sample(&ids, rows, context)
        })
        .collect();
    let importance = ember_train::head_importance::head_importance(&model, &batches, &on.device)
        .map_err(|e| CliError::Runtime(format!("--model {}: {e}", args.model.display())))?;
    let kept = importance
        .iter()
        .map(|layer| kept_heads(layer, config.n_kv_heads, remove))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::Usage(format!("--sparsity {}: {e}", args.sparsity)))?;
    let model = model.valid();
    let before = mean_nll(&model, &ids, data, &on.device)?;
    let params_before = config.num_params();
    let pruned = model
        .remove_heads(&kept)
        .map_err(|e| CliError::Usage(format!("--model {}: {e}", args.model.display())))?;
    for (layer, (scores, heads)) in importance.iter().zip(&kept).enumerate() {
        let removed: Vec<String> = (0..scores.len())
            .filter(|h| !heads.query.contains(h))
            .map(|h| format!("{h} ({:.3e})", scores[h]))
            .collect();
        println!("layer {layer}: removed heads {}", removed.join(", "));
    }
    let after_config = pruned.config();
    let params_after = after_config.num_params();
    println!(
        "heads: {} query / {} key-value per layer, now {} / {} (head_dim {}); parameters: {params_before}, now {params_after} ({:.1}% fewer)",
        config.n_heads,
        config.n_kv_heads,
        after_config.n_heads,
        after_config.n_kv_heads,
        after_config.head_dim(),
        100.0 * (1.0 - params_after as f64 / params_before.max(1) as f64)
    );
    let after = mean_nll(&pruned, &ids, data, &on.device)?;
    println!(
        "perplexity: before {:.4} (mean nll {before:.4}), after {:.4} (mean nll {after:.4})",
        before.exp(),
        after.exp()
    );
    write_model(&dir, &pruned, &args.out, DTypeArg::F32)
}
