//! Learning-rate schedules as closed forms of the step, so resuming only needs the step.

use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// A learning rate as a function of the optimizer step (0-based).
pub trait LrSchedule: Send + Sync {
    fn lr_at(&self, step: usize) -> f64;
}

/// Linear warmup then cosine decay to `min_lr`, as in nanoGPT:
///
/// - `step < warmup_steps`: `peak_lr * (step + 1) / (warmup_steps + 1)`
/// - `step > decay_steps`: `min_lr`
/// - otherwise `min_lr + 0.5 (1 + cos(pi r)) (peak_lr - min_lr)` with
///   `r = (step - warmup_steps) / (decay_steps - warmup_steps)`.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmupCosine {
    pub peak_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub decay_steps: usize,
    /// Position for burn's [`LrScheduler`] interface.
    pub step: usize,
}

impl WarmupCosine {
    pub fn new(peak_lr: f64, min_lr: f64, warmup_steps: usize, decay_steps: usize) -> Self {
        Self {
            peak_lr,
            min_lr,
            warmup_steps,
            decay_steps,
            step: 0,
        }
    }
}

/// The learning rate of a linear warmup to `peak_lr` over `warmup_steps`, or `None` past it.
fn warmup(peak_lr: f64, warmup_steps: usize, step: usize) -> Option<f64> {
    (step < warmup_steps).then(|| peak_lr * (step + 1) as f64 / (warmup_steps + 1) as f64)
}

impl LrSchedule for WarmupCosine {
    fn lr_at(&self, step: usize) -> f64 {
        if let Some(lr) = warmup(self.peak_lr, self.warmup_steps, step) {
            return lr;
        }
        if step > self.decay_steps || self.decay_steps <= self.warmup_steps {
            return self.min_lr;
        }
        let ratio =
            (step - self.warmup_steps) as f64 / (self.decay_steps - self.warmup_steps) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.peak_lr - self.min_lr)
    }
}

impl LrScheduler for WarmupCosine {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> f64 {
        let lr = self.lr_at(self.step);
        self.step += 1;
        lr
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.step
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.step = record;
        self
    }
}

/// The same warmup, then a straight line from `peak_lr` down to `min_lr` at
/// `decay_steps`, flat after it.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmupLinear {
    pub peak_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub decay_steps: usize,
}

impl LrSchedule for WarmupLinear {
    fn lr_at(&self, step: usize) -> f64 {
        if let Some(lr) = warmup(self.peak_lr, self.warmup_steps, step) {
            return lr;
        }
        if step >= self.decay_steps || self.decay_steps <= self.warmup_steps {
            return self.min_lr;
        }
        let ratio =
            (step - self.warmup_steps) as f64 / (self.decay_steps - self.warmup_steps) as f64;
        self.peak_lr + ratio * (self.min_lr - self.peak_lr)
    }
}

/// The same warmup, then `peak_lr` for good.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmupConstant {
    pub peak_lr: f64,
    pub warmup_steps: usize,
}

impl LrSchedule for WarmupConstant {
    fn lr_at(&self, step: usize) -> f64 {
        warmup(self.peak_lr, self.warmup_steps, step).unwrap_or(self.peak_lr)
    }
}

/// The schedule a configuration names (`optim.schedule`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// [`WarmupCosine`] (nanoGPT's).
    #[default]
    Cosine,
    /// [`WarmupLinear`].
    Linear,
    /// [`WarmupConstant`].
    Constant,
}

impl ScheduleKind {
    /// The schedule with these settings (`min_lr` and `decay_steps` unused by `Constant`).
    pub fn build(
        self,
        peak_lr: f64,
        min_lr: f64,
        warmup_steps: usize,
        decay_steps: usize,
    ) -> Box<dyn LrSchedule> {
        match self {
            ScheduleKind::Cosine => Box::new(WarmupCosine::new(
                peak_lr,
                min_lr,
                warmup_steps,
                decay_steps,
            )),
            ScheduleKind::Linear => Box::new(WarmupLinear {
                peak_lr,
                min_lr,
                warmup_steps,
                decay_steps,
            }),
            ScheduleKind::Constant => Box::new(WarmupConstant {
                peak_lr,
                warmup_steps,
            }),
        }
    }
}
