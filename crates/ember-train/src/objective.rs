//! What a training step minimises: an [`Objective`] turns the model and one micro-batch
//! into the loss to differentiate and the numbers to log.
//!
//! The configuration picks one by name (`train.objective`, see [`ObjectiveKind`]);
//! [`crate::train_with`] takes any other (distillation, contrastive, ...). The trainer
//! scales the returned loss by the micro-batch's share of the step before the backward
//! pass, so an objective returns the mean over its micro-batch's rows. Validation losses
//! stay plain cross-entropy whatever the objective.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use ember_data::Batch;
use ember_nn::{BlockCheckpoints, ForwardOptions, FusedBackend, MoeLosses, Transformer};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::loss::{Focal, LossKind, TokenLoss};

/// One micro-batch (or one shard of it) as an objective sees it.
pub struct ObjectiveBatch<'a, B: Backend> {
    /// Token ids, `[batch, block]`.
    pub inputs: Tensor<B, 2, Int>,
    /// The next token of each input position, `[batch, block]`.
    pub targets: Tensor<B, 2, Int>,
    /// The rows drawn, as host data.
    pub batch: &'a Batch,
    pub device: &'a B::Device,
    /// Activation checkpointing: pass it on in the model's [`ForwardOptions`]; the trainer
    /// differentiates the loss through it.
    pub checkpoints: Option<&'a mut BlockCheckpoints<B>>,
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
}

impl ObjectiveKind {
    /// Every name `train.objective` accepts, quoted, for messages.
    pub const EXPECTED: &'static str = "\"causal_lm\"";

    /// The objective with `config`'s settings.
    pub fn build<B: AutodiffBackend + FusedBackend>(
        self,
        config: &TrainConfig,
    ) -> Box<dyn Objective<B>> {
        match self {
            ObjectiveKind::CausalLm => Box::new(CausalLm::new(config)),
        }
    }
}

/// The next-token loss `train.loss` sets ([`TokenLoss`]: cross-entropy, label-smoothed
/// by `train.label_smoothing`, or focal; plus the z-loss `train.z_loss`), plus for MoE
/// models the load-balancing and router z-losses weighted by `model.moe.aux_loss_coef`
/// and `model.moe.z_loss_coef`.
#[derive(Debug, Clone, PartialEq)]
pub struct CausalLm {
    pub token_loss: TokenLoss,
    /// MoE models: `(aux_loss_coef, z_loss_coef)`.
    pub moe_coefs: Option<(f64, f64)>,
}

impl CausalLm {
    pub fn new(config: &TrainConfig) -> Self {
        let t = &config.train;
        Self {
            token_loss: TokenLoss {
                label_smoothing: t.label_smoothing,
                z_loss: t.z_loss,
                focal: (t.loss == LossKind::Focal).then(|| Focal {
                    gamma: t.focal_gamma,
                    alpha: (!t.focal_alpha.is_empty()).then(|| t.focal_alpha.clone()),
                }),
            },
            moe_coefs: config
                .model
                .moe
                .as_ref()
                .map(|moe| (moe.aux_loss_coef, moe.z_loss_coef)),
        }
    }
}

impl<B: AutodiffBackend + FusedBackend> Objective<B> for CausalLm {
    fn loss(&self, model: &Transformer<B>, batch: ObjectiveBatch<'_, B>) -> ObjectiveOutput<B> {
        let mut moe_losses = MoeLosses::default();
        // Packed rows: each document attends to itself, positions restart per document,
        // and the boundary targets are ignored.
        let (mask, positions) = crate::trainer::packing_of(batch.batch);
        let options = ForwardOptions {
            moe: self.moe_coefs.is_some().then_some(&mut moe_losses),
            checkpoints: batch.checkpoints,
            documents: mask.as_ref(),
            positions,
            ..Default::default()
        };
        let logits = model.forward(batch.inputs, options);
        // Packed rows ignore their boundary targets; other rows cover every target.
        let token = self
            .token_loss
            .forward(logits, &batch.batch.targets, ember_data::sft::IGNORE);
        let lm_loss = token.main;
        let mut loss = token.loss;
        let mut metrics = Vec::new();
        if let Some(z) = token.z {
            metrics.push(("z_loss".to_string(), z));
        }
        let mut moe = None;
        if let (Some((aux_coef, z_coef)), Some(balance), Some(z)) =
            (self.moe_coefs, moe_losses.balance_loss, moe_losses.z_loss)
        {
            moe = Some(MoeStats {
                balance: balance.clone().into_scalar().elem::<f64>(),
                z: z.clone().into_scalar().elem::<f64>(),
                load: moe_losses.load,
                dropped: moe_losses.dropped,
            });
            loss = loss + balance.mul_scalar(aux_coef) + z.mul_scalar(z_coef);
        }
        ObjectiveOutput {
            loss,
            train_loss: lm_loss,
            moe,
            metrics,
        }
    }
}
