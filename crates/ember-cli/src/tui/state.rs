//! What the dashboard shows, updated from the run's events: the loss curves, the latest
//! learning rate, gradient norm and speed, the ETA, the process's memory.

use std::time::{Duration, Instant};

use ember_train::StepMetrics;

/// The dashboard's data.
#[derive(Debug, Clone, Default)]
pub struct Dashboard {
    pub banner: String,
    pub total: usize,
    pub step: usize,
    /// `(step, train loss)` of every step.
    pub train: Vec<(f64, f64)>,
    /// `(step, validation loss)` of evaluating steps.
    pub val: Vec<(f64, f64)>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: f64,
    /// Seconds per step, smoothed (exponential moving average of wall-clock gaps).
    seconds_per_step: Option<f64>,
    last_step_at: Option<Instant>,
    /// Resident memory of this process, MiB.
    pub rss_mib: Option<f64>,
    /// The user asked to stop.
    pub stopping: bool,
}

impl Dashboard {
    /// The run starts at `step` of `total`.
    pub fn started(&mut self, total: usize, step: usize, banner: &str, now: Instant) {
        self.total = total;
        self.step = step;
        self.banner = banner.to_string();
        self.last_step_at = Some(now);
    }

    /// Step `step` ended at `now`.
    pub fn stepped(&mut self, step: usize, train_loss: f64, tokens_per_s: f64, now: Instant) {
        if let Some(last) = self.last_step_at {
            let gap = now.duration_since(last).as_secs_f64()
                / step.saturating_sub(self.step).max(1) as f64;
            self.seconds_per_step = Some(match self.seconds_per_step {
                Some(s) => 0.9 * s + 0.1 * gap,
                None => gap,
            });
        }
        self.last_step_at = Some(now);
        self.step = step;
        if train_loss.is_finite() {
            self.train.push((step as f64, train_loss));
        }
        self.tokens_per_s = tokens_per_s;
        self.rss_mib = resident_mib();
    }

    /// A logged record.
    pub fn recorded(&mut self, record: &StepMetrics) {
        if let Some(v) = record.val_loss.filter(|v| v.is_finite()) {
            self.val.push((record.step as f64, v));
        }
        self.lr = Some(record.lr);
        self.grad_norm = record.grad_norm.is_finite().then_some(record.grad_norm);
    }

    /// Time left at the smoothed pace.
    pub fn eta(&self) -> Option<Duration> {
        let per_step = self.seconds_per_step?;
        let left = self.total.saturating_sub(self.step) as f64;
        Some(Duration::from_secs_f64(per_step * left))
    }

    /// Share of the steps done, 0–1.
    pub fn done(&self) -> f64 {
        if self.total == 0 {
            return 1.0;
        }
        (self.step as f64 / self.total as f64).clamp(0.0, 1.0)
    }
}

/// This process's resident set, MiB (Linux: `/proc/self/statm`; elsewhere unknown).
pub fn resident_mib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages * page as f64 / (1024.0 * 1024.0))
}

/// `1h02m`, `3m05s`, `42s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_follows_the_pace_of_steps() {
        let t0 = Instant::now();
        let mut d = Dashboard::default();
        d.started(100, 0, "run", t0);
        d.stepped(1, 3.0, 1000.0, t0 + Duration::from_millis(500));
        d.stepped(2, 2.9, 1000.0, t0 + Duration::from_millis(1000));
        // 0.5 s per step, 98 steps left.
        assert_eq!(d.eta().unwrap().as_millis(), 49_000);
        assert_eq!(d.train, vec![(1.0, 3.0), (2.0, 2.9)]);
        assert!((d.done() - 0.02).abs() < 1e-12);
    }

    #[test]
    fn records_carry_validation_and_lr() {
        let mut d = Dashboard::default();
        d.recorded(&StepMetrics {
            step: 10,
            val_loss: Some(2.5),
            lr: 1e-3,
            grad_norm: f64::NAN,
            ..Default::default()
        });
        assert_eq!(d.val, vec![(10.0, 2.5)]);
        assert_eq!((d.lr, d.grad_norm), (Some(1e-3), None));
        assert_eq!(format_duration(Duration::from_secs(3725)), "1h02m");
        assert_eq!(format_duration(Duration::from_secs(185)), "3m05s");
        if cfg!(target_os = "linux") {
            assert!(resident_mib().is_some_and(|m| m > 1.0));
        }
    }
}
