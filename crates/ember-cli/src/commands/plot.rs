//! `ember plot`: training curves (loss with validation, learning rate, gradient norm,
//! tokens/s against step) of one or more runs in one PNG.

use std::path::PathBuf;

use clap::Args;

use crate::error::CliError;

#[derive(Args)]
pub struct PlotArgs {
    /// Run directories (holding `metrics.jsonl`) or metrics files.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// The figure, a `.png`.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: PlotArgs) -> Result<(), CliError> {
    let runs = ember_plot::plot_runs(&args.runs, &args.out).map_err(plot_error)?;
    for run in &runs {
        let last = run.train_loss.last().map_or(f64::NAN, |p| p.1);
        let val = run
            .val_loss
            .last()
            .map_or(String::new(), |p| format!(", last val loss {:.4}", p.1));
        println!(
            "{}: {} steps logged, last train loss {last:.4}{val}",
            run.name,
            run.train_loss.len()
        );
    }
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Bad input (a missing or malformed run, an unusable --out) is a usage error; failing
/// to read, draw or write is a runtime one.
pub fn plot_error(e: ember_plot::PlotError) -> CliError {
    if e.is_bad_input() {
        CliError::Usage(e.to_string())
    } else {
        CliError::Runtime(e.to_string())
    }
}
