//! `ember logits`: the logits of one token sequence, written to a safetensors file.

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use clap::Args;
use ember_hf::WeightDType;
use ember_hf::safetensors_io::{NamedTensor, write_safetensors};
use ember_nn::{ForwardOptions, FusedBackend};

use crate::commands::On;
use crate::error::CliError;
use crate::ids::parse_ids;
use ember_model::ModelDir;

#[derive(Args)]
pub struct LogitsArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Token ids, e.g. `1,2,3`.
    #[arg(long, required_unless_present = "prompt")]
    pub ids: Option<String>,
    /// Text to encode instead of ids.
    #[arg(long, conflicts_with = "ids")]
    pub prompt: Option<String>,
    /// Output file: one f32 tensor `logits` of shape `[T, vocab]`.
    #[arg(long)]
    pub out: PathBuf,
    /// A `peft` adapter directory (LoRA, rsLoRA, DoRA, IA3, prefix or prompt tuning) to
    /// apply; the rows are the given tokens' only.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

/// `ember logits` on backend `B`.
pub fn run<B: FusedBackend>(on: &On<B>, args: LogitsArgs) -> Result<(), CliError> {
    let dir = ModelDir::open(&args.model)?;
    let ids = match (&args.ids, &args.prompt) {
        (Some(ids), _) => parse_ids(ids)?,
        (None, Some(text)) => dir.encode(text, "--prompt")?,
        (None, None) => unreachable!("clap requires --ids or --prompt"),
    };
    let config = dir.config();
    if ids.len() > config.max_seq_len {
        return Err(CliError::Usage(format!(
            "--ids: {} tokens exceed the model's context of {}",
            ids.len(),
            config.max_seq_len
        )));
    }
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= config.vocab_size) {
        return Err(CliError::Usage(format!(
            "--ids: token id {id} is outside the model's vocabulary of {}",
            config.vocab_size
        )));
    }
    let vocab = config.vocab_size;
    let model = dir.load::<B>(&on.device)?;
    let adapted = crate::adapter::apply(&dir, model, args.adapter.as_deref(), &on.device)?;
    if let Some(prompt) = &adapted.prompt
        && ids.len() + prompt.n_virtual() > config.max_seq_len
    {
        return Err(CliError::Usage(format!(
            "--ids: {} tokens and the adapter's {} virtual tokens exceed the model's context of {}",
            ids.len(),
            prompt.n_virtual(),
            config.max_seq_len
        )));
    }
    let input: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, ids.len()]), &on.device);
    let mut hooks = adapted.bottleneck.as_ref().map(|b| b.hooks());
    let logits = match &adapted.prompt {
        Some(prompt) => prompt.forward(&adapted.model, input),
        None => adapted.model.forward(
            input,
            ForwardOptions {
                hooks: hooks
                    .as_mut()
                    .map(|h| h as &mut dyn ember_nn::ForwardHooks<B>),
                ..Default::default()
            },
        ),
    };
    let values: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 logits");
    let tensor = NamedTensor {
        name: "logits".into(),
        shape: vec![ids.len(), vocab],
        values,
    };
    write_atomically(&args.out, "--out", |tmp| {
        write_safetensors(tmp, std::slice::from_ref(&tensor), WeightDType::F32)
            .map_err(|e| e.to_string())
    })?;
    eprintln!(
        "wrote logits [{}, {vocab}] to {}",
        ids.len(),
        args.out.display()
    );
    Ok(())
}

/// Writes `path` through a temporary sibling and a rename, so it is never half written.
fn write_atomically(
    path: &Path,
    flag: &str,
    write: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), CliError> {
    let name = path
        .file_name()
        .ok_or_else(|| CliError::Usage(format!("{flag} {}: not a file name", path.display())))?;
    let fail = |e: String| CliError::Runtime(format!("{flag} {}: {e}", path.display()));
    if path.exists() && !path.is_file() {
        return Err(fail("exists and is not a regular file".into()));
    }
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    write(&tmp).map_err(fail)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| fail(e.to_string()))?;
    ember_data::files::sync_parent(path);
    Ok(())
}
