//! What a run tells: `metrics.jsonl`, the progress bar and the verbose lines, and the MoE
//! routing tallies behind them.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::error::{TrainError, io_error};
use crate::metrics::StepMetrics;
use crate::objective::MoeStats;
use crate::observer::TrainObserver;
use crate::run_dir;

/// The run's metrics file and, when verbose, its terminal output.
pub(crate) struct Reporter {
    metrics_path: PathBuf,
    metrics_file: std::fs::File,
    progress: Option<ProgressBar>,
    verbose: bool,
    /// A live view that replaces the bar and the lines.
    observer: Option<Box<dyn TrainObserver>>,
}

impl Reporter {
    /// Starts `out`'s `metrics.jsonl` (see [`run_dir::start_metrics`]) and opens it for
    /// appending; `resume` is the checkpoint directory continued from and its step.
    pub(crate) fn open(
        out: &Path,
        resume: Option<(&Path, usize)>,
        replace: bool,
        verbose: bool,
        observer: Option<Box<dyn TrainObserver>>,
    ) -> Result<Self, TrainError> {
        run_dir::start_metrics(out, resume, replace)?;
        let metrics_path = run_dir::metrics_path(out);
        let metrics_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(io_error(&metrics_path))?;
        Ok(Self {
            metrics_path,
            metrics_file,
            progress: None,
            verbose,
            observer,
        })
    }

    /// Shows the progress bar (verbose, on a terminal) at `step` of `steps`, and prints
    /// `banner` (verbose).
    pub(crate) fn start(&mut self, steps: usize, step: usize, banner: impl FnOnce() -> String) {
        if let Some(observer) = &mut self.observer {
            observer.started(steps, step, &banner());
            return;
        }
        // The bar draws on stderr and hides itself (with the lines it would print) when
        // stderr is not a terminal: both must be one (OpenMPI gives ranks a terminal for
        // stdout only).
        let terminal = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        self.progress = (self.verbose && terminal).then(|| {
            let bar = ProgressBar::new(steps as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}")
                    .expect("a valid template"),
            );
            bar.set_position(step as u64);
            bar
        });
        if self.verbose {
            let line = banner();
            match &self.progress {
                Some(bar) => bar.println(line),
                None => println!("{line}"),
            }
        }
    }

    /// Appends `record` to `metrics.jsonl` and, verbose, prints its line (over the
    /// progress bar only when it holds a validation loss).
    pub(crate) fn record(&mut self, record: &StepMetrics, steps: usize) -> Result<(), TrainError> {
        writeln!(
            self.metrics_file,
            "{}",
            serde_json::to_string(record).unwrap()
        )
        .map_err(io_error(&self.metrics_path))?;
        if let Some(observer) = &mut self.observer {
            observer.record(record);
            return Ok(());
        }
        if !self.verbose {
            return Ok(());
        }
        let mut val = record
            .val_loss
            .map_or(String::new(), |v| format!(" | val {v:.4}"));
        if let Some(accuracy) = record.retrieval_accuracy {
            val += &format!(" | retrieval {:.1}%", 100.0 * accuracy);
        }
        if let Some(load) = &record.expert_load {
            let load: Vec<String> = load.iter().map(|s| format!("{:.0}%", s * 100.0)).collect();
            val += &format!(
                " | balance {:.3} z {:.3} | experts {}",
                record.moe_balance_loss.unwrap_or(f64::NAN),
                record.moe_z_loss.unwrap_or(f64::NAN),
                load.join(" ")
            );
        }
        for (name, value) in &record.objective {
            val += &format!(" | {name} {value:.4}");
        }
        let line = format!(
            "step {:>5}/{steps} | loss {:.4}{val} | lr {:.2e} | grad {:.3} | {:.0} tok/s | {:.1} ms | {:.1}s",
            record.step,
            record.train_loss,
            record.lr,
            record.grad_norm,
            record.tokens_per_s,
            record.step_ms,
            record.elapsed_s
        );
        match &self.progress {
            Some(bar) if record.val_loss.is_some() => bar.println(line),
            Some(_) => {}
            None => println!("{line}"),
        }
        Ok(())
    }

    /// Moves the progress bar to `step`.
    pub(crate) fn progress(&mut self, step: usize, train_loss: f64, tokens_per_s: f64) {
        if let Some(observer) = &mut self.observer {
            observer.step(step, train_loss, tokens_per_s);
        }
        if let Some(bar) = &self.progress {
            bar.set_position(step as u64);
            bar.set_message(format!("loss {train_loss:.4} | {tokens_per_s:.0} tok/s"));
        }
    }

    /// Clears the progress bar.
    pub(crate) fn finish(&mut self) {
        if let Some(observer) = &mut self.observer {
            observer.finished();
        }
        if let Some(bar) = self.progress.take() {
            bar.finish_and_clear();
        }
    }
}

impl Reporter {
    /// Whether the observer asked the run to stop.
    pub(crate) fn stop_requested(&self) -> bool {
        self.observer.as_ref().is_some_and(|o| o.stop_requested())
    }
}

/// The median of step times `times` (sorted in place); 0 without any.
pub(crate) fn median_ms(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(0.0)
}

/// Each expert's share of `load`.
pub(super) fn shares(load: &[usize]) -> Vec<f64> {
    let total = load.iter().sum::<usize>().max(1) as f64;
    load.iter().map(|&n| n as f64 / total).collect()
}

/// MoE routing statistics between metric records, and over the run.
pub(super) struct MoeTally {
    /// The last step's balance and z-loss (mean over its micro-batches).
    balance: f64,
    z: f64,
    since_log: Vec<usize>,
    pub(super) total: Vec<usize>,
    dropped_since_log: usize,
    /// This step's loads and drops (what data-parallel ranks sum).
    step_load: Vec<usize>,
    step_dropped: usize,
}

impl MoeTally {
    pub(super) fn new(n_experts: usize) -> Self {
        Self {
            balance: 0.0,
            z: 0.0,
            since_log: vec![0; n_experts],
            total: vec![0; n_experts],
            dropped_since_log: 0,
            step_load: vec![0; n_experts],
            step_dropped: 0,
        }
    }

    /// One micro-batch standing for `weight` of the step: its share of the step's
    /// losses, and each layer's expert loads.
    pub(super) fn add(&mut self, moe: &MoeStats, weight: f64) {
        self.balance += moe.balance * weight;
        self.z += moe.z * weight;
        for layer in &moe.load {
            for (((since, total), step), n) in self
                .since_log
                .iter_mut()
                .zip(&mut self.total)
                .zip(&mut self.step_load)
                .zip(layer)
            {
                *since += n;
                *total += n;
                *step += n;
            }
        }
        self.dropped_since_log += moe.dropped;
        self.step_dropped += moe.dropped;
    }

    /// Writes the step's MoE fields into `record` and starts the next interval.
    pub(super) fn fill(&mut self, record: &mut StepMetrics) {
        record.moe_balance_loss = Some(self.balance);
        record.moe_z_loss = Some(self.z);
        record.expert_load = Some(shares(&self.since_log));
        record.moe_dropped = Some(self.dropped_since_log);
        self.since_log.iter_mut().for_each(|n| *n = 0);
        self.dropped_since_log = 0;
    }

    /// Starts a step.
    pub(super) fn start_step(&mut self) {
        self.balance = 0.0;
        self.z = 0.0;
        self.step_load.iter_mut().for_each(|n| *n = 0);
        self.step_dropped = 0;
    }

    /// This step's tallies as numbers to sum over data-parallel ranks (empty without
    /// experts): balance, z, drops, then each expert's load.
    pub(super) fn step_values(&self) -> Vec<f64> {
        if self.total.is_empty() {
            return Vec::new();
        }
        let mut values = vec![self.balance, self.z, self.step_dropped as f64];
        values.extend(self.step_load.iter().map(|&n| n as f64));
        values
    }

    /// Replaces this step's tallies by `values` (as [`Self::step_values`] lays them out,
    /// summed over the ranks).
    pub(super) fn set_step_values(&mut self, values: &[f64]) {
        if self.total.is_empty() || values.len() != 3 + self.step_load.len() {
            return;
        }
        self.balance = values[0];
        self.z = values[1];
        let dropped = values[2].round() as usize;
        self.dropped_since_log = self.dropped_since_log - self.step_dropped + dropped;
        self.step_dropped = dropped;
        for (i, &value) in values[3..].iter().enumerate() {
            let n = value.round() as usize;
            self.since_log[i] = self.since_log[i] - self.step_load[i] + n;
            self.total[i] = self.total[i] - self.step_load[i] + n;
            self.step_load[i] = n;
        }
    }
}
