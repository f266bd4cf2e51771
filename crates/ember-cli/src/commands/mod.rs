//! The subcommands, one file each; the backend-generic ones run through [`Runner`].

pub mod distill;
pub mod export;
pub mod finetune;
pub mod generate;
pub mod host_generate;
pub mod info;
pub mod logits;
pub mod merge;
pub mod perplexity;
pub mod prune;
pub mod quantize;
mod runner;
pub mod serve;
pub mod soup;
pub mod train;

pub use runner::{On, Runner};
