//! nanoGPT's schedules: the linear warmup, then a cosine or a straight line down to
//! `min_lr` at `decay_steps`, or a constant.

use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::backend::Backend;

use super::LrSchedule;
use super::warmup::warmup;

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
