//! The subcommands, one file each; the backend-generic ones run through [`Runner`].

pub mod attention;
pub mod chat;
pub mod distill;
pub mod eval;
mod eval_data;
pub mod export;
pub mod finetune;
pub mod generate;
pub mod host_generate;
pub mod info;
mod local_engine;
pub mod logits;
pub mod merge;
pub mod perplexity;
pub mod plot;
pub mod prune;
mod prune_heads;
pub mod quantize;
mod runner;
pub mod serve;
pub mod soup;
pub mod train;

pub use runner::{On, Runner};
