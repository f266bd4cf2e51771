//! What a live view of a run implements ([`TrainObserver`]): the run's start, every step,
//! every logged record, its end, and whether the user asked it to stop. `ember train
//! --tui`'s dashboard is one; with an observer, the run prints no progress of its own.

use crate::metrics::StepMetrics;

/// Follows a run as it goes (see the module docs). Every method's default does nothing.
pub trait TrainObserver: Send {
    /// The run starts at `step` of `total` steps; `banner` describes it in one line.
    fn started(&mut self, total: usize, step: usize, banner: &str) {
        let _ = (total, step, banner);
    }

    /// Optimizer step `step` finished with this loss and speed.
    fn step(&mut self, step: usize, train_loss: f64, tokens_per_s: f64) {
        let _ = (step, train_loss, tokens_per_s);
    }

    /// A record was appended to `metrics.jsonl` (with the validation loss on evaluating
    /// steps).
    fn record(&mut self, record: &StepMetrics) {
        let _ = record;
    }

    /// The run ended (its checkpoint is written).
    fn finished(&mut self) {}

    /// The user asked the run to stop: it writes a checkpoint at the current step and
    /// ends, resumable with `--resume`.
    fn stop_requested(&self) -> bool {
        false
    }
}
