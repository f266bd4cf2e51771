//! `train.ema_decay`: an exponential moving average of the weights, updated after every
//! optimizer step, saved in the checkpoint and evaluated beside the raw weights.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use ember_nn::Transformer;

use super::{HookState, HookTensor, StepHook, StepInfo};

/// After every step `ema ← decay · ema + (1 − decay) · weights`, starting from the
/// weights training starts from (as `timm`'s `ModelEmaV2` and PyTorch's
/// `AveragedModel` with `get_ema_multi_avg_fn`). The average is logged as
/// `hook_val_loss.ema` whenever the run evaluates, and lives in the checkpoint as
/// `hook-ema.safetensors` under the model's parameter paths.
pub struct Ema<B: AutodiffBackend> {
    decay: f64,
    average: Transformer<B::InnerBackend>,
}

impl<B: AutodiffBackend> Ema<B> {
    /// An average that starts at `model`'s weights.
    pub fn new(decay: f64, model: &Transformer<B>) -> Self {
        Self {
            decay,
            average: model.valid(),
        }
    }

    /// The averaged weights.
    pub fn average(&self) -> &Transformer<B::InnerBackend> {
        &self.average
    }
}

impl<B: AutodiffBackend> StepHook<B> for Ema<B> {
    fn name(&self) -> &str {
        "ema"
    }

    fn after_step(&mut self, model: Transformer<B>, _info: &StepInfo) -> Transformer<B> {
        // The same model on both sides: the structures always agree.
        if let Ok(average) =
            ember_nn::blend_params(self.average.clone(), &model.valid(), 1.0 - self.decay)
        {
            self.average = average;
        }
        model
    }

    fn save_state(&self) -> HookState {
        HookState {
            json: serde_json::json!({ "decay": self.decay }),
            tensors: ember_nn::param_values(&self.average)
                .into_iter()
                .map(|(name, data)| {
                    let shape = data.shape.to_vec();
                    let values = data.convert::<f32>().to_vec().unwrap_or_default();
                    HookTensor {
                        name,
                        shape,
                        values,
                    }
                })
                .collect(),
        }
    }

    fn load_state(&mut self, state: HookState) -> Result<(), String> {
        self.average = ember_nn::replace_params(self.average.clone(), &mut |path, _shape| {
            let tensor = state
                .tensor(path)
                .ok_or_else(|| format!("holds no average of {path}"))?;
            Ok(burn::tensor::TensorData::new(
                tensor.values.clone(),
                tensor.shape.clone(),
            ))
        })?;
        Ok(())
    }

    fn evaluated(&self) -> Option<&Transformer<B::InnerBackend>> {
        Some(&self.average)
    }
}
