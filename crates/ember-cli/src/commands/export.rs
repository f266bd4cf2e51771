//! `ember export`: a model written as a Hugging Face directory.

use std::path::{Path, PathBuf};

use clap::Args;
use ember_hf::WeightDType;
use ember_nn::FusedBackend;

use crate::commands::On;
use crate::error::CliError;
use ember_model::ModelDir;

#[derive(Args)]
pub struct ExportArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Output directory: new, empty, or an earlier export (replaced atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out even when it is a file or a directory of something else.
    #[arg(long)]
    pub force: bool,
    /// Element type of the written weights.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// A `peft` adapter directory (LoRA, rsLoRA, DoRA or IA3) merged into the weights
    /// before they are written.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

/// Checks that `out` may receive a Hugging Face directory written from the models at
/// `inputs` (not one of them, not a checkpoint unless `force`).
pub fn check_out(inputs: &[&Path], out: &Path, force: bool) -> Result<(), CliError> {
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if inputs.iter().any(|input| same(input, out)) {
        return Err(CliError::Usage(format!(
            "--out {}: is an input model's directory; write to another directory",
            out.display()
        )));
    }
    if out.file_name().is_none() {
        return Err(CliError::Usage(format!(
            "--out {}: not a directory name (give the export's own directory)",
            out.display()
        )));
    }
    if !force && ember_model::checkpoint::is_checkpoint(out) {
        return Err(CliError::Usage(format!(
            "--out {}: holds an Ember checkpoint; exporting would replace it. Choose another --out, or pass --force to replace it",
            out.display()
        )));
    }
    ember_hf::check_export_target(out, force).map_err(|e| CliError::Usage(format!("--out {e}")))
}

/// Writes `model` (with `dir`'s tokenizer and generation settings) to `out` as a Hugging
/// Face directory, atomically; prints what it wrote.
pub fn write_model<B: FusedBackend>(
    dir: &ModelDir,
    model: &ember_nn::Transformer<B>,
    out: &Path,
    dtype: DTypeArg,
) -> Result<(), CliError> {
    let dtype = match dtype {
        DTypeArg::F32 => WeightDType::F32,
        DTypeArg::F16 => WeightDType::F16,
        DTypeArg::Bf16 => WeightDType::Bf16,
    };
    let arch = ember_hf::export(model, dir.tokenizer(), &dir.generation_config(), out, dtype)?;
    println!(
        "exported {} ({}) to {}",
        arch.model_type(),
        arch.class_name(),
        out.display()
    );
    Ok(())
}

/// `ember export` on backend `B`.
pub fn run<B: FusedBackend>(on: &On<B>, args: ExportArgs) -> Result<(), CliError> {
    check_out(&[&args.model], &args.out, args.force)?;
    let dir = ModelDir::open(&args.model)?;
    ember_hf::export_arch(dir.config())
        .map_err(|e| CliError::Runtime(format!("--model {}: {e}", args.model.display())))?;
    let model = dir.load::<B>(&on.device)?;
    let adapted = crate::adapter::apply(&dir, model, args.adapter.as_deref(), &on.device)?
        .without_bottleneck("`ember merge`/`export`")?;
    if adapted.prompt.is_some() {
        return Err(CliError::Usage(
            "--adapter: prefix- and prompt-tuning adapters add inputs rather than change \
             weights, so they cannot be merged into an exported model"
                .into(),
        ));
    }
    write_model(&dir, &adapted.model, &args.out, args.dtype)
}
