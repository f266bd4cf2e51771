//! Writing an Ember model as a Hugging Face directory.

use std::collections::HashMap;
use std::path::Path;

use ember_data::Tokenizer;
use ember_data::tokenizer::TOKENIZER_FILE;
use ember_nn::{FusedBackend, Transformer, param_values_f32};

use crate::config::{CONFIG_FILE, HfArch, export_arch, to_config_json};
use crate::error::{HfError, at};
use crate::generation::{GENERATION_FILE, GenerationConfig};
use crate::names::tensor_map;
use crate::safetensors_io::{NamedTensor, WEIGHTS_FILE, WeightDType, write_safetensors};

/// Writes `model` to `out` as `config.json`, `model.safetensors` (in `dtype`),
/// `generation_config.json` and, when given, `tokenizer.json`. The directory is built
/// beside `out` and renamed into place, so an interrupted export leaves nothing half
/// written. Returns the architecture written.
pub fn export<B: FusedBackend>(
    model: &Transformer<B>,
    tokenizer: Option<&Tokenizer>,
    generation: &GenerationConfig,
    out: &Path,
    dtype: WeightDType,
) -> Result<HfArch, HfError> {
    let config = model.config();
    let arch = export_arch(config).map_err(|m| HfError::new(out, m))?;
    if let Some(tokenizer) = tokenizer
        && tokenizer.vocab_size() > config.vocab_size
    {
        return Err(HfError::new(
            out,
            format!(
                "the tokenizer has {} tokens but the model's vocabulary is {}",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        ));
    }
    let mut values: HashMap<String, (Vec<usize>, Vec<f32>)> = param_values_f32(model);

    let shapes: HashMap<String, Vec<usize>> = values
        .iter()
        .map(|(path, (shape, _))| (path.clone(), shape.clone()))
        .collect();

    // Group entries by Hugging Face tensor (GPT-2's c_attn gathers three parameters).
    let mut tensors: Vec<NamedTensor> = Vec::new();
    for entry in tensor_map(arch, config) {
        let missing = || {
            HfError::new(
                out,
                format!("internal: the model has no parameter `{}`", entry.ember),
            )
        };
        let (shape, data) = match values.remove(&entry.ember) {
            Some(found) => found,
            // A bias-free GPT-2-shaped model (nanoGPT's `bias = False`) exports with zero
            // biases, which compute the same function.
            None if arch == HfArch::Gpt2 => zero_bias(&entry.ember, &shapes).ok_or_else(missing)?,
            None => return Err(missing()),
        };
        let hf_shape = entry.hf_shape(&shape);
        let data = if entry.transpose {
            let (rows, cols) = (shape[0], shape[1]);
            let mut t = vec![0f32; data.len()];
            for r in 0..rows {
                for c in 0..cols {
                    t[c * rows + r] = data[r * cols + c];
                }
            }
            t
        } else {
            data
        };
        match entry.part {
            None => tensors.push(NamedTensor {
                name: entry.hf,
                shape: hf_shape,
                values: data,
            }),
            Some((index, count)) => {
                let width = *shape.last().expect("a parameter has a dimension");
                let full = width * count;
                if index == 0 {
                    tensors.push(NamedTensor {
                        name: entry.hf.clone(),
                        shape: hf_shape,
                        values: vec![0.0; data.len() * count],
                    });
                }
                let fused = tensors
                    .iter_mut()
                    .rev()
                    .find(|t| t.name == entry.hf)
                    .expect("part 0 came first");
                for (row, chunk) in data.chunks_exact(width).enumerate() {
                    let start = row * full + index * width;
                    fused.values[start..start + width].copy_from_slice(chunk);
                }
            }
        }
    }

    write_dir(out, |tmp| {
        write_safetensors(&tmp.join(WEIGHTS_FILE), &tensors, dtype)?;
        write_json(
            &tmp.join(CONFIG_FILE),
            to_config_json(
                arch,
                config,
                generation.bos_token_id,
                &generation.eos_token_ids,
                dtype.torch_name(),
            ),
        )?;
        write_json(&tmp.join(GENERATION_FILE), generation.to_json())?;
        if let Some(tokenizer) = tokenizer {
            let path = tmp.join(TOKENIZER_FILE);
            let json = tokenizer.to_hf_json().map_err(|e| HfError::new(&path, e))?;
            std::fs::write(&path, json).map_err(at(&path))?;
        }
        Ok(())
    })?;
    Ok(arch)
}

/// Zeros shaped like the bias (`.bias`) or LayerNorm shift (`.beta`) at `path` would be,
/// from the weight or scale beside it.
fn zero_bias(path: &str, shapes: &HashMap<String, Vec<usize>>) -> Option<(Vec<usize>, Vec<f32>)> {
    let sibling = if let Some(stem) = path.strip_suffix(".bias") {
        format!("{stem}.weight")
    } else {
        format!("{}.gamma", path.strip_suffix(".beta")?)
    };
    let width = *shapes.get(&sibling)?.last()?;
    Some((vec![width], vec![0.0; width]))
}

fn write_json(path: &Path, value: serde_json::Value) -> Result<(), HfError> {
    let text = serde_json::to_string_pretty(&value).expect("JSON values serialise");
    std::fs::write(path, text + "\n").map_err(at(path))
}

/// Checks that `out` may receive an export: it does not exist, is an empty directory, or
/// is a Hugging Face model directory (an earlier export, replaced whole). Anything else (a
/// file, a directory of other things, an Ember checkpoint) would be lost, so it is refused
/// unless `force`.
pub fn check_export_target(out: &Path, force: bool) -> Result<(), HfError> {
    let meta = match std::fs::symlink_metadata(out) {
        Ok(meta) => meta,
        Err(_) => return Ok(()),
    };
    if force {
        return Ok(());
    }
    let refuse = |what: &str| {
        Err(HfError::new(
            out,
            format!(
                "{what}; exporting would replace it. Choose another --out, or pass --force to replace it"
            ),
        ))
    };
    if !meta.is_dir() {
        return refuse("exists and is not a directory");
    }
    let empty = std::fs::read_dir(out).map_err(at(out))?.next().is_none();
    if empty {
        return Ok(());
    }
    if out.join("ember.json").exists() || out.join("checkpoint").join("ember.json").exists() {
        return refuse("holds an Ember checkpoint");
    }
    if out.join(CONFIG_FILE).is_file() && crate::is_hf_dir(out) {
        return Ok(());
    }
    refuse("is a non-empty directory that is not a Hugging Face model directory")
}

/// Removes `path`, a directory or a file, if it exists.
fn remove(path: &Path) -> Result<(), HfError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).map_err(at(path)),
        Ok(_) => std::fs::remove_file(path).map_err(at(path)),
        Err(_) => Ok(()),
    }
}

/// Builds directory `out` through `fill` in a temporary sibling, flushes it to disk, then
/// renames it into place (replacing an old `out`, which [`check_export_target`] allowed),
/// so an interrupted write leaves nothing half written.
pub fn write_dir(
    out: &Path,
    fill: impl FnOnce(&Path) -> Result<(), HfError>,
) -> Result<(), HfError> {
    let name = out
        .file_name()
        .ok_or_else(|| HfError::new(out, "not a directory name"))?
        .to_string_lossy()
        .into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(at(&parent))?;
    let tmp = parent.join(format!(".{name}.tmp"));
    remove(&tmp)?;
    std::fs::create_dir_all(&tmp).map_err(at(&tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    ember_data::files::sync_dir_contents(&tmp).map_err(at(&tmp))?;
    let old = parent.join(format!(".{name}.old"));
    remove(&old)?;
    if std::fs::symlink_metadata(out).is_ok() {
        std::fs::rename(out, &old).map_err(at(out))?;
    }
    std::fs::rename(&tmp, out).map_err(at(out))?;
    ember_data::files::sync_parent(out);
    remove(&old)
}
