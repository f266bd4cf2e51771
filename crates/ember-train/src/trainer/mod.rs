//! The step-based training loop.
//!
//! [`train`] (and [`train_with`], which adds a caller's objective and step hooks) reads
//! as the loop it runs:
//!
//! ```text
//! let mut run = Run::open(config, options, extras, device)?;   // setup.rs
//! while !run.done() {
//!     let out = run.step()?;                                     // step.rs
//!     run.after_step(out)?;                                      // run.rs
//! }
//! run.finish()
//! ```
//!
//! - `setup`: the checkpoint to resume, the run directory's lock and checks, the data
//!   (`data`: the token cache, the split, a contrastive run's pairs), model, optimizer,
//!   schedule, objective and the hooks' saved state.
//! - `step`: one optimizer step: micro-batches over shards through the
//!   [`Objective`](crate::objective::Objective), accumulated gradients, clipping, the
//!   learning rate, the optimizer.
//! - `run`: the loop and what follows each step: [`StepHook`](crate::hooks::StepHook)s,
//!   evaluation, the metrics record, checkpoints.
//! - `report`: `metrics.jsonl`, the progress bar, verbose lines, MoE tallies.
//! - `evaluate`: the validation loss (plain cross-entropy whatever the objective but the
//!   contrastive one, validated on held-out pairs).

mod capture;
mod clipping;
mod data;
mod error;
mod evaluate;
mod freezing;
mod init_from;
pub mod loss_scale;
mod options;
pub(crate) mod precision;
pub(crate) mod ranks;
pub(crate) mod report;
mod run;
mod setup;
mod step;

pub(crate) use clipping::Clipping;
pub use error::TrainError;
pub use evaluate::evaluate;
pub(crate) use evaluate::packing_of;
pub use loss_scale::LossScale;
pub use options::{TrainExtras, TrainOptions, TrainSummary};
pub use run::{train, train_with};
pub(crate) use setup::check_backend_for;
pub(crate) use step::step_gradients;
