//! `ember quantize`: a model's weights stored for the host decoder as int8 or 4-bit, in a
//! directory `ember generate` and `ember serve` load directly.

use std::path::{Path, PathBuf};

use clap::Args;
use ember_hf::HfError;
use ember_infer::{HostDecoder, HostWeights};
use ember_model::{HOST_DECODER_FILE, ModelDir};
use ember_nn::FusedBackend;
use serde_json::json;

use crate::commands::On;
use crate::error::CliError;

#[derive(Args)]
pub struct QuantizeArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Bits per weight: 8 (int8, one scale per 32 inputs) or 4 (groups of 32).
    #[arg(long)]
    pub bits: u32,
    /// Output directory: new, empty, or an earlier `ember quantize` output (replaced
    /// atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out whatever it holds.
    #[arg(long)]
    pub force: bool,
    /// A `peft` adapter directory or `ember finetune` run merged into the weights first.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

/// `ember quantize` on backend `B` (which loads the f32 weights).
pub fn run<B: FusedBackend>(on: &On<B>, args: QuantizeArgs) -> Result<(), CliError> {
    let weights = match args.bits {
        8 => HostWeights::Int8,
        4 => HostWeights::Int4,
        other => {
            return Err(CliError::Usage(format!("--bits: 8 or 4, got {other}")));
        }
    };
    check_out(&args.model, &args.out, args.force)?;
    let dir = ModelDir::open(&args.model)?;
    if let ModelDir::Quantized(q) = &dir {
        return Err(CliError::Usage(format!(
            "--model {}: is already quantized ({}); quantize the model it came from",
            args.model.display(),
            q.weights
        )));
    }
    let model = dir.load::<B>(&on.device)?;
    let adapted = crate::adapter::apply(&dir, model, args.adapter.as_deref(), &on.device)?
        .without_bottleneck("`ember quantize`")?;
    if adapted.prompt.is_some() {
        return Err(CliError::Usage(
            "--adapter: prefix- and prompt-tuning adapters add inputs rather than change weights; they cannot be quantized into a model".into(),
        ));
    }
    let full = HostDecoder::new(&adapted.model, HostWeights::F32).map_err(|e| {
        CliError::Usage(format!(
            "--model: quantized models run on the host decoder: {e}"
        ))
    })?;
    let host = HostDecoder::new(&adapted.model, weights)
        .map_err(|e| CliError::Usage(format!("--model: {e}")))?;
    drop(adapted);
    let counts = host.matrix_counts();
    let source = args.model.display().to_string();
    let hf_dir = match &dir {
        ModelDir::Hf(hf) => Some(hf.dir.clone()),
        _ => None,
    };
    ember_hf::write_dir(&args.out, |tmp| {
        let err = |e: String| HfError::new(tmp, e);
        host.save(&tmp.join(HOST_DECODER_FILE)).map_err(err)?;
        if let Some(tokenizer) = dir.tokenizer() {
            tokenizer.save(tmp).map_err(|e| err(e.to_string()))?;
        }
        let generation = serde_json::to_string_pretty(&dir.generation_config().to_json())
            .map_err(|e| err(e.to_string()))?;
        std::fs::write(tmp.join(ember_hf::GENERATION_FILE), generation)
            .map_err(|e| err(e.to_string()))?;
        // The chat template travels with the model.
        if let Some(hf) = &hf_dir {
            for name in ["tokenizer_config.json", "chat_template.jinja"] {
                let file = hf.join(name);
                if file.is_file() {
                    std::fs::copy(&file, tmp.join(name)).map_err(|e| err(e.to_string()))?;
                }
            }
        }
        let record = json!({
            "format": ember_infer::host::store::FORMAT,
            "bits": args.bits,
            "group_size": 32,
            "source": source,
            "matrices": { "int8": counts.int8, "int4": counts.int4, "f32": counts.f32 },
            "weight_bytes": host.weight_bytes(),
            "f32_weight_bytes": full.weight_bytes(),
        });
        let record = serde_json::to_string_pretty(&record).map_err(|e| err(e.to_string()))?;
        std::fs::write(tmp.join("quantization.json"), record).map_err(|e| err(e.to_string()))
    })
    .map_err(|e| CliError::Runtime(format!("--out {e}")))?;
    println!(
        "quantized {} matrices to {} bits ({:.1} MB of weights, {:.1} MB in f32) into {}",
        counts.int8 + counts.int4,
        args.bits,
        host.weight_bytes() as f64 / 1e6,
        full.weight_bytes() as f64 / 1e6,
        args.out.display()
    );
    Ok(())
}

/// `--out` must not be `--model`, and may replace only an earlier quantized output (or
/// an empty directory) unless `--force`.
fn check_out(model: &Path, out: &Path, force: bool) -> Result<(), CliError> {
    let same = matches!((model.canonicalize(), out.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if same {
        return Err(CliError::Usage(format!(
            "--out {}: is the --model directory; write to another directory",
            out.display()
        )));
    }
    if out.file_name().is_none() {
        return Err(CliError::Usage(format!(
            "--out {}: not a directory name",
            out.display()
        )));
    }
    let Ok(meta) = std::fs::symlink_metadata(out) else {
        return Ok(());
    };
    if force {
        return Ok(());
    }
    let empty_dir =
        meta.is_dir() && std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_none());
    if empty_dir || out.join(HOST_DECODER_FILE).is_file() {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "--out {}: exists and is not an earlier `ember quantize` output; choose another --out, or pass --force to replace it",
        out.display()
    )))
}
