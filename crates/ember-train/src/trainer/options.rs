//! What a caller hands the trainer and what it gets back.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use ember_nn::{FusedBackend, Transformer};

use crate::hooks::StepHook;
use crate::objective::Objective;
use crate::observer::TrainObserver;

/// Where the run reads and writes.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Run directory: `checkpoint/`, `metrics.jsonl` and the token cache `data/` go here.
    pub out_dir: PathBuf,
    /// Text files, directories or `.jsonl` files.
    pub data: Vec<PathBuf>,
    /// A checkpoint (or run directory) to continue from.
    pub resume: Option<PathBuf>,
    /// Start in (or resume into) an `out_dir` holding another run, replacing it.
    pub force: bool,
    /// Log lines on stderr/stdout; `false` silences the loop (tests).
    pub verbose: bool,
    /// Whether the backend computes on this machine's CPU cores (Flex): then
    /// `train.batch_shards = 0` shards each micro-batch over the cores.
    pub cpu_backend: bool,
}

/// Code a library caller plugs into a run (see [`crate::train_with`]); the default is
/// none, which is what [`crate::train`] runs with.
pub struct TrainExtras<B: AutodiffBackend + FusedBackend> {
    /// Replaces the objective `train.objective` names (the checkpoint's `config.toml`
    /// still records that key; a resumed run must be given the same objective again).
    pub objective: Option<Box<dyn Objective<B>>>,
    /// Called after every optimizer step, in this order; their state is checkpointed
    /// (see [`crate::hooks`]). Names must be distinct.
    pub hooks: Vec<Box<dyn StepHook<B>>>,
    /// Weights a fresh run starts from instead of a random initialization (continued
    /// pre-training, recovery after pruning): the model configuration must be the run's.
    /// A resumed run continues from its checkpoint and refuses these.
    pub initial_model: Option<Transformer<B>>,
    /// Tokenizers the run's must equal (a teacher's, the initial model's), each with the
    /// flag that named it for the error message.
    pub same_tokenizer_as: Vec<(String, ember_data::Tokenizer)>,
    /// A live view of the run (`ember train --tui`); the run then prints no progress of
    /// its own, and stops (with a checkpoint) when it asks.
    pub observer: Option<Box<dyn TrainObserver>>,
    /// Data-parallel training: this process is one rank of the job (see
    /// [`crate::ddp`]); `None` trains in this process alone.
    pub data_parallel: Option<crate::ddp::DataParallel>,
}

impl<B: AutodiffBackend + FusedBackend> Default for TrainExtras<B> {
    fn default() -> Self {
        Self {
            objective: None,
            hooks: Vec::new(),
            initial_model: None,
            same_tokenizer_as: Vec::new(),
            observer: None,
            data_parallel: None,
        }
    }
}

impl<B: AutodiffBackend + FusedBackend> TrainExtras<B> {
    /// No extras.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trains with `objective` instead of the configured one.
    pub fn objective(mut self, objective: impl Objective<B> + 'static) -> Self {
        self.objective = Some(Box::new(objective));
        self
    }

    /// Adds a step hook, called after the ones added before it.
    pub fn hook(mut self, hook: impl StepHook<B> + 'static) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub checkpoint: PathBuf,
    pub step: usize,
    pub last_train_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    /// Median optimizer-step time of this invocation (evaluation excluded).
    pub median_step_ms: f64,
    pub tokens_per_step: usize,
    /// MoE models: share of routed assignments per expert over this invocation, all
    /// layers together.
    pub expert_load: Option<Vec<f64>>,
    /// The run ended before `train.steps` because its observer asked (the checkpoint is
    /// at `step`, resumable).
    pub stopped: bool,
}
