//! The seam: what an objective is given and returns, and the objectives a configuration
//! names.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use ember_data::Batch;
use ember_nn::{BlockCheckpoints, FusedBackend, Transformer};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;

/// One micro-batch (or one shard of it) as an objective sees it.
pub struct ObjectiveBatch<'a, B: Backend> {
    /// Token ids, `[batch, block]`.
    pub inputs: Tensor<B, 2, Int>,
    /// The next token of each input position, `[batch, block]`.
    pub targets: Tensor<B, 2, Int>,
    /// The rows drawn, as host data.
    pub batch: &'a Batch,
    pub device: &'a B::Device,
    /// Activation checkpointing: pass it on in the model's [`ember_nn::ForwardOptions`]; the trainer
    /// differentiates the loss through it.
    pub checkpoints: Option<&'a mut BlockCheckpoints<B>>,
    /// Forward hooks to pass on in the model's [`ember_nn::ForwardOptions`] (the
    /// trainer's activation-gradient capture, on `train.capture` steps).
    pub hooks: Option<&'a mut dyn ember_nn::ForwardHooks<B>>,
}

/// A micro-batch's MoE auxiliary losses (unweighted) and routing counts.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeStats {
    /// Switch load-balancing loss, summed over layers.
    pub balance: f64,
    /// Router z-loss, summed over layers.
    pub z: f64,
    /// Per layer, assignments routed to each expert.
    pub load: Vec<Vec<usize>>,
    /// Assignments dropped by capacity limits, all layers.
    pub dropped: usize,
}

/// What an objective computed over one micro-batch.
pub struct ObjectiveOutput<B: Backend> {
    /// The loss to differentiate: the mean over the micro-batch's rows, `[1]`.
    pub loss: Tensor<B, 1>,
    /// Logged as `train_loss`, `[1]` (the step's value is the row-weighted mean over its
    /// micro-batches; a value that is not finite stops the run as diverged). Read after
    /// the backward pass, so an accelerator is not made to wait for it before.
    /// [`CausalLm`]: the cross-entropy alone, without the MoE auxiliary losses.
    pub train_loss: Tensor<B, 1>,
    /// MoE models: logged as `moe_balance_loss`, `moe_z_loss`, `expert_load` and
    /// `moe_dropped`.
    pub moe: Option<MoeStats>,
    /// Further named scalars, `[1]` each, logged (row-weighted means over the step) in
    /// the `objective` object of `metrics.jsonl`; read after the backward pass.
    pub metrics: Vec<(String, Tensor<B, 1>)>,
}

/// A training objective. Called from the shard threads at once (hence `Sync`).
pub trait Objective<B: AutodiffBackend + FusedBackend>: Send + Sync {
    /// The loss of `model` on `batch` (see [`ObjectiveOutput`]).
    fn loss(&self, model: &Transformer<B>, batch: ObjectiveBatch<'_, B>) -> ObjectiveOutput<B>;
}

/// The objectives a configuration can name (`train.objective`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectiveKind {
    /// [`CausalLm`]: next-token cross-entropy plus the MoE auxiliary losses.
    #[default]
    CausalLm,
    /// [`super::Contrastive`]: InfoNCE on pooled hidden states of `{"anchor",
    /// "positive"}` pairs (`train.contrastive`).
    Contrastive,
}

impl ObjectiveKind {
    /// Every name `train.objective` accepts, quoted, for messages.
    pub const EXPECTED: &'static str = "\"causal_lm\" or \"contrastive\"";

    /// The objective with `config`'s settings.
    pub fn build<B: AutodiffBackend + FusedBackend>(
        self,
        config: &TrainConfig,
    ) -> Box<dyn Objective<B>> {
        match self {
            ObjectiveKind::CausalLm => Box::new(super::CausalLm::new(config)),
            ObjectiveKind::Contrastive => Box::new(super::Contrastive {
                config: config.train.contrastive.unwrap_or_default(),
            }),
        }
    }
}
