//! Initialisation scheme (GPT-2): every weight normal(0, `init_std`), the projections that
//! write into the residual stream (`o_proj`, `down_proj`) normal(0, `init_std / sqrt(2 n_layers)`),
//! biases zero, norm scales one.

use crate::config::TransformerConfig;

/// Standard deviation of the residual output projections.
pub fn residual_std(config: &TransformerConfig) -> f64 {
    config.init_std / (2.0 * config.n_layers as f64).sqrt()
}
