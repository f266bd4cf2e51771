//! Weight initialisation, per [`InitScheme`]: biases zero, norm scales one, embeddings
//! normal(0, `init_std`), projections by the scheme; with `zero_init_output` the
//! projections that write into the residual stream (`o_proj`, `down_proj`) start at zero.

use burn::nn::{Embedding, Initializer};

use crate::projection::Projection;
use burn::tensor::backend::Backend;

use crate::config::{InitScheme, TransformerConfig};

/// Whether a projection writes into the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads the residual stream (q/k/v, gate/up, router, lm_head).
    Input,
    /// Writes into it (`o_proj`, `down_proj`).
    ResidualOutput,
}

/// The initialiser of one model.
#[derive(Debug, Clone, Copy)]
pub struct Init {
    pub scheme: InitScheme,
    pub std: f64,
    pub n_layers: usize,
    pub zero_output: bool,
}

impl Init {
    pub fn new(config: &TransformerConfig) -> Self {
        Self {
            scheme: config.init,
            std: config.init_std,
            n_layers: config.n_layers,
            zero_output: config.zero_init_output,
        }
    }

    /// Standard deviation of GPT-2's residual output projections.
    pub fn residual_std(&self) -> f64 {
        self.std / (2.0 * self.n_layers as f64).sqrt()
    }

    /// The initializer of a `[d_in, d_out]` projection.
    pub fn initializer(&self, role: Role) -> Initializer {
        if self.zero_output && role == Role::ResidualOutput {
            return Initializer::Zeros;
        }
        match (self.scheme, role) {
            (InitScheme::Normal, _) | (InitScheme::Gpt2, Role::Input) => Initializer::Normal {
                mean: 0.0,
                std: self.std,
            },
            (InitScheme::Gpt2, Role::ResidualOutput) => Initializer::Normal {
                mean: 0.0,
                std: self.residual_std(),
            },
            (InitScheme::Xavier, _) => Initializer::XavierUniform { gain: 1.0 },
            (InitScheme::Kaiming, _) => Initializer::KaimingNormal {
                gain: 2f64.sqrt(),
                fan_out_only: false,
            },
        }
    }

    /// A [`Projection`] with weight `[d_in, d_out]` per the scheme and a zero bias.
    pub fn linear<B: Backend>(
        &self,
        d_in: usize,
        d_out: usize,
        bias: bool,
        role: Role,
        device: &B::Device,
    ) -> Projection<B> {
        Projection::init(&self.initializer(role), d_in, d_out, bias, device)
    }

    /// A `[rows, d_model]` embedding table, normal(0, `std`).
    pub fn embedding<B: Backend>(
        &self,
        rows: usize,
        d_model: usize,
        device: &B::Device,
    ) -> Embedding<B> {
        Embedding {
            weight: Initializer::Normal {
                mean: 0.0,
                std: self.std,
            }
            .init([rows, d_model], device),
        }
    }
}
