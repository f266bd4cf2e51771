//! The subcommands, generic over the backend.

use std::io::Write;
use std::marker::PhantomData;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use ember_infer::{Generator, Sampler, SamplingConfig};
use ember_nn::FusedBackend;
use ember_train::{Checkpoint, TrainConfig, TrainOptions};

use crate::error::CliError;
use crate::{GenerateArgs, InfoArgs, TrainArgs};

/// The backend-specific commands.
pub trait Runner {
    fn train(&self, args: TrainArgs) -> Result<(), CliError>;
    fn generate(&self, args: GenerateArgs) -> Result<(), CliError>;
}

/// A [`Runner`] on backend `B`.
pub struct On<B: Backend> {
    device: B::Device,
    _backend: PhantomData<B>,
}

impl<B: Backend> On<B> {
    pub fn new(device: B::Device) -> Self {
        Self {
            device,
            _backend: PhantomData,
        }
    }
}

impl<B: FusedBackend> Runner for On<B> {
    fn train(&self, args: TrainArgs) -> Result<(), CliError> {
        let config = TrainConfig::resolve(
            args.preset.as_deref(),
            args.config.as_deref(),
            &args.overrides,
        )
        .map_err(|e| CliError::Usage(e.to_string()))?;
        let options = TrainOptions {
            out_dir: args.out.clone(),
            data: args.data.clone(),
            resume: args.resume.clone(),
            verbose: !args.quiet,
        };
        let summary = ember_train::train::<Autodiff<B>>(config, &options, &self.device)?;
        println!(
            "done: step {} | train loss {} | val loss {} | median {:.1} ms/step ({:.0} tokens/s)",
            summary.step,
            summary
                .last_train_loss
                .map_or("-".into(), |l| format!("{l:.4}")),
            summary
                .last_val_loss
                .map_or("-".into(), |l| format!("{l:.4}")),
            summary.median_step_ms,
            summary.tokens_per_step as f64 / (summary.median_step_ms / 1e3).max(1e-9),
        );
        println!("checkpoint: {}", summary.checkpoint.display());
        Ok(())
    }

    fn generate(&self, args: GenerateArgs) -> Result<(), CliError> {
        let ckpt = Checkpoint::open(&args.model)?;
        let defaults = &ckpt.config.sample;
        let prompt = args
            .prompt
            .clone()
            .unwrap_or_else(|| defaults.prompt.clone());
        let prompt_ids = ckpt
            .tokenizer
            .encode(&prompt)
            .map_err(|e| CliError::Usage(format!("--prompt: {e}")))?;
        if prompt_ids.is_empty() {
            return Err(CliError::Usage("--prompt: the prompt is empty".into()));
        }
        let temperature = args.temperature.unwrap_or(defaults.temperature);
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(CliError::Usage(format!(
                "--temperature: must be >= 0, got {temperature}"
            )));
        }
        let top_p = args.top_p.unwrap_or(defaults.top_p);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(CliError::Usage(format!(
                "--top-p: must be in (0, 1], got {top_p}"
            )));
        }
        let model = ckpt.load_model::<B>(&self.device)?;
        let mut sampler = Sampler::new(SamplingConfig {
            temperature,
            top_k: Some(args.top_k.unwrap_or(defaults.top_k)),
            top_p: Some(top_p),
            seed: args.seed,
        });
        let generator = Generator::new(&model, &self.device, !args.no_cache);
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, "{prompt}");
        let _ = stdout.flush();
        // Decode incrementally so multi-byte BPE pieces print once they are complete.
        let mut ids = Vec::new();
        let mut printed = 0;
        generator
            .generate(
                &prompt_ids,
                args.max_new_tokens.unwrap_or(defaults.max_new_tokens),
                &mut sampler,
                |id| {
                    ids.push(id);
                    if let Ok(text) = ckpt.tokenizer.decode(&ids)
                        && !text.ends_with('\u{fffd}')
                        && text.len() >= printed
                    {
                        let _ = write!(stdout, "{}", &text[printed..]);
                        let _ = stdout.flush();
                        printed = text.len();
                    }
                },
            )
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let _ = writeln!(stdout);
        Ok(())
    }
}

/// `ember info`: reads only the checkpoint's metadata.
pub fn info(args: InfoArgs) -> Result<(), CliError> {
    let ckpt = Checkpoint::open(&args.model)?;
    let model = &ckpt.config.model;
    println!("checkpoint: {}", ckpt.dir.display());
    println!("parameters: {}", model.num_params());
    println!("step: {}", ckpt.state.step);
    println!(
        "last val loss: {}",
        ckpt.state
            .last_val_loss
            .map_or("-".into(), |l| format!("{l:.4}"))
    );
    println!(
        "tokenizer: {} entries ({})",
        ckpt.tokenizer.vocab_size(),
        match ckpt.tokenizer {
            ember_data::Tokenizer::Char(_) => "char",
            ember_data::Tokenizer::Bpe(_) => "bpe",
        }
    );
    println!("\n{}", ckpt.config.to_toml());
    Ok(())
}
