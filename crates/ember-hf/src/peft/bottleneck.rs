//! Bottleneck adapters in Ember's own adapter directory (`peft` has no format for them):
//! `adapter_config.json` with `"peft_type": "EMBER_BOTTLENECK"`, `placement`
//! (`"houlsby"`/`"pfeiffer"`), `reduction_factor`, `non_linearity`, `num_layers`,
//! `d_model`; `adapter_model.safetensors` with, per layer `i`,
//! `layers.{i}.ffn.{down [d_model, h], down_bias [h], up [h, d_model], up_bias [d_model]}`
//! and (Houlsby) the same under `layers.{i}.attention`.

use std::collections::BTreeSet;
use std::path::Path;

use burn::tensor::TensorData;
use ember_nn::{FusedBackend, TransformerConfig, param_values, replace_params};
use ember_peft::{BottleneckAdapters, BottleneckConfig};
use serde_json::{Value, json};

use super::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::error::{HfError, at};
use crate::safetensors_io::{NamedTensor, WeightFiles};

/// The `peft_type` Ember writes for bottleneck adapters.
pub const BOTTLENECK_TYPE: &str = "EMBER_BOTTLENECK";

/// Writes `adapters` to `dir` (each file atomically).
pub fn save_bottleneck_adapter<B: FusedBackend>(
    dir: &Path,
    adapters: &BottleneckAdapters<B>,
    model: &TransformerConfig,
) -> Result<(), HfError> {
    let config_path = dir.join(ADAPTER_CONFIG);
    let tensors = param_values(adapters)
        .into_iter()
        .map(|(name, data)| {
            let shape = data.shape.to_vec();
            let values = data
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| HfError::new(&config_path, format!("`{name}`: {e:?}")))?;
            Ok(NamedTensor {
                name,
                shape,
                values,
            })
        })
        .collect::<Result<Vec<_>, HfError>>()?;
    let c = &adapters.config;
    let mut value = json!({
        "peft_type": BOTTLENECK_TYPE,
        "task_type": "CAUSAL_LM",
        "reduction_factor": c.reduction_factor,
        "num_layers": model.n_layers,
        "d_model": model.d_model,
    });
    value["placement"] = serde_json::to_value(c.placement).expect("serialises");
    value["non_linearity"] = serde_json::to_value(c.non_linearity).expect("serialises");
    super::common::write_adapter(dir, &tensors, &value)
}

/// Reads the bottleneck adapters in `dir` for a model of `model`'s shape; every tensor
/// must be there with its shape, and nothing else.
pub fn load_bottleneck_adapter<B: FusedBackend>(
    dir: &Path,
    model: &TransformerConfig,
    device: &B::Device,
) -> Result<BottleneckAdapters<B>, HfError> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = ember_data::files::read_regular_text(&path).map_err(at(&path))?;
    let value: Value = serde_json::from_str(&text).map_err(at(&path))?;
    if value["peft_type"].as_str() != Some(BOTTLENECK_TYPE) {
        return Err(HfError::new(
            &path,
            format!(
                "peft_type = {}: expected \"{BOTTLENECK_TYPE}\"",
                value["peft_type"]
            ),
        ));
    }
    for (key, want) in [("num_layers", model.n_layers), ("d_model", model.d_model)] {
        if value[key].as_u64() != Some(want as u64) {
            return Err(HfError::new(
                &path,
                format!("{key} = {}: this model has {want}", value[key]),
            ));
        }
    }
    let config = BottleneckConfig {
        placement: serde_json::from_value(value["placement"].clone())
            .map_err(|e| HfError::new(&path, format!("placement: {e}")))?,
        reduction_factor: value["reduction_factor"].as_u64().unwrap_or(0) as usize,
        non_linearity: serde_json::from_value(value["non_linearity"].clone())
            .map_err(|e| HfError::new(&path, format!("non_linearity: {e}")))?,
    };
    let adapters = BottleneckAdapters::<B>::new(model, &config, device)
        .map_err(|e| HfError::new(&path, e.0))?;
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let files = WeightFiles::open_file(&weights_path)?;
    let mut unused: BTreeSet<String> = files.names().map(str::to_string).collect();
    let adapters = replace_params(adapters, &mut |name, shape| {
        match files.shape(name) {
            Some(found) if found == shape => {}
            Some(found) => return Err(format!("`{name}` has shape {found:?}, expected {shape:?}")),
            None => return Err(format!("`{name}` is missing")),
        }
        unused.remove(name);
        let values = files.read(name, false).map_err(|e| e.to_string())?;
        Ok(TensorData::new(values, shape.to_vec()))
    })
    .map_err(|message| HfError::new(&weights_path, message))?;
    super::common::refuse_unused(unused, &weights_path)?;
    Ok(adapters)
}
