//! What a training step minimises: an [`Objective`] turns the model and one micro-batch
//! into the loss to differentiate and the numbers to log.
//!
//! The configuration picks one by name (`train.objective`, see [`ObjectiveKind`]);
//! [`crate::train_with`] takes any other (distillation, contrastive, ...). The trainer
//! scales the returned loss by the micro-batch's share of the step before the backward
//! pass, so an objective returns the mean over its micro-batch's rows. Validation losses
//! stay plain cross-entropy whatever the objective but [`Contrastive`], whose runs validate
//! on held-out pairs ([`validate_pairs`]).

mod causal_lm;
mod contrastive;
mod distill;
mod seam;

pub use causal_lm::CausalLm;
pub use contrastive::{
    Contrastive, ContrastiveConfig, InfoNce, PairValidation, Pooling, info_nce, pooled_embeddings,
    validate_pairs,
};
pub use distill::Distill;
pub use seam::{MoeStats, Objective, ObjectiveBatch, ObjectiveKind, ObjectiveOutput};
