//! The backend a command runs on, and the dispatch from a parsed command to its file.

use std::marker::PhantomData;

use burn::tensor::backend::Backend;
use ember_nn::FusedBackend;

use super::{
    attention, chat, distill, eval, export, finetune, generate, logits, perplexity, prune,
    quantize, serve, soup, train,
};
use crate::error::CliError;

/// The backend-specific commands.
pub trait Runner {
    fn train(&self, args: train::TrainArgs) -> Result<(), CliError>;
    fn finetune(&self, args: finetune::FinetuneArgs) -> Result<(), CliError>;
    fn generate(&self, args: generate::GenerateArgs) -> Result<(), CliError>;
    fn logits(&self, args: logits::LogitsArgs) -> Result<(), CliError>;
    fn perplexity(&self, args: perplexity::PerplexityArgs) -> Result<(), CliError>;
    fn export(&self, args: export::ExportArgs) -> Result<(), CliError>;
    fn serve(&self, args: serve::ServeArgs) -> Result<(), CliError>;
    fn quantize(&self, args: quantize::QuantizeArgs) -> Result<(), CliError>;
    fn prune(&self, args: prune::PruneArgs) -> Result<(), CliError>;
    fn distill(&self, args: distill::DistillArgs) -> Result<(), CliError>;
    fn soup(&self, args: soup::SoupArgs) -> Result<(), CliError>;
    fn eval(&self, args: eval::EvalArgs) -> Result<(), CliError>;
    fn attention(&self, args: attention::AttentionArgs) -> Result<(), CliError>;
    fn chat(&self, args: chat::ChatArgs) -> Result<(), CliError>;
}

/// A [`Runner`] on backend `B`.
pub struct On<B: Backend> {
    pub device: B::Device,
    /// A CPU backend: batch-1 decoding runs on the host decoder by default.
    pub cpu: bool,
    _backend: PhantomData<B>,
}

impl<B: Backend> On<B> {
    pub fn new(device: B::Device, cpu: bool) -> Self {
        Self {
            device,
            cpu,
            _backend: PhantomData,
        }
    }
}

impl<B: FusedBackend> Runner for On<B> {
    fn train(&self, args: train::TrainArgs) -> Result<(), CliError> {
        train::run(self, args)
    }

    fn finetune(&self, args: finetune::FinetuneArgs) -> Result<(), CliError> {
        finetune::run(self, args)
    }

    fn generate(&self, args: generate::GenerateArgs) -> Result<(), CliError> {
        generate::run(self, args)
    }

    fn logits(&self, args: logits::LogitsArgs) -> Result<(), CliError> {
        logits::run(self, args)
    }

    fn perplexity(&self, args: perplexity::PerplexityArgs) -> Result<(), CliError> {
        perplexity::run(self, args)
    }

    fn export(&self, args: export::ExportArgs) -> Result<(), CliError> {
        export::run(self, args)
    }

    fn serve(&self, args: serve::ServeArgs) -> Result<(), CliError> {
        serve::run(self, args)
    }

    fn quantize(&self, args: quantize::QuantizeArgs) -> Result<(), CliError> {
        quantize::run(self, args)
    }

    fn prune(&self, args: prune::PruneArgs) -> Result<(), CliError> {
        prune::run(self, args)
    }

    fn distill(&self, args: distill::DistillArgs) -> Result<(), CliError> {
        distill::run(self, args)
    }

    fn soup(&self, args: soup::SoupArgs) -> Result<(), CliError> {
        soup::run(self, args)
    }

    fn eval(&self, args: eval::EvalArgs) -> Result<(), CliError> {
        eval::run(self, args)
    }

    fn attention(&self, args: attention::AttentionArgs) -> Result<(), CliError> {
        attention::run(self, args)
    }

    fn chat(&self, args: chat::ChatArgs) -> Result<(), CliError> {
        chat::run(self, args)
    }
}
