//! `ember distill`: train a student (from a preset or TOML config) on text files with a
//! teacher's softened predictions (knowledge distillation).

use std::path::PathBuf;

use clap::Args;
use ember_nn::FusedBackend;

use crate::commands::On;
use crate::commands::train::{Teacher, TrainArgs, run_with};
use crate::error::CliError;

#[derive(Args)]
pub struct DistillArgs {
    /// The teacher: an Ember checkpoint (or run directory) or a Hugging Face model
    /// directory with the student's tokenizer.
    #[arg(long)]
    pub teacher: PathBuf,
    /// Weight of the teacher's soft targets, in [0, 1]; the student's own loss gets 1 − α.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// Softmax temperature of both models' distributions in the soft term (> 0).
    #[arg(long, default_value_t = 2.0)]
    pub temperature: f64,
    #[command(flatten)]
    pub student: TrainArgs,
}

/// `ember distill` on backend `B`.
pub fn run<B: FusedBackend>(on: &On<B>, args: DistillArgs) -> Result<(), CliError> {
    if !(0.0..=1.0).contains(&args.alpha) {
        return Err(CliError::Usage(format!(
            "--alpha: must be in [0, 1], got {}",
            args.alpha
        )));
    }
    if !(args.temperature > 0.0 && args.temperature.is_finite()) {
        return Err(CliError::Usage(format!(
            "--temperature: must be positive, got {}",
            args.temperature
        )));
    }
    let teacher = Teacher {
        dir: args.teacher,
        alpha: args.alpha,
        temperature: args.temperature,
    };
    run_with(on, args.student, Some(teacher))
}
