//! [`CausalLm`]: the next-token loss the configuration sets, plus MoE auxiliary losses.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use ember_nn::{ForwardOptions, FusedBackend, MoeLosses, Transformer};

use super::{MoeStats, Objective, ObjectiveBatch, ObjectiveOutput};
use crate::config::TrainConfig;
use crate::loss::{Focal, LossKind, TokenLoss};

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
        self.run(model, batch).0
    }
}

impl CausalLm {
    /// The objective's output and the model's logits, `[batch, block, vocab]`.
    pub(crate) fn run<B: AutodiffBackend + FusedBackend>(
        &self,
        model: &Transformer<B>,
        batch: ObjectiveBatch<'_, B>,
    ) -> (ObjectiveOutput<B>, Tensor<B, 3>) {
        let mut moe_losses = MoeLosses::default();
        let mut hooks = batch.hooks;
        // Packed rows: each document attends to itself, positions restart per document,
        // and the boundary targets are ignored.
        let (mask, positions) = crate::trainer::packing_of(batch.batch);
        let options = ForwardOptions {
            moe: self.moe_coefs.is_some().then_some(&mut moe_losses),
            checkpoints: batch.checkpoints,
            // Reborrowed: the trait object's lifetime shrinks to this pass's.
            hooks: match hooks {
                Some(ref mut h) => Some(&mut **h),
                None => None,
            },
            documents: mask.as_ref(),
            positions,
            ..Default::default()
        };
        let logits = model.forward(batch.inputs, options);
        // Packed rows ignore their boundary targets; other rows cover every target.
        let token = self.token_loss.forward(
            logits.clone(),
            &batch.batch.targets,
            ember_data::sft::IGNORE,
        );
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
        let out = ObjectiveOutput {
            loss,
            train_loss: lm_loss,
            moe,
            metrics,
        };
        (out, logits)
    }
}
