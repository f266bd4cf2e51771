//! LoRA (with rsLoRA and DoRA) adapter directories.

use std::collections::BTreeSet;
use std::path::Path;

use ember_nn::{FusedBackend, Transformer};
use ember_peft::{LoraBias, LoraConfig, LoraInit, PeftReport, Targets, apply_lora};
use serde_json::{Value, json};

use super::common::{
    module_names, read_vector, refilled, refuse_unused, resolve, targets_at, values_of,
    write_adapter,
};
use super::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::HfArch;
use crate::error::{HfError, at};
use crate::safetensors_io::{NamedTensor, WeightFiles};

/// Reads `adapter_config.json` as a LoRA configuration; `Err` names the key that is
/// missing, malformed or not supported.
pub fn read_lora_config(dir: &Path) -> Result<(LoraConfig, Value), HfError> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = ember_data::files::read_regular_text(&path).map_err(at(&path))?;
    let value: Value = serde_json::from_str(&text).map_err(at(&path))?;
    let err = |msg: String| HfError::new(&path, msg);
    let peft_type = value["peft_type"].as_str().unwrap_or("");
    if peft_type != "LORA" {
        return Err(err(format!(
            "peft_type = {:?}: only \"LORA\" adapters are read",
            value["peft_type"]
        )));
    }
    let number = |key: &str| {
        value[key]
            .as_f64()
            .ok_or_else(|| err(format!("{key}: expected a number, found {}", value[key])))
    };
    let flag = |key: &str| value[key].as_bool().unwrap_or(false);
    if flag("fan_in_fan_out") {
        return Err(err(
            "fan_in_fan_out = true: adapters on Conv1D (GPT-2) weights are not read yet".into(),
        ));
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if value[key].as_object().is_some_and(|m| !m.is_empty()) {
            return Err(err(format!("{key}: per-module ranks are not read yet")));
        }
    }
    if value["modules_to_save"]
        .as_array()
        .is_some_and(|m| !m.is_empty())
    {
        return Err(err("modules_to_save: not read yet".into()));
    }
    let r = number("r")?;
    if r < 1.0 || r.fract() != 0.0 {
        return Err(err(format!("r = {r}: expected a positive integer")));
    }
    let targets = targets_at(&value, "target_modules", &path)?;
    let bias = match value["bias"].as_str().unwrap_or("none") {
        "none" => LoraBias::None,
        "all" => LoraBias::All,
        "lora_only" => LoraBias::LoraOnly,
        other => {
            return Err(err(format!(
                "bias = {other:?}: expected none, all or lora_only"
            )));
        }
    };
    let init = match &value["init_lora_weights"] {
        Value::String(s) if s == "gaussian" => LoraInit::Gaussian,
        _ => LoraInit::Kaiming,
    };
    let config = LoraConfig {
        r: r as usize,
        alpha: number("lora_alpha")?,
        dropout: value["lora_dropout"].as_f64().unwrap_or(0.0),
        use_rslora: flag("use_rslora"),
        use_dora: flag("use_dora"),
        init,
        bias,
        targets,
    };
    config.validate().map_err(|e| err(e.0))?;
    Ok((config, value))
}

/// Attaches the LoRA adapter in `dir` to `model` (an `arch` model, e.g. one
/// [`crate::HfModel::load_model`] built). `Err` names the file and the key or tensor at
/// fault: a target that is not in the model, a missing or unexpected tensor, a shape that
/// disagrees with `r`.
pub fn load_lora_adapter<B: FusedBackend>(
    dir: &Path,
    mut model: Transformer<B>,
    arch: HfArch,
    device: &B::Device,
) -> Result<(Transformer<B>, PeftReport), HfError> {
    let (config, _) = read_lora_config(dir)?;
    let config_path = dir.join(ADAPTER_CONFIG);
    let modules = module_names(&mut model, arch, &config_path)?;
    let chosen = resolve(&config.targets, &modules, "target_modules", &config_path)?;
    let ember_config = LoraConfig {
        targets: Targets::Paths(chosen),
        ..config.clone()
    };
    let (mut model, report) =
        apply_lora(model, &ember_config, device).map_err(|e| HfError::new(&config_path, e.0))?;
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let files = WeightFiles::open_file(&weights_path)?;
    let mut unused: BTreeSet<String> = files.names().map(str::to_string).collect();
    let r = config.r;
    for (path, projection) in model.projections_mut() {
        let Some(adapter) = projection.adapter.as_mut() else {
            continue;
        };
        let [d_in, d_out] = projection.weight.dims();
        let module = &modules[&path];
        for (part, shape, slot) in [
            ("lora_A", [r, d_in], &mut adapter.down),
            ("lora_B", [d_out, r], &mut adapter.up),
        ] {
            let name = format!("base_model.model.{module}.{part}.weight");
            let found = files
                .shape(&name)
                .ok_or_else(|| HfError::new(&weights_path, format!("`{name}` is missing")))?;
            if found != shape {
                return Err(HfError::new(
                    &weights_path,
                    format!("`{name}` has shape {found:?}, expected {shape:?} (r = {r})"),
                ));
            }
            // Stored `[out, in]`-style; Ember keeps the transpose.
            let values = files.read(&name, true)?;
            let old = slot.as_ref().expect("apply_lora set both matrices");
            *slot = Some(refilled(old, values, [shape[1], shape[0]], device));
            unused.remove(&name);
        }
        if let Some(slot) = adapter.magnitude.as_mut() {
            let name = format!("base_model.model.{module}.lora_magnitude_vector");
            let values = read_vector(&files, &name, &[d_out], &weights_path)?;
            *slot = refilled(slot, values, [d_out], device);
            unused.remove(&name);
        }
    }
    refuse_unused(unused, &weights_path)?;
    Ok((model, report))
}

/// Writes `model`'s LoRA adapters to `dir` in `peft`'s format (`config` as trained; the
/// target list written is every adapted module's full name, so `peft` adapts exactly
/// those). Each file is written atomically.
pub fn save_lora_adapter<B: FusedBackend>(
    dir: &Path,
    model: &Transformer<B>,
    config: &LoraConfig,
    arch: HfArch,
) -> Result<(), HfError> {
    let mut model = model.clone();
    let config_path = dir.join(ADAPTER_CONFIG);
    let modules = module_names(&mut model, arch, &config_path)?;
    let mut tensors = Vec::new();
    let mut targets = Vec::new();
    for (path, projection) in model.projections_mut() {
        let Some(adapter) = &projection.adapter else {
            continue;
        };
        let module = modules.get(&path).ok_or_else(|| {
            HfError::new(&config_path, format!("`{path}` has no Hugging Face name"))
        })?;
        let (Some(down), Some(up)) = (&adapter.down, &adapter.up) else {
            return Err(HfError::new(
                &config_path,
                format!("`{path}` is not a LoRA adapter"),
            ));
        };
        for (part, t) in [("lora_A", down.val()), ("lora_B", up.val())] {
            let t = t.transpose();
            let shape = t.dims().to_vec();
            let values = values_of(t, &path, &config_path)?;
            tensors.push(NamedTensor {
                name: format!("base_model.model.{module}.{part}.weight"),
                shape,
                values,
            });
        }
        if let Some(m) = &adapter.magnitude {
            let values = values_of(m.val(), &path, &config_path)?;
            tensors.push(NamedTensor {
                name: format!("base_model.model.{module}.lora_magnitude_vector"),
                shape: vec![values.len()],
                values,
            });
        }
        targets.push(module.clone());
    }
    let bias = match config.bias {
        LoraBias::None => "none",
        LoraBias::All => "all",
        LoraBias::LoraOnly => "lora_only",
    };
    let config_value = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": null,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "use_rslora": config.use_rslora,
        "use_dora": config.use_dora,
        "bias": bias,
        "fan_in_fan_out": false,
        "init_lora_weights": match config.init {
            LoraInit::Kaiming => json!(true),
            LoraInit::Gaussian => json!("gaussian"),
        },
        "target_modules": targets,
        "modules_to_save": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": true,
    });
    write_adapter(dir, &tensors, &config_value)
}
