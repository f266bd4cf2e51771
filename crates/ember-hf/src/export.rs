//! Writing an Ember model as a Hugging Face directory.

use std::collections::HashMap;
use std::path::Path;

use ember_data::Tokenizer;
use ember_data::tokenizer::TOKENIZER_FILE;
use ember_nn::{FusedBackend, Transformer, param_values};

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
    let mut values: HashMap<String, (Vec<usize>, Vec<f32>)> = param_values(model)
        .into_iter()
        .map(|(path, data)| {
            let shape = data.shape.to_vec();
            let values = data
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("parameters convert to f32");
            (path, (shape, values))
        })
        .collect();

    // Group entries by Hugging Face tensor (GPT-2's c_attn gathers three parameters).
    let mut tensors: Vec<NamedTensor> = Vec::new();
    for entry in tensor_map(arch, config) {
        let (shape, data) = values.remove(&entry.ember).ok_or_else(|| {
            HfError::new(
                out,
                format!("internal: the model has no parameter `{}`", entry.ember),
            )
        })?;
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
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(at(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(at(&tmp))?;
    let write_json = |file: &str, value: serde_json::Value| {
        let path = tmp.join(file);
        let text = serde_json::to_string_pretty(&value).expect("JSON values serialise");
        std::fs::write(&path, text + "\n").map_err(at(&path))
    };
    write_safetensors(&tmp.join(WEIGHTS_FILE), &tensors, dtype)?;
    drop(tensors);
    write_json(
        CONFIG_FILE,
        to_config_json(
            arch,
            config,
            generation.bos_token_id,
            &generation.eos_token_ids,
            dtype.torch_name(),
        ),
    )?;
    write_json(GENERATION_FILE, generation.to_json())?;
    if let Some(tokenizer) = tokenizer {
        let path = tmp.join(TOKENIZER_FILE);
        let json = tokenizer.to_hf_json().map_err(|e| HfError::new(&path, e))?;
        std::fs::write(&path, json).map_err(at(&path))?;
    }
    let old = parent.join(format!(".{name}.old"));
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(at(&old))?;
    }
    if out.exists() {
        std::fs::rename(out, &old).map_err(at(out))?;
    }
    std::fs::rename(&tmp, out).map_err(at(out))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(at(&old))?;
    }
    Ok(arch)
}
