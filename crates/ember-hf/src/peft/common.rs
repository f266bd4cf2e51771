//! What every `peft` adapter type shares: module names, target resolution, reading
//! tensors and the config's `peft_type`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use ember_nn::{FusedBackend, Transformer};
use ember_peft::{PeftReport, Targets};
use serde_json::Value;

use crate::HfArch;
use crate::error::{HfError, at};
use crate::names::tensor_map;
use crate::safetensors_io::{NamedTensor, WeightDType, WeightFiles, write_safetensors};

/// Ember projection path (`layers.0.attn.q_proj`) → `peft` module path
/// (`model.layers.0.self_attn.q_proj`), for every projection of `model`.
pub(super) fn module_names<B: FusedBackend>(
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
pub(super) fn peft_matches(module: &str, target: &str) -> bool {
    module == target || module.ends_with(&format!(".{target}"))
}

/// The Ember paths of the modules `targets` (read from `key` of `adapter_config.json`)
/// names, as `peft` resolves a list (a module's name or a dotted suffix of it) or
/// `all-linear`.
pub(super) fn resolve(
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
pub(super) fn targets_at(value: &Value, key: &str, path: &Path) -> Result<Targets, HfError> {
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

/// The tensor `name` of `files`, which must have `shape`.
pub(super) fn read_vector(
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

/// The `peft_type` of the adapter in `dir` (`LORA`, `IA3`, `PREFIX_TUNING`, …).
pub fn peft_type(dir: &Path) -> Result<String, HfError> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = ember_data::files::read_regular_text(&path).map_err(at(&path))?;
    let value: Value = serde_json::from_str(&text).map_err(at(&path))?;
    Ok(value["peft_type"].as_str().unwrap_or("").to_string())
}

/// The adapter's configuration file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's tensors.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Attaches the adapter in `dir`, whatever its `peft_type` (`LORA`, DoRA and rsLoRA
/// included, `ADALORA` or `IA3`).
pub fn load_adapter<B: FusedBackend>(
    dir: &Path,
    model: Transformer<B>,
    arch: HfArch,
    device: &B::Device,
) -> Result<(Transformer<B>, PeftReport), HfError> {
    match peft_type(dir)?.as_str() {
        "LORA" => super::load_lora_adapter(dir, model, arch, device),
        "ADALORA" => super::load_adalora_adapter(dir, model, arch, device),
        "IA3" => super::load_ia3_adapter(dir, model, arch, device),
        other => Err(HfError::new(
            &dir.join(ADAPTER_CONFIG),
            format!(
                "peft_type = {other:?}: Ember reads \"LORA\" (with rsLoRA and DoRA), \"ADALORA\" \
                 and \"IA3\" adapters"
            ),
        )),
    }
}

/// `old`'s parameter (same id, same trainability) holding `values` as `shape`.
pub(super) fn refilled<B: FusedBackend, const D: usize>(
    old: &Param<Tensor<B, D>>,
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    let tensor = Tensor::from_data(TensorData::new(values, shape), device);
    Param::initialized(old.id, tensor.set_require_grad(old.is_require_grad()))
}

/// `Err` naming the first tensor of the adapter file that no adapted module read.
pub(super) fn refuse_unused(unused: BTreeSet<String>, weights_path: &Path) -> Result<(), HfError> {
    match unused.into_iter().next() {
        Some(extra) => Err(HfError::new(
            weights_path,
            format!("`{extra}` belongs to no adapted module of this model"),
        )),
        None => Ok(()),
    }
}

/// `t`'s values as f32 (`what` names it in an error at `path`).
pub(super) fn values_of<B: FusedBackend, const D: usize>(
    t: Tensor<B, D>,
    what: &str,
    path: &Path,
) -> Result<Vec<f32>, HfError> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| HfError::new(path, format!("`{what}`: {e:?}")))
}

/// Writes an adapter directory: `tensors` as f32 `adapter_model.safetensors`, then
/// `config` as `adapter_config.json`, each to a temporary name, flushed, and renamed.
pub(super) fn write_adapter(
    dir: &Path,
    tensors: &[NamedTensor],
    config: &Value,
) -> Result<(), HfError> {
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let tmp = dir.join(format!(".{ADAPTER_WEIGHTS}.tmp"));
    write_safetensors(&tmp, tensors, WeightDType::F32)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(at(&tmp))?;
    std::fs::rename(&tmp, &weights_path).map_err(at(&weights_path))?;
    let config_path = dir.join(ADAPTER_CONFIG);
    let text = serde_json::to_string_pretty(config).expect("the config serialises");
    ember_data::files::write_atomic(&config_path, text.as_bytes()).map_err(at(&config_path))
}
