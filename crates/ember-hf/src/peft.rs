//! `peft`'s adapter directories, both ways: `adapter_config.json` and
//! `adapter_model.safetensors` (keys `base_model.model.<module>.lora_A.weight`
//! `[r, d_in]` and `….lora_B.weight` `[d_out, r]`), read onto an Ember model of the same
//! architecture and written from one so `PeftModel.from_pretrained` loads it.
//!
//! LoRA, rsLoRA, DoRA and IA³ on the architectures whose projections are separate
//! `Linear`s (llama, mistral, qwen2, mixtral). Module names come from the same tensor-name table as
//! the base weights. Not read yet (each refused by name): GPT-2's fused `c_attn`
//! (`fan_in_fan_out`), a regular-expression `target_modules`, `modules_to_save`,
//! `rank_pattern`/`alpha_pattern` and the other `peft_type`s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use ember_nn::{FusedBackend, Transformer};
use ember_peft::{
    Ia3Config, LoraBias, LoraConfig, LoraInit, LoraReport, Targets, apply_ia3, apply_lora,
};
use serde_json::{Value, json};

use crate::HfArch;
use crate::error::{HfError, at};
use crate::names::tensor_map;
use crate::safetensors_io::{NamedTensor, WeightDType, WeightFiles, write_safetensors};

/// The adapter's configuration file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's tensors.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Ember projection path (`layers.0.attn.q_proj`) → `peft` module path
/// (`model.layers.0.self_attn.q_proj`), for every projection of `model`.
fn module_names<B: FusedBackend>(
    model: &mut Transformer<B>,
    arch: HfArch,
    at_path: &Path,
) -> Result<BTreeMap<String, String>, HfError> {
    let table: BTreeMap<String, (String, bool)> = tensor_map(arch, model.config())
        .into_iter()
        .map(|e| (e.ember, (e.hf, e.part.is_some())))
        .collect();
    let mut out = BTreeMap::new();
    for (path, _) in model.projections_mut() {
        let Some((hf, fused)) = table.get(&format!("{path}.weight")) else {
            continue; // a tied LM head has no tensor of its own
        };
        if *fused {
            return Err(HfError::new(
                at_path,
                format!(
                    "`{path}` is part of a fused Hugging Face tensor (`{hf}`): adapters on \
                     fused projections are not supported"
                ),
            ));
        }
        let module = hf.strip_suffix(".weight").unwrap_or(hf);
        out.insert(path, module.to_string());
    }
    Ok(out)
}

/// `peft`'s rule for a list: the module is named, or ends with `.name`.
fn peft_matches(module: &str, target: &str) -> bool {
    module == target || module.ends_with(&format!(".{target}"))
}

/// The Ember paths of the modules `targets` (read from `key` of `adapter_config.json`)
/// names, as `peft` resolves a list (a module's name or a dotted suffix of it) or
/// `all-linear`.
fn resolve(
    targets: &Targets,
    modules: &BTreeMap<String, String>,
    key: &str,
    config_path: &Path,
) -> Result<Vec<String>, HfError> {
    Ok(match targets {
        Targets::Names(names) => {
            if let Some(missing) = names
                .iter()
                .find(|t| !modules.values().any(|m| peft_matches(m, t)))
            {
                return Err(HfError::new(
                    config_path,
                    format!("{key}: `{missing}` is not a module of this model"),
                ));
            }
            modules
                .iter()
                .filter(|(_, m)| names.iter().any(|t| peft_matches(m, t)))
                .map(|(p, _)| p.clone())
                .collect()
        }
        Targets::AllLinear => modules
            .keys()
            .filter(|p| p.as_str() != "lm_head")
            .cloned()
            .collect(),
        Targets::Glob(_) | Targets::Paths(_) => {
            unreachable!("adapter_config.json gives names or all-linear")
        }
    })
}

/// `target_modules`-style value at `key`: a list of names or `"all-linear"`.
fn targets_at(value: &Value, key: &str, path: &Path) -> Result<Targets, HfError> {
    let err = |msg: String| HfError::new(path, msg);
    match &value[key] {
        Value::String(s) if s == "all-linear" => Ok(Targets::AllLinear),
        Value::String(s) => Err(err(format!(
            "{key} = {s:?}: a regular expression is not supported; list the module names"
        ))),
        Value::Array(names) => Ok(Targets::Names(
            names
                .iter()
                .map(|n| {
                    n.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(format!("{key}: {n} is not a string")))
                })
                .collect::<Result<_, _>>()?,
        )),
        Value::Null if key == "feedforward_modules" => Ok(Targets::Names(Vec::new())),
        other => Err(err(format!("{key}: expected a list, found {other}"))),
    }
}

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
) -> Result<(Transformer<B>, LoraReport), HfError> {
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
            let old = slot.take().expect("apply_lora set both matrices");
            let tensor = Tensor::from_data(TensorData::new(values, [shape[1], shape[0]]), device);
            *slot = Some(Param::initialized(
                old.id,
                tensor.set_require_grad(old.is_require_grad()),
            ));
            unused.remove(&name);
        }
        if let Some(slot) = adapter.magnitude.as_mut() {
            let name = format!("base_model.model.{module}.lora_magnitude_vector");
            let values = read_vector(&files, &name, &[d_out], &weights_path)?;
            let old = slot.clone();
            let tensor = Tensor::from_data(TensorData::new(values, [d_out]), device);
            *slot = Param::initialized(old.id, tensor.set_require_grad(old.is_require_grad()));
            unused.remove(&name);
        }
    }
    if let Some(extra) = unused.into_iter().next() {
        return Err(HfError::new(
            &weights_path,
            format!("`{extra}` belongs to no adapted module of this model"),
        ));
    }
    Ok((model, report))
}

/// The tensor `name` of `files`, which must have `shape`.
fn read_vector(
    files: &WeightFiles,
    name: &str,
    shape: &[usize],
    weights_path: &Path,
) -> Result<Vec<f32>, HfError> {
    let found = files
        .shape(name)
        .ok_or_else(|| HfError::new(weights_path, format!("`{name}` is missing")))?;
    if found != shape {
        return Err(HfError::new(
            weights_path,
            format!("`{name}` has shape {found:?}, expected {shape:?}"),
        ));
    }
    files.read(name, false)
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
    std::fs::create_dir_all(dir).map_err(at(dir))?;
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
            let values = t
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| HfError::new(&config_path, format!("`{path}`: {e:?}")))?;
            tensors.push(NamedTensor {
                name: format!("base_model.model.{module}.{part}.weight"),
                shape,
                values,
            });
        }
        if let Some(m) = &adapter.magnitude {
            let values = m
                .val()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| HfError::new(&config_path, format!("`{path}`: {e:?}")))?;
            tensors.push(NamedTensor {
                name: format!("base_model.model.{module}.lora_magnitude_vector"),
                shape: vec![values.len()],
                values,
            });
        }
        targets.push(module.clone());
    }
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let tmp = dir.join(format!(".{ADAPTER_WEIGHTS}.tmp"));
    write_safetensors(&tmp, &tensors, WeightDType::F32)?;
    std::fs::rename(&tmp, &weights_path).map_err(at(&weights_path))?;
    let bias = match config.bias {
        LoraBias::None => "none",
        LoraBias::All => "all",
        LoraBias::LoraOnly => "lora_only",
    };
    let text = serde_json::to_string_pretty(&json!({
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
    }))
    .expect("the config serialises");
    ember_data::files::write_atomic(&config_path, text.as_bytes()).map_err(at(&config_path))
}

/// The `peft_type` of the adapter in `dir`.
fn peft_type(dir: &Path) -> Result<String, HfError> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = ember_data::files::read_regular_text(&path).map_err(at(&path))?;
    let value: Value = serde_json::from_str(&text).map_err(at(&path))?;
    Ok(value["peft_type"].as_str().unwrap_or("").to_string())
}

/// Attaches the adapter in `dir`, whatever its `peft_type` (`LORA`, DoRA and rsLoRA
/// included, or `IA3`).
pub fn load_adapter<B: FusedBackend>(
    dir: &Path,
    model: Transformer<B>,
    arch: HfArch,
    device: &B::Device,
) -> Result<(Transformer<B>, LoraReport), HfError> {
    match peft_type(dir)?.as_str() {
        "LORA" => load_lora_adapter(dir, model, arch, device),
        "IA3" => load_ia3_adapter(dir, model, arch, device),
        other => Err(HfError::new(
            &dir.join(ADAPTER_CONFIG),
            format!(
                "peft_type = {other:?}: Ember reads \"LORA\" (with rsLoRA and DoRA) and \"IA3\" \
                 adapters"
            ),
        )),
    }
}

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
) -> Result<(Transformer<B>, LoraReport), HfError> {
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
        let tensor = Tensor::from_data(TensorData::new(values, [n]), device);
        *slot = Param::initialized(slot.id, tensor.set_require_grad(slot.is_require_grad()));
        unused.remove(&name);
    }
    if let Some(extra) = unused.into_iter().next() {
        return Err(HfError::new(
            &weights_path,
            format!("`{extra}` belongs to no adapted module of this model"),
        ));
    }
    Ok((model, report))
}

/// Writes `model`'s IA³ vectors to `dir` in `peft`'s format.
pub fn save_ia3_adapter<B: FusedBackend>(
    dir: &Path,
    model: &Transformer<B>,
    arch: HfArch,
) -> Result<(), HfError> {
    std::fs::create_dir_all(dir).map_err(at(dir))?;
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
        let values = vector
            .val()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| HfError::new(&config_path, format!("`{path}`: {e:?}")))?;
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
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let tmp = dir.join(format!(".{ADAPTER_WEIGHTS}.tmp"));
    write_safetensors(&tmp, &tensors, WeightDType::F32)?;
    std::fs::rename(&tmp, &weights_path).map_err(at(&weights_path))?;
    let text = serde_json::to_string_pretty(&json!({
        "peft_type": "IA3",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": null,
        "target_modules": targets,
        "feedforward_modules": feedforward,
        "fan_in_fan_out": false,
        "init_ia3_weights": true,
        "modules_to_save": null,
        "inference_mode": true,
    }))
    .expect("the config serialises");
    ember_data::files::write_atomic(&config_path, text.as_bytes()).map_err(at(&config_path))
}
