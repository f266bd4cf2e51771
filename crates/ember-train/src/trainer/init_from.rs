//! `--init-from`: a fresh run that starts from given weights.

use burn::tensor::backend::Backend;
use ember_nn::{FusedBackend, Transformer, TransformerConfig};

use super::error::TrainError;
use super::setup::model_diff;
use crate::config::ConfigError;

/// `model` (built from the run's configuration `config`) with `initial`'s weights, path
/// by path. The two configurations may differ only in what does not shape the weights'
/// use (initialization, dropout); every parameter must be there with its shape.
pub(super) fn copy_weights<B: Backend + FusedBackend>(
    model: Transformer<B>,
    initial: &Transformer<B>,
    config: &TransformerConfig,
) -> Result<Transformer<B>, TrainError> {
    let diff: Vec<String> = model_diff(initial.config(), config)
        .into_iter()
        .filter(|d| {
            ![
                "model.init:",
                "model.init_std:",
                "model.dropout:",
                "model.dtype:",
            ]
            .iter()
            .any(|key| d.starts_with(key))
        })
        .collect();
    if !diff.is_empty() {
        return Err(ConfigError(format!(
            "--init-from: the model differs from the run's configuration ({})",
            diff.join("; ")
        ))
        .into());
    }
    let values = ember_nn::param_values(initial);
    let count = values.len();
    let mut values: std::collections::HashMap<String, burn::tensor::TensorData> =
        values.into_iter().collect();
    let model = ember_nn::replace_params(model, &mut |path, _shape| {
        values
            .remove(path)
            .ok_or_else(|| format!("the model has no `{path}`"))
    })
    .map_err(|e| ConfigError(format!("--init-from: {e}")))?;
    if !values.is_empty() {
        let extra: Vec<&String> = values.keys().collect();
        return Err(ConfigError(format!(
            "--init-from: {} of its {count} tensors have no place in the run's model: {extra:?}",
            extra.len()
        ))
        .into());
    }
    Ok(model)
}
