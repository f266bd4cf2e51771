//! AdaLoRA adapter directories, as `peft` 0.13 writes them: `adapter_config.json` with
//! `peft_type: "ADALORA"`, the schedule (`init_r`, `target_r`, `tinit`, `tfinal`, `deltaT`,
//! `beta1`, `beta2`, `orth_reg_weight`, `total_step`) and `rank_pattern`
//! (`{"<module>.lora_E": [bool; init_r]}`); `adapter_model.safetensors` with
//! `base_model.model.<module>.lora_A` `[r, d_in]`, `….lora_E` `[r, 1]` and `….lora_B`
//! `[d_out, r]` (no `.weight` suffix, and no `ranknum`: `peft` keeps `ranknum = init_r`),
//! where a module the rank pattern covers is stored with its surviving ranks only
//! (`r` = the number of `true`s, possibly 0).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ember_nn::{FusedBackend, Transformer, TransformerConfig};
use ember_peft::{AdaLoraConfig, PeftReport, Targets, apply_adalora};
use serde_json::{Value, json};

use super::common::{
    module_names, refilled, refuse_unused, resolve, targets_at, values_of, write_adapter,
};
use super::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::HfArch;
use crate::error::{HfError, at};
use crate::names::tensor_map;
use crate::safetensors_io::{NamedTensor, WeightFiles};

/// Reads `adapter_config.json` as an AdaLoRA configuration for a model of `arch` with
/// `model_config` (which names the modules of `rank_pattern` in Ember's paths). `Err`
/// names the key that is missing, malformed or not supported.
pub fn read_adalora_config(
    dir: &Path,
    arch: HfArch,
    model_config: &TransformerConfig,
) -> Result<(AdaLoraConfig, Value), HfError> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = ember_data::files::read_regular_text(&path).map_err(at(&path))?;
    let value: Value = serde_json::from_str(&text).map_err(at(&path))?;
    let err = |msg: String| HfError::new(&path, msg);
    if value["peft_type"].as_str() != Some("ADALORA") {
        return Err(err(format!(
            "peft_type = {}: expected \"ADALORA\"",
            value["peft_type"]
        )));
    }
    if value["fan_in_fan_out"].as_bool() == Some(true) {
        return Err(err(
            "fan_in_fan_out = true: adapters on Conv1D (GPT-2) weights are not read yet".into(),
        ));
    }
    if value["modules_to_save"]
        .as_array()
        .is_some_and(|m| !m.is_empty())
    {
        return Err(err("modules_to_save: not read yet".into()));
    }
    if value["alpha_pattern"]
        .as_object()
        .is_some_and(|m| !m.is_empty())
    {
        return Err(err(
            "alpha_pattern: per-module alphas are not read yet".into()
        ));
    }
    match value["bias"].as_str().unwrap_or("none") {
        "none" => {}
        other => return Err(err(format!("bias = {other:?}: only \"none\" is read"))),
    }
    if value["use_dora"].as_bool() == Some(true) {
        return Err(err("use_dora = true: AdaLoRA has no DoRA form".into()));
    }
    let defaults = AdaLoraConfig::default();
    let count = |key: &str, default: usize| match &value[key] {
        Value::Null => Ok(default),
        v => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| err(format!("{key}: expected a whole number, found {v}"))),
    };
    let number = |key: &str, default: f64| match &value[key] {
        Value::Null => Ok(default),
        v => v
            .as_f64()
            .ok_or_else(|| err(format!("{key}: expected a number, found {v}"))),
    };
    let init_r = match &value["init_r"] {
        Value::Null => defaults.init_r,
        _ => count("init_r", 0)?,
    };
    let total_step = match &value["total_step"] {
        Value::Null => None,
        _ => Some(count("total_step", 0)?),
    };
    let rank_pattern = match &value["rank_pattern"] {
        Value::Null => None,
        Value::Object(m) if m.is_empty() => None,
        Value::Object(m) => Some(pattern_by_path(m, arch, model_config, &path)?),
        other => {
            return Err(err(format!(
                "rank_pattern: expected an object, found {other}"
            )));
        }
    };
    let config = AdaLoraConfig {
        init_r,
        target_r: count("target_r", defaults.target_r)?,
        tinit: count("tinit", defaults.tinit)?,
        tfinal: count("tfinal", defaults.tfinal)?,
        delta_t: count("deltaT", defaults.delta_t)?,
        beta1: number("beta1", defaults.beta1)?,
        beta2: number("beta2", defaults.beta2)?,
        orth_reg_weight: number("orth_reg_weight", defaults.orth_reg_weight)?,
        total_step,
        lora_alpha: number("lora_alpha", defaults.lora_alpha)?,
        lora_dropout: number("lora_dropout", defaults.lora_dropout)?,
        targets: targets_at(&value, "target_modules", &path)?,
        rank_pattern,
    };
    config.validate().map_err(|e| err(e.0))?;
    Ok((config, value))
}

/// `peft`'s module name (`model.layers.0.self_attn.q_proj`) → Ember path, for every
/// projection of a model with `config`.
fn ember_paths(arch: HfArch, config: &TransformerConfig) -> BTreeMap<String, String> {
    tensor_map(arch, config)
        .into_iter()
        .filter(|e| e.part.is_none())
        .filter_map(|e| {
            let module = e.hf.strip_suffix(".weight")?.to_string();
            let path = e.ember.strip_suffix(".weight")?.to_string();
            Some((module, path))
        })
        .collect()
}

/// `rank_pattern` as `peft` saves it (`"<module>.lora_E": [bool]`; the last dotted part
/// dropped, as `peft` does) keyed by Ember path.
fn pattern_by_path(
    saved: &serde_json::Map<String, Value>,
    arch: HfArch,
    config: &TransformerConfig,
    path: &Path,
) -> Result<BTreeMap<String, Vec<bool>>, HfError> {
    let paths = ember_paths(arch, config);
    let mut out = BTreeMap::new();
    for (key, mask) in saved {
        let module = key.rsplit_once('.').map_or(key.as_str(), |(m, _)| m);
        let ember = paths.get(module).ok_or_else(|| {
            HfError::new(
                path,
                format!("rank_pattern: `{key}` names no projection of this model"),
            )
        })?;
        let mask = mask
            .as_array()
            .and_then(|m| m.iter().map(Value::as_bool).collect::<Option<Vec<bool>>>())
            .ok_or_else(|| {
                HfError::new(
                    path,
                    format!("rank_pattern: `{key}` is not a list of true/false"),
                )
            })?;
        out.insert(ember.clone(), mask);
    }
    Ok(out)
}

/// Attaches the AdaLoRA adapter in `dir` to `model` (an `arch` model), each module at the
/// rank it was saved with (the survivors of its `rank_pattern`, possibly 0), scaled by
/// `lora_alpha / (init_r + 1e-5)` as `peft` keeps it. The report counts the loaded ranks,
/// as `peft` does once it resized the modules. `Err` names the file and the key or tensor
/// at fault.
pub fn load_adalora_adapter<B: FusedBackend>(
    dir: &Path,
    mut model: Transformer<B>,
    arch: HfArch,
    device: &B::Device,
) -> Result<(Transformer<B>, PeftReport), HfError> {
    let (config, _) = read_adalora_config(dir, arch, model.config())?;
    let config_path = dir.join(ADAPTER_CONFIG);
    let modules = module_names(&mut model, arch, &config_path)?;
    let chosen = resolve(&config.targets, &modules, "target_modules", &config_path)?;
    let pattern = config.rank_pattern.clone().unwrap_or_default();
    if let Some(stray) = pattern.keys().find(|p| !chosen.contains(p)) {
        return Err(HfError::new(
            &config_path,
            format!("rank_pattern: `{stray}` is not among the adapted target_modules"),
        ));
    }
    let ember_config = AdaLoraConfig {
        targets: Targets::Paths(chosen),
        ..config.clone()
    };
    let (mut model, report) =
        apply_adalora(model, &ember_config, device).map_err(|e| HfError::new(&config_path, e.0))?;
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let files = WeightFiles::open_file(&weights_path)?;
    let mut unused: BTreeSet<String> = files.names().map(str::to_string).collect();
    let mut trainable = 0;
    for (path, projection) in model.projections_mut() {
        let Some(adapter) = projection.adapter.as_mut() else {
            continue;
        };
        let [d_in, d_out] = projection.weight.dims();
        let module = &modules[&path];
        let r = pattern
            .get(&path)
            .map_or(config.init_r, |p| p.iter().filter(|&&k| k).count());
        let read = |part: &str, shape: [usize; 2], transpose: bool| {
            let name = format!("base_model.model.{module}.{part}");
            let found = files
                .shape(&name)
                .ok_or_else(|| HfError::new(&weights_path, format!("`{name}` is missing")))?;
            if found != shape {
                return Err(HfError::new(
                    &weights_path,
                    format!(
                        "`{name}` has shape {found:?}, expected {shape:?} (rank {r}: init_r = {} \
                         or the survivors of its rank_pattern)",
                        config.init_r
                    ),
                ));
            }
            let values = if r == 0 {
                Vec::new()
            } else {
                files.read(&name, transpose)?
            };
            Ok((name, values))
        };
        let (a, down) = read("lora_A", [r, d_in], true)?;
        let (b, up) = read("lora_B", [d_out, r], true)?;
        let (e, values) = read("lora_E", [r, 1], false)?;
        if r == 0 {
            // Pruned away: an adapter without tensors (burn has no zero-sized ones).
            (adapter.down, adapter.up, adapter.rank_scale) = (None, None, None);
        } else {
            let old = adapter.down.as_ref().expect("apply_adalora sets it");
            adapter.down = Some(refilled(old, down, [d_in, r], device));
            let old = adapter.up.as_ref().expect("apply_adalora sets it");
            adapter.up = Some(refilled(old, up, [r, d_out], device));
            let old = adapter.rank_scale.as_ref().expect("apply_adalora sets it");
            adapter.rank_scale = Some(refilled(old, values, [r], device));
        }
        for name in [a, b, e] {
            unused.remove(&name);
        }
        trainable += r * (d_in + d_out + 1);
    }
    refuse_unused(unused, &weights_path)?;
    let report = PeftReport {
        total: report.total - report.trainable + trainable,
        trainable,
        adapted: report.adapted,
    };
    Ok((model, report))
}

/// The indices `pattern` keeps.
fn kept(pattern: &[bool]) -> Vec<usize> {
    (0..pattern.len()).filter(|&k| pattern[k]).collect()
}

/// Writes `model`'s AdaLoRA adapters to `dir` in `peft`'s format, with `config` as
/// trained: a module that `config.rank_pattern` covers is written with only the ranks
/// it keeps (as `peft`'s `save_pretrained` does; an adapter already at those ranks, as
/// [`load_adalora_adapter`] builds it, is written as it is), and the pattern goes into
/// `adapter_config.json`. Set `config.rank_pattern` from
/// [`ember_peft::RankAllocator::rank_pattern`] to save what training pruned. Each file
/// is written atomically.
pub fn save_adalora_adapter<B: FusedBackend>(
    dir: &Path,
    model: &Transformer<B>,
    config: &AdaLoraConfig,
    arch: HfArch,
) -> Result<(), HfError> {
    let mut model = model.clone();
    let config_path = dir.join(ADAPTER_CONFIG);
    config
        .validate()
        .map_err(|e| HfError::new(&config_path, e.0))?;
    let modules = module_names(&mut model, arch, &config_path)?;
    let pattern = config.rank_pattern.clone().unwrap_or_default();
    let mut tensors = Vec::new();
    let mut targets = Vec::new();
    let mut saved_pattern = serde_json::Map::new();
    let mut seen = BTreeSet::new();
    for (path, projection) in model.projections_mut() {
        let Some(adapter) = &projection.adapter else {
            continue;
        };
        let fail = |msg: String| HfError::new(&config_path, format!("`{path}`: {msg}"));
        let module = modules
            .get(&path)
            .ok_or_else(|| fail("has no Hugging Face name".into()))?;
        if adapter.magnitude.is_some()
            || adapter.input_scale.is_some()
            || adapter.output_scale.is_some()
        {
            return Err(fail("is not an AdaLoRA adapter".into()));
        }
        let [d_in, d_out] = projection.weight.dims();
        // An adapter without tensors is one pruned to rank 0.
        let (mut a, mut e, mut b, r) = match (&adapter.down, &adapter.rank_scale, &adapter.up) {
            (Some(down), Some(e), Some(up)) => {
                if (adapter.scaling - config.scaling()).abs() > 1e-9 * config.scaling().abs() {
                    return Err(fail(format!(
                        "scaling {} is not lora_alpha / (init_r + 1e-5) = {} of this config",
                        adapter.scaling,
                        config.scaling()
                    )));
                }
                (
                    values_of(down.val().transpose(), &path, &config_path)?, // [r, d_in]
                    values_of(e.val(), &path, &config_path)?,
                    values_of(up.val().transpose(), &path, &config_path)?, // [d_out, r]
                    down.dims()[1],
                )
            }
            (None, None, None) => (Vec::new(), Vec::new(), Vec::new(), 0),
            _ => return Err(fail("is not an AdaLoRA adapter".into())),
        };
        let mut rank = r;
        if let Some(p) = pattern.get(&path) {
            seen.insert(path.clone());
            let keep = kept(p);
            if r == p.len() && keep.len() != r {
                a = keep
                    .iter()
                    .flat_map(|&k| a[k * d_in..(k + 1) * d_in].to_vec())
                    .collect();
                e = keep.iter().map(|&k| e[k]).collect();
                b = (0..d_out)
                    .flat_map(|o| keep.iter().map(|&k| b[o * r + k]).collect::<Vec<_>>())
                    .collect();
                rank = keep.len();
            } else if r != keep.len() {
                return Err(fail(format!(
                    "rank {r}, but its rank_pattern keeps {} of {}",
                    keep.len(),
                    p.len()
                )));
            }
            saved_pattern.insert(format!("{module}.lora_E"), json!(p));
        } else if r != config.init_r {
            return Err(fail(format!(
                "rank {r}, but config.rank_pattern does not cover it (peft would build rank \
                 init_r = {})",
                config.init_r
            )));
        }
        let name = |part: &str| format!("base_model.model.{module}.{part}");
        tensors.push(NamedTensor {
            name: name("lora_A"),
            shape: vec![rank, d_in],
            values: a,
        });
        tensors.push(NamedTensor {
            name: name("lora_B"),
            shape: vec![d_out, rank],
            values: b,
        });
        tensors.push(NamedTensor {
            name: name("lora_E"),
            shape: vec![rank, 1],
            values: e,
        });
        targets.push(module.clone());
    }
    if let Some(stray) = pattern.keys().find(|p| !seen.contains(*p)) {
        return Err(HfError::new(
            &config_path,
            format!("rank_pattern: `{stray}` has no AdaLoRA adapter in this model"),
        ));
    }
    let config_value = json!({
        "peft_type": "ADALORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": null,
        "r": 8,
        "init_r": config.init_r,
        "target_r": config.target_r,
        "tinit": config.tinit,
        "tfinal": config.tfinal,
        "deltaT": config.delta_t,
        "beta1": config.beta1,
        "beta2": config.beta2,
        "orth_reg_weight": config.orth_reg_weight,
        "total_step": config.total_step,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "target_modules": targets,
        "modules_to_save": null,
        "rank_pattern": if saved_pattern.is_empty() { Value::Null } else { Value::Object(saved_pattern) },
        "alpha_pattern": {},
        "inference_mode": true,
    });
    write_adapter(dir, &tensors, &config_value)
}
