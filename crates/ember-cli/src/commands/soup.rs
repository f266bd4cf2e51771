//! `ember soup`: the average of models fine-tuned from one start (Wortsman et al. 2022),
//! uniform or greedy, written as a Hugging Face directory.

use std::path::PathBuf;

use clap::Args;
use ember_model::ModelDir;
use ember_nn::{FusedBackend, Transformer};

use crate::commands::On;
use crate::commands::export::{DTypeArg, check_out, write_model};
use crate::commands::prune::{mean_nll, read_ids};
use crate::error::CliError;

#[derive(Args)]
pub struct SoupArgs {
    /// The ingredients: Ember checkpoints (or run directories) or Hugging Face model
    /// directories of one architecture and tokenizer.
    #[arg(long, num_args = 1.., required = true)]
    pub models: Vec<PathBuf>,
    /// Output directory (a Hugging Face model directory, written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out even when it holds something else.
    #[arg(long)]
    pub force: bool,
    /// Greedy soup: ingredients in order of validation loss, each kept only if the soup's
    /// validation loss does not rise (needs --data).
    #[arg(long, requires = "data")]
    pub greedy: bool,
    /// Validation text: each ingredient's and the soup's loss are reported on it.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// `ember soup` on backend `B`.
pub fn run<B: FusedBackend>(on: &On<B>, args: SoupArgs) -> Result<(), CliError> {
    if args.models.len() < 2 {
        return Err(CliError::Usage(
            "--models: a soup needs at least two models".into(),
        ));
    }
    let inputs: Vec<&std::path::Path> = args.models.iter().map(PathBuf::as_path).collect();
    check_out(&inputs, &args.out, args.force)?;
    let dirs = args
        .models
        .iter()
        .map(|path| ModelDir::open(path).map_err(CliError::from))
        .collect::<Result<Vec<_>, _>>()?;
    let first = &dirs[0];
    ember_hf::export_arch(first.config())
        .map_err(|e| CliError::Runtime(format!("--models {}: {e}", args.models[0].display())))?;
    for (dir, path) in dirs.iter().zip(&args.models).skip(1) {
        if dir.config() != first.config() {
            return Err(CliError::Usage(format!(
                "--models {}: its architecture differs from {}'s; only models of one shape can be averaged",
                path.display(),
                args.models[0].display()
            )));
        }
        let same = match (dir.tokenizer(), first.tokenizer()) {
            (Some(a), Some(b)) => a.same_vocabulary(b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            return Err(CliError::Usage(format!(
                "--models {}: its tokenizer differs from {}'s",
                path.display(),
                args.models[0].display()
            )));
        }
    }
    let ids = match &args.data {
        Some(path) => Some((path, read_ids(first, path)?)),
        None => None,
    };
    let mut models: Vec<(usize, Transformer<B>, Option<f64>)> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let model = dir.load::<B>(&on.device)?;
        let loss = match &ids {
            Some((path, ids)) => Some(mean_nll(&model, ids, path, &on.device)?),
            None => None,
        };
        if let Some(loss) = loss {
            println!(
                "ingredient {}: val loss {loss:.4}",
                args.models[i].display()
            );
        }
        models.push((i, model, loss));
    }
    let soup = if args.greedy {
        let (path, ids) = ids.as_ref().expect("clap requires --data with --greedy");
        greedy(models, &args.models, |m| mean_nll(m, ids, path, &on.device))?
    } else {
        let count = models.len();
        let mut iter = models.into_iter();
        let (_, mut soup, _) = iter.next().expect("at least two models");
        for (k, (_, model, _)) in iter.enumerate() {
            // The running mean: soup_{k+1} = soup_k + (model − soup_k) / (k + 2).
            soup = ember_nn::blend_params(soup, &model, 1.0 / (k + 2) as f64)
                .map_err(CliError::Runtime)?;
        }
        println!("uniform soup of {count} models");
        soup
    };
    if let Some((path, ids)) = &ids {
        println!(
            "soup: val loss {:.4}",
            mean_nll(&soup, ids, path, &on.device)?
        );
    }
    write_model(first, &soup, &args.out, DTypeArg::F32)
}

/// Greedy soup: ingredients by ascending validation loss; each joins the uniform average
/// when the average's loss does not rise.
fn greedy<B: FusedBackend>(
    mut models: Vec<(usize, Transformer<B>, Option<f64>)>,
    paths: &[PathBuf],
    loss_of: impl Fn(&Transformer<B>) -> Result<f64, CliError>,
) -> Result<Transformer<B>, CliError> {
    models.sort_by(|a, b| a.2.unwrap_or(f64::MAX).total_cmp(&b.2.unwrap_or(f64::MAX)));
    let mut iter = models.into_iter();
    let (best, mut soup, loss) = iter.next().expect("at least two models");
    let mut soup_loss = loss.unwrap_or(f64::MAX);
    let mut members = vec![best];
    for (i, model, _) in iter {
        let candidate =
            ember_nn::blend_params(soup.clone(), &model, 1.0 / (members.len() + 1) as f64)
                .map_err(CliError::Runtime)?;
        let candidate_loss = loss_of(&candidate)?;
        let kept = candidate_loss <= soup_loss;
        println!(
            "greedy: with {}: {candidate_loss:.4} ({})",
            paths[i].display(),
            if kept { "kept" } else { "left out" }
        );
        if kept {
            soup = candidate;
            soup_loss = candidate_loss;
            members.push(i);
        }
    }
    println!(
        "greedy soup of {} models: {}",
        members.len(),
        members
            .iter()
            .map(|&i| paths[i].display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(soup)
}
