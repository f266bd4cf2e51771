//! A hook's state in a checkpoint directory: `hook-NAME.json` and `hook-NAME.safetensors`.
//!
//! The files sit beside the weights (not in a subdirectory) because the checkpoint's
//! manifest lists, and its loader verifies, the files directly in the directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use super::{HookState, HookTensor};
use crate::checkpoint::{CheckpointError, error};

const PREFIX: &str = "hook-";
const MAX_NAME: usize = 64;

/// `hook-NAME.json`: the hook's JSON state and the order of its tensors.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    hook: String,
    state: serde_json::Value,
    tensors: Vec<String>,
}

/// `hook-NAME.json` in checkpoint directory `dir`.
pub(crate) fn json_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{PREFIX}{name}.json"))
}

fn tensors_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{PREFIX}{name}.safetensors"))
}

/// Checks that the hooks' names can name files and are distinct.
pub(crate) fn validate_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for name in names {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(format!(
                "step hook {name:?}: a hook's name must be 1 to {MAX_NAME} of A-Z a-z 0-9 _ -"
            ));
        }
        if !seen.insert(name) {
            return Err(format!(
                "step hook `{name}` is registered twice (hook names must be unique)"
            ));
        }
    }
    Ok(())
}

/// Writes each `(name, state)` into checkpoint directory `dir` (being filled).
pub(crate) fn write_states(
    dir: &Path,
    states: &[(String, HookState)],
) -> Result<(), CheckpointError> {
    for (name, state) in states {
        let path = tensors_path(dir, name);
        let mut names = BTreeSet::new();
        let mut bytes = Vec::with_capacity(state.tensors.len());
        for tensor in &state.tensors {
            if !names.insert(tensor.name.as_str()) {
                return Err(error(
                    &path,
                    format!("hook `{name}`: two tensors named `{}`", tensor.name),
                ));
            }
            let elements = tensor
                .shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d));
            if elements != Some(tensor.values.len()) {
                return Err(error(
                    &path,
                    format!(
                        "hook `{name}`: tensor `{}` has {} values for shape {:?}",
                        tensor.name,
                        tensor.values.len(),
                        tensor.shape
                    ),
                ));
            }
            bytes.push(
                tensor
                    .values
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            );
        }
        let views = state
            .tensors
            .iter()
            .zip(&bytes)
            .map(|(tensor, bytes)| {
                TensorView::new(Dtype::F32, tensor.shape.clone(), bytes)
                    .map(|view| (tensor.name.as_str(), view))
                    .map_err(|e| error(&path, format!("hook `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize_to_file(views, None, &path).map_err(|e| error(&path, e))?;

        let file = StateFile {
            hook: name.clone(),
            state: state.json.clone(),
            tensors: state.tensors.iter().map(|t| t.name.clone()).collect(),
        };
        let path = json_path(dir, name);
        let text = serde_json::to_string_pretty(&file).map_err(|e| error(&path, e))?;
        std::fs::write(&path, text).map_err(|e| error(&path, e))?;
    }
    Ok(())
}

/// The saved state of each hook in `names` (in that order) from checkpoint directory
/// `dir`; refuses a directory holding the state of a hook not in `names`.
pub(crate) fn load_states(dir: &Path, names: &[&str]) -> Result<Vec<HookState>, CheckpointError> {
    let entries = std::fs::read_dir(dir).map_err(|e| error(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| error(dir, e))?;
        files.push(entry.file_name().to_string_lossy().into_owned());
    }
    files.sort();
    for file in &files {
        let hook = file.strip_prefix(PREFIX).and_then(|rest| {
            rest.strip_suffix(".json")
                .or_else(|| rest.strip_suffix(".safetensors"))
        });
        if let Some(hook) = hook
            && !names.contains(&hook)
        {
            return Err(error(
                &dir.join(file),
                format!(
                    "the checkpoint holds the state of step hook `{hook}`, which this run does not register (register it to resume, or resume from a checkpoint without it)"
                ),
            ));
        }
    }
    names.iter().map(|name| load_state(dir, name)).collect()
}

/// One hook's saved state.
fn load_state(dir: &Path, name: &str) -> Result<HookState, CheckpointError> {
    let path = json_path(dir, name);
    if std::fs::symlink_metadata(&path).is_err() {
        return Err(error(
            &path,
            format!(
                "missing: the checkpoint holds no state for step hook `{name}`, which this run registers"
            ),
        ));
    }
    let text = ember_data::files::read_regular_text(&path).map_err(|e| error(&path, e))?;
    let file: StateFile = serde_json::from_str(&text)
        .map_err(|e| error(&path, format!("step hook `{name}`: malformed state: {e}")))?;
    if file.hook != name {
        return Err(error(
            &path,
            format!("holds the state of step hook `{}`, not `{name}`", file.hook),
        ));
    }

    let path = tensors_path(dir, name);
    ember_data::files::ensure_regular(&path).map_err(|e| error(&path, e))?;
    let bytes = std::fs::read(&path).map_err(|e| error(&path, e))?;
    let read = SafeTensors::deserialize(&bytes).map_err(|e| {
        error(
            &path,
            format!("step hook `{name}`: not a safetensors file: {e}"),
        )
    })?;
    let listed: BTreeSet<&str> = file.tensors.iter().map(String::as_str).collect();
    if listed.len() != file.tensors.len() || read.len() != listed.len() {
        return Err(error(
            &path,
            format!(
                "step hook `{name}`: holds tensors {:?}, but its state lists {:?}",
                sorted(read.names()),
                file.tensors
            ),
        ));
    }
    let mut tensors = Vec::with_capacity(file.tensors.len());
    for tensor_name in &file.tensors {
        let view = read.tensor(tensor_name).map_err(|_| {
            error(
                &path,
                format!("step hook `{name}`: missing tensor `{tensor_name}`"),
            )
        })?;
        if view.dtype() != Dtype::F32 {
            return Err(error(
                &path,
                format!(
                    "step hook `{name}`: tensor `{tensor_name}` is {:?}, not F32",
                    view.dtype()
                ),
            ));
        }
        tensors.push(HookTensor {
            name: tensor_name.clone(),
            shape: view.shape().to_vec(),
            values: view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        });
    }
    Ok(HookState {
        json: file.state,
        tensors,
    })
}

fn sorted(mut names: Vec<&str>) -> Vec<&str> {
    names.sort_unstable();
    names
}
