//! The linear warmup every schedule but one-cycle starts with.

use super::LrSchedule;

/// The learning rate of a linear warmup to `peak_lr` over `warmup_steps`, or `None` past
/// it: `peak_lr · (step + 1) / (warmup_steps + 1)`, nanoGPT's, which is PyTorch's
/// `LinearLR(start_factor = 1 / (warmup_steps + 1), total_iters = warmup_steps)`.
pub(crate) fn warmup(peak_lr: f64, warmup_steps: usize, step: usize) -> Option<f64> {
    (step < warmup_steps).then(|| peak_lr * (step + 1) as f64 / (warmup_steps + 1) as f64)
}

/// `warmup_steps` of linear warmup to `peak_lr`, then `after` from its own step 0 (as
/// PyTorch's `SequentialLR(milestones = [warmup_steps])` runs it).
#[derive(Debug, Clone, PartialEq)]
pub struct Warmup<S> {
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub after: S,
}

impl<S: LrSchedule> LrSchedule for Warmup<S> {
    fn lr_at(&self, step: usize) -> f64 {
        warmup(self.peak_lr, self.warmup_steps, step)
            .unwrap_or_else(|| self.after.lr_at(step - self.warmup_steps))
    }

    fn beta1_at(&self, step: usize) -> Option<f64> {
        self.after.beta1_at(step.saturating_sub(self.warmup_steps))
    }
}
