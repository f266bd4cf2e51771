//! Activation checkpointing: blocks that keep only their input in the forward pass and run
//! again, one at a time, in the backward pass.
//!
//! [`ActivationCheckpointing`] is the setting. With `blocks` or `every:N`, a forward pass
//! given a [`BlockCheckpoints`] (through [`crate::ForwardOptions::checkpoints`]) runs each
//! chosen block without recording it for autodiff, so its activations are freed as the
//! pass goes; the block's output enters the graph that follows as a fresh leaf.
//! [`BlockCheckpoints::backward`] then differentiates the loss and walks the chosen blocks
//! from the last to the first: each runs again from its saved input with the graph on, is
//! differentiated against the gradient its output received, and hands its input's
//! gradient on to whatever produced that input (the previous checkpointed block directly,
//! or a backward pass through the blocks and embeddings in between). Peak memory holds
//! every chosen block's input and one block's activations at a time. The last block is
//! never run again: the backward pass starts with it, so its activations are kept.
//!
//! burn's own checkpointing ([`burn_autodiff`]'s `BalancedCheckpointing`) works per op,
//! not per block: it recomputes memory-bound ops whose outputs a later op needs. The
//! `selective` setting is that, with Ember's fused norms and activations marked memory
//! bound; see `ember_ops::fused::checkpointing`.
//!
//! Dropout: given a seed ([`BlockCheckpoints::with_dropout_seed`]), every block draws its
//! masks from the backend's generator seeded per block, both when it first runs and when it
//! runs again, so a checkpointed pass draws the same masks as a plain one with the same seed.

mod blocks;
mod policy;

pub use blocks::BlockCheckpoints;
pub use policy::ActivationCheckpointing;
