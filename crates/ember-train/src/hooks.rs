//! Post-step hooks: code that sees (and may change) the model right after each optimizer
//! step, with state that travels in the checkpoint, e.g. EMA weights, pruning masks or a
//! schedule of layers to unfreeze.
//!
//! The configuration registers Ember's own: [`Ema`] (`train.ema_decay`) and
//! [`GradualPrune`] (`train.prune`); any other is registered through
//! [`crate::train_with`]. After every optimizer step the
//! trainer calls each hook's [`StepHook::after_step`] in registration order, before
//! evaluating, logging or saving. Every checkpoint holds each hook's
//! [`StepHook::save_state`] as `hook-NAME.json` (its JSON value, and the names of its
//! tensors in order) and `hook-NAME.safetensors` (its tensors, f32), written inside the
//! same atomic save as the weights and listed with size and CRC-32 in the checkpoint's
//! manifest, so a damaged file is refused by name. On `--resume` each registered hook gets
//! its state back through [`StepHook::load_state`]; a checkpoint lacking the state of a
//! registered hook, or holding the state of one that is not registered, is refused,
//! naming the hook and the file. A run without hooks writes no hook files.

use burn::tensor::backend::AutodiffBackend;
use ember_nn::Transformer;

mod ema;
mod files;
mod gradual_prune;

pub use ema::Ema;
pub(crate) use files::{json_path, load_states, validate_names, write_states};
pub use gradual_prune::GradualPrune;

/// Where the run stands when a hook is called.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInfo {
    /// Optimizer steps completed, this one included (1 after the first step).
    pub step: usize,
    /// `train.steps`: the step the run ends at.
    pub total_steps: usize,
    /// The learning rate this step used.
    pub lr: f64,
    /// This step's training loss (the objective's `train_loss`).
    pub train_loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Training tokens seen so far, this step's included.
    pub tokens_seen: u64,
}

/// A named f32 tensor of a hook's state, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HookTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// `shape`'s product of values.
    pub values: Vec<f32>,
}

/// What a hook keeps across a checkpoint: any JSON value plus named f32 tensors
/// (distinct names, in an order that is kept).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HookState {
    pub json: serde_json::Value,
    pub tensors: Vec<HookTensor>,
}

impl HookState {
    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&HookTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Code run after every optimizer step (see the module docs).
pub trait StepHook<B: AutodiffBackend> {
    /// Unique among a run's hooks; names the hook's checkpoint files, so it is 1 to 64 of
    /// `A-Z a-z 0-9 _ -`.
    fn name(&self) -> &str;

    /// Called right after the optimizer step `info.step`, before evaluation, logging and
    /// checkpointing; returns the model training continues with.
    fn after_step(&mut self, model: Transformer<B>, info: &StepInfo) -> Transformer<B>;

    /// The hook's state, saved with every checkpoint.
    fn save_state(&self) -> HookState;

    /// Restores the state [`StepHook::save_state`] returned, on `--resume`; an error
    /// message stops the run, naming the hook and its file.
    fn load_state(&mut self, state: HookState) -> Result<(), String>;

    /// Weights of the hook's own to evaluate beside the model's whenever the run
    /// evaluates (an average, say), logged as `hook_val_loss.NAME`.
    fn evaluated(&self) -> Option<&Transformer<B::InnerBackend>> {
        None
    }
}
