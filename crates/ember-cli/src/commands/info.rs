//! `ember info`: a model's configuration and size, from its metadata alone.

use std::path::PathBuf;

use clap::Args;

use crate::error::CliError;
use ember_model::ModelDir;

#[derive(Args)]
pub struct InfoArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
}

/// `ember info`: reads only the model's metadata.
pub fn run(args: InfoArgs) -> Result<(), CliError> {
    let dir = ModelDir::open(&args.model)?;
    let model = dir.config();
    let tokenizer = match dir.tokenizer() {
        Some(t @ ember_data::Tokenizer::Char(_)) => format!("{} entries (char)", t.vocab_size()),
        Some(t) => format!("{} entries (tokenizer.json)", t.vocab_size()),
        None => "none".into(),
    };
    match &dir {
        ModelDir::Ember(ckpt) => {
            println!("checkpoint: {}", ckpt.dir.display());
            println!("parameters: {}", model.num_params());
            println!("step: {}", ckpt.progress.step);
            println!(
                "last val loss: {}",
                ckpt.progress
                    .last_val_loss
                    .map_or("-".into(), |l| format!("{l:.4}"))
            );
            println!("tokenizer: {tokenizer}");
            println!("\n{}", ckpt.config_toml.trim_end());
        }
        ModelDir::Hf(hf) => {
            println!("hugging face model: {}", hf.dir.display());
            println!(
                "architecture: {} ({})",
                hf.arch().model_type(),
                hf.arch().class_name()
            );
            println!("parameters: {}", model.num_params());
            println!(
                "weights: {} ({})",
                hf.weights.source.display(),
                hf.weights.dtype().map_or("-", |d| d.torch_name())
            );
            println!("tokenizer: {tokenizer}");
            println!("eos token ids: {:?}", hf.generation.eos_token_ids);
            println!("\n[model]\n{}", toml_model(model));
        }
        ModelDir::Quantized(q) => {
            println!("quantized model: {}", q.dir.display());
            println!("weights: {} (host decoder)", q.weights);
            println!("parameters: {}", model.num_params());
            println!("tokenizer: {tokenizer}");
            println!("eos token ids: {:?}", q.generation.eos_token_ids);
            println!("\n[model]\n{}", toml_model(model));
        }
    }
    Ok(())
}

fn toml_model(model: &ember_nn::TransformerConfig) -> String {
    let mut table = toml::Table::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(model) {
        table = t;
    }
    toml::to_string(&table).unwrap_or_default()
}
