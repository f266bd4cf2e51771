//! What a training run would allocate, estimated from below and checked against the
//! machine's available memory before anything is built, so that an absurd
//! `train.batch_size` is an error naming the key instead of a failed allocation (which
//! aborts the process).

use ember_nn::memory::{available_bytes, human_bytes};

use crate::config::{ConfigError, TrainConfig};

/// The parts of a run's memory, in bytes, by the key that sizes each: the model's
/// parameters with their gradients and AdamW moments (4 copies), and one micro-batch's
/// logits with their gradient and a few activations of every layer. Real runs take more
/// (temporaries, the allocator); this only has to be a lower bound.
pub fn parts(config: &TrainConfig) -> Vec<(String, f64)> {
    let m = &config.model;
    let mut parts: Vec<(String, f64)> = m
        .param_parts()
        .into_iter()
        .map(|(key, n)| (format!("model.{key}"), n * 4.0 * 4.0))
        .collect();
    let tokens = config.train.batch_size as f64 * m.max_seq_len as f64;
    let per_token = 2.0 * m.vocab_size as f64 + 4.0 * m.d_model as f64 * m.n_layers as f64;
    parts.push(("train.batch_size".into(), tokens * per_token * 4.0));
    parts
}

/// Fails, naming the key that asks for the most, when the run's lower-bound footprint
/// exceeds the memory available.
pub fn check(config: &TrainConfig) -> Result<(), ConfigError> {
    let parts = parts(config);
    let total: f64 = parts.iter().map(|(_, b)| b).sum();
    let Some(available) = available_bytes() else {
        return Ok(());
    };
    if total <= available as f64 {
        return Ok(());
    }
    let (key, largest) = parts
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, b)| (k.as_str(), *b))
        .unwrap_or(("train.batch_size", total));
    Err(ConfigError(format!(
        "{key}: training would need at least {} of memory ({} of it for {key}), but only {} is available",
        human_bytes(total),
        human_bytes(largest),
        human_bytes(available as f64)
    )))
}
