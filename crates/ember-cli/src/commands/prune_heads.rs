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
/// The longest window importance is measured on, unless `--context` says otherwise.
const DEFAULT_CONTEXT: usize = 1024;

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
    if args.context.is_some_and(|c| c < 2) {
        return Err(CliError::Usage("--context: must be at least 2".into()));
    }
    let dir = ModelDir::open(&args.model)?;
    let config = dir.config().clone();
    let remove = (args.sparsity * config.n_heads as f64).round() as usize;
    if remove == 0 || remove >= config.n_heads {
        return Err(CliError::Usage(format!(
            "--sparsity {}: removes {remove} of {} heads per layer; at least one must go and one stay",
            args.sparsity, config.n_heads
        )));
    }
    // The smaller model must be writable before any work is done.
    let mut smaller = config.clone();
    smaller.n_heads -= remove;
    if config.n_kv_heads == config.n_heads {
        smaller.n_kv_heads = smaller.n_heads;
    }
    smaller.head_dim = Some(config.head_dim());
    ember_hf::export_arch(&smaller).map_err(|e| {
        CliError::Usage(format!(
            "--model {}: without {remove} heads per layer: {e}",
            args.model.display()
        ))
    })?;
    let ids = read_ids(&dir, data)?;
    let context = args
        .context
        .unwrap_or(DEFAULT_CONTEXT)
        .min(config.max_seq_len)
        .min(ids.len().saturating_sub(1));
    if context < 2 {
        return Err(CliError::Usage(format!(
            "--data {}: {} tokens are too few to measure importance on",
            data.display(),
            ids.len()
        )));
    }
    // The model with gradients (dropout seeded, so the measure repeats), and the
    // importance of each head over batches drawn one at a time.
    let device = &on.device;
    <Autodiff<B> as burn::tensor::backend::Backend>::seed(device, 0);
    let model = dir.load::<Autodiff<B>>(device)?;
    let mut sampler = BatchSampler::new(0);
    let windows = args.importance_windows;
    let batches = (0..windows.div_ceil(WINDOWS_PER_BATCH)).map(|i| {
        let rows = WINDOWS_PER_BATCH.min(windows - i * WINDOWS_PER_BATCH);
        sampler.sample(&ids, rows, context)
    });
    let importance = ember_train::head_importance::head_importance(&model, batches, device)
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
