//! IA³ adapter directories.

use std::collections::BTreeSet;
use std::path::Path;

use ember_nn::{FusedBackend, Transformer};
use ember_peft::{Ia3Config, PeftReport, Targets, apply_ia3};
use serde_json::{Value, json};

use super::common::{
    module_names, read_vector, refilled, refuse_unused, resolve, targets_at, values_of,
    write_adapter,
};
use super::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::HfArch;
use crate::error::{HfError, at};
use crate::safetensors_io::{NamedTensor, WeightFiles};

/// Reads `adapter_config.json` as an IA³ configuration (`target_modules`,
/// `feedforward_modules`).
pub fn read_ia3_config(dir: &Path) -> Result<Ia3Config, HfError> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = ember_data::files::read_regular_text(&path).map_err(at(&path))?;
    let value: Value = serde_json::from_str(&text).map_err(at(&path))?;
    if value["peft_type"].as_str() != Some("IA3") {
        return Err(HfError::new(
            &path,
            format!("peft_type = {:?}: expected \"IA3\"", value["peft_type"]),
        ));
    }
    if value["fan_in_fan_out"].as_bool() == Some(true) {
        return Err(HfError::new(
            &path,
            "fan_in_fan_out = true: adapters on Conv1D (GPT-2) weights are not read yet",
        ));
    }
    if value["modules_to_save"]
        .as_array()
        .is_some_and(|m| !m.is_empty())
    {
        return Err(HfError::new(&path, "modules_to_save: not read yet"));
    }
    Ok(Ia3Config {
        targets: targets_at(&value, "target_modules", &path)?,
        feedforward: targets_at(&value, "feedforward_modules", &path)?,
    })
}

/// Attaches the IA³ adapter in `dir` (keys `base_model.model.<module>.ia3_l`: `[d_out, 1]`
/// on the output side, `[1, d_in]` for feed-forward modules).
pub fn load_ia3_adapter<B: FusedBackend>(
    dir: &Path,
    mut model: Transformer<B>,
    arch: HfArch,
    device: &B::Device,
) -> Result<(Transformer<B>, PeftReport), HfError> {
    let config = read_ia3_config(dir)?;
    let config_path = dir.join(ADAPTER_CONFIG);
    let modules = module_names(&mut model, arch, &config_path)?;
    let targets = resolve(&config.targets, &modules, "target_modules", &config_path)?;
    let feedforward = resolve(
        &config.feedforward,
        &modules,
        "feedforward_modules",
        &config_path,
    )?;
    let ember_config = Ia3Config {
        targets: Targets::Paths(targets),
        feedforward: Targets::Paths(feedforward),
    };
    let (mut model, report) =
        apply_ia3(model, &ember_config, device).map_err(|e| HfError::new(&config_path, e.0))?;
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let files = WeightFiles::open_file(&weights_path)?;
    let mut unused: BTreeSet<String> = files.names().map(str::to_string).collect();
    for (path, projection) in model.projections_mut() {
        let [d_in, d_out] = projection.weight.dims();
        let Some(adapter) = projection.adapter.as_mut() else {
            continue;
        };
        let name = format!("base_model.model.{}.ia3_l", modules[&path]);
        let (slot, shape, n) = match adapter.input_scale.as_mut() {
            Some(slot) => (slot, [1, d_in], d_in),
            None => (
                adapter.output_scale.as_mut().expect("one side is set"),
                [d_out, 1],
                d_out,
            ),
        };
        let values = read_vector(&files, &name, &shape, &weights_path)?;
        *slot = refilled(slot, values, [n], device);
        unused.remove(&name);
    }
    refuse_unused(unused, &weights_path)?;
    Ok((model, report))
}

/// Writes `model`'s IA³ vectors to `dir` in `peft`'s format.
pub fn save_ia3_adapter<B: FusedBackend>(
    dir: &Path,
    model: &Transformer<B>,
    arch: HfArch,
) -> Result<(), HfError> {
    let mut model = model.clone();
    let config_path = dir.join(ADAPTER_CONFIG);
    let modules = module_names(&mut model, arch, &config_path)?;
    let (mut tensors, mut targets, mut feedforward) = (Vec::new(), Vec::new(), Vec::new());
    for (path, projection) in model.projections_mut() {
        let Some(adapter) = &projection.adapter else {
            continue;
        };
        let module = modules.get(&path).ok_or_else(|| {
            HfError::new(&config_path, format!("`{path}` has no Hugging Face name"))
        })?;
        let (vector, input_side) = match (&adapter.input_scale, &adapter.output_scale) {
            (Some(v), None) => (v, true),
            (None, Some(v)) => (v, false),
            _ => {
                return Err(HfError::new(
                    &config_path,
                    format!("`{path}` is not an IA3 adapter"),
                ));
            }
        };
        let values = values_of(vector.val(), &path, &config_path)?;
        let n = values.len();
        tensors.push(NamedTensor {
            name: format!("base_model.model.{module}.ia3_l"),
            shape: if input_side { vec![1, n] } else { vec![n, 1] },
            values,
        });
        targets.push(module.clone());
        if input_side {
            feedforward.push(module.clone());
        }
    }
    let config_value = json!({
        "peft_type": "IA3",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": null,
        "target_modules": targets,
        "feedforward_modules": feedforward,
        "fan_in_fan_out": false,
        "init_ia3_weights": true,
        "modules_to_save": null,
        "inference_mode": true,
    });
    write_adapter(dir, &tensors, &config_value)
}
