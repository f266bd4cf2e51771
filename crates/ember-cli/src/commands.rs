//! The subcommands, generic over the backend.

use std::io::Write;
use std::marker::PhantomData;
use std::path::Path;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_hf::WeightDType;
use ember_hf::safetensors_io::{NamedTensor, write_safetensors};
use ember_infer::{Generator, HostWeights, Sampler, SamplingConfig};
use ember_nn::ForwardOptions;
use ember_nn::FusedBackend;
use ember_train::{TrainConfig, TrainOptions};

use crate::error::CliError;
use crate::model_dir::{ModelDir, parse_ids};
use crate::{
    DTypeArg, DecoderArg, ExportArgs, GenerateArgs, InfoArgs, LogitsArgs, PerplexityArgs, TrainArgs,
};

/// The backend-specific commands.
pub trait Runner {
    fn train(&self, args: TrainArgs) -> Result<(), CliError>;
    fn generate(&self, args: GenerateArgs) -> Result<(), CliError>;
    fn logits(&self, args: LogitsArgs) -> Result<(), CliError>;
    fn perplexity(&self, args: PerplexityArgs) -> Result<(), CliError>;
    fn export(&self, args: ExportArgs) -> Result<(), CliError>;
}

/// A [`Runner`] on backend `B`.
pub struct On<B: Backend> {
    device: B::Device,
    /// A CPU backend: batch-1 decoding runs on the host decoder by default.
    cpu: bool,
    _backend: PhantomData<B>,
}

impl<B: Backend> On<B> {
    pub fn new(device: B::Device, cpu: bool) -> Self {
        Self {
            device,
            cpu,
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
            force: args.force,
            verbose: !args.quiet,
            cpu_backend: self.cpu,
        };
        let summary = ember_train::train::<Autodiff<B>>(config, &options, &self.device)?;
        let speed = if summary.median_step_ms > 0.0 {
            format!(
                "median {:.1} ms/step ({:.0} tokens/s)",
                summary.median_step_ms,
                summary.tokens_per_step as f64 / (summary.median_step_ms / 1e3)
            )
        } else {
            "no steps run".to_string()
        };
        println!(
            "done: step {} | train loss {} | val loss {} | {speed}",
            summary.step,
            summary
                .last_train_loss
                .map_or("-".into(), |l| format!("{l:.4}")),
            summary
                .last_val_loss
                .map_or("-".into(), |l| format!("{l:.4}")),
        );
        println!("checkpoint: {}", summary.checkpoint.display());
        Ok(())
    }

    fn generate(&self, args: GenerateArgs) -> Result<(), CliError> {
        let dir = ModelDir::open(&args.model)?;
        let defaults = dir.sample_defaults();
        let (prompt_text, prompt_ids) = match (&args.ids, &args.prompt) {
            (Some(ids), _) => (None, parse_ids(ids)?),
            (None, Some(text)) => (Some(text.clone()), dir.encode(text, "--prompt")?),
            (None, None) => {
                let text = defaults.prompt.clone().ok_or_else(|| {
                    CliError::Usage(
                        "--prompt or --ids: this model has no default prompt; give one".into(),
                    )
                })?;
                (Some(text.clone()), dir.encode(&text, "--prompt")?)
            }
        };
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
        let model = dir.load::<B>(&self.device)?;
        let mut sampler = Sampler::new(SamplingConfig {
            temperature,
            top_k: Some(args.top_k.unwrap_or(defaults.top_k)),
            top_p: Some(top_p),
            seed: args.seed,
        });
        let mut generator = Generator::new(&model, &self.device, !args.no_cache)
            .with_stop_tokens(&dir.stop_tokens());
        let host = match args.decoder {
            DecoderArg::Burn => None,
            DecoderArg::Auto if !self.cpu || args.no_cache => None,
            DecoderArg::Auto | DecoderArg::Host => Some(HostWeights::F32),
            DecoderArg::HostInt8 => Some(HostWeights::Int8),
        };
        if let Some(weights) = host {
            generator = match generator.with_host_decoder(weights) {
                Ok(g) => g,
                Err(e) if args.decoder != DecoderArg::Auto => {
                    return Err(CliError::Usage(format!("--decoder: {e}")));
                }
                // `auto` keeps the burn path for models the host decoder lacks.
                Err(_) => Generator::new(&model, &self.device, !args.no_cache)
                    .with_stop_tokens(&dir.stop_tokens()),
            };
        }
        if args.no_cache && matches!(args.decoder, DecoderArg::Host | DecoderArg::HostInt8) {
            return Err(CliError::Usage(
                "--decoder host needs the KV cache; drop --no-cache".into(),
            ));
        }
        let max_new_tokens = args.max_new_tokens.unwrap_or(defaults.max_new_tokens);
        let mut stdout = std::io::stdout().lock();
        let decoder = if generator.uses_host_decoder() {
            match host {
                Some(HostWeights::Int8) => "host-int8",
                _ => "host",
            }
        } else {
            "burn"
        };
        let mut timer = DecodeTimer::start(prompt_ids.len(), decoder);
        if args.print_ids {
            let new = generator
                .generate(&prompt_ids, max_new_tokens, &mut sampler, |_| timer.token())
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let text: Vec<String> = new.iter().map(u32::to_string).collect();
            let _ = writeln!(stdout, "{}", text.join(","));
            if args.stats {
                eprintln!("{}", timer.report());
            }
            return Ok(());
        }
        let prompt_decoded = dir.decode(&prompt_ids).unwrap_or_default();
        let prompt_shown = prompt_text.unwrap_or_else(|| prompt_decoded.clone());
        let _ = write!(stdout, "{prompt_shown}");
        let _ = stdout.flush();
        // Decode prompt and continuation together (tokenizers such as SentencePiece's
        // drop a leading space when a piece is decoded alone) and print what is new, once
        // multi-byte pieces are complete.
        let mut ids = prompt_ids.clone();
        let mut printed = prompt_decoded.len();
        generator
            .generate(&prompt_ids, max_new_tokens, &mut sampler, |id| {
                timer.token();
                ids.push(id);
                match dir.decode(&ids) {
                    Some(text)
                        if !text.ends_with('\u{fffd}')
                            && text.len() >= printed
                            && text.is_char_boundary(printed) =>
                    {
                        let _ = write!(stdout, "{}", &text[printed..]);
                        let _ = stdout.flush();
                        printed = text.len();
                    }
                    _ => {}
                }
            })
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let _ = writeln!(stdout);
        if args.stats {
            eprintln!("{}", timer.report());
        }
        Ok(())
    }

    fn logits(&self, args: LogitsArgs) -> Result<(), CliError> {
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
        let model = dir.load::<B>(&self.device)?;
        let input: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
        let input =
            Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, ids.len()]), &self.device);
        let values: Vec<f32> = model
            .forward(input, ForwardOptions::default())
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

    fn perplexity(&self, args: PerplexityArgs) -> Result<(), CliError> {
        let dir = ModelDir::open(&args.model)?;
        // The same reader as `ember train --data`: regular text files, directories of them,
        // or `.jsonl`; the same errors and exit codes.
        let text = ember_data::Corpus::read(std::slice::from_ref(&args.data))
            .map_err(|e| CliError::from_data("--data", e))?
            .joined();
        let ids = dir.encode(&text, "--data")?;
        let max = dir.config().max_seq_len;
        let context = args.context.unwrap_or(max);
        if context < 2 || context > max {
            return Err(CliError::Usage(format!(
                "--context: must be between 2 and the model's context of {max}, got {context}"
            )));
        }
        let stride = args.stride.unwrap_or(context.div_ceil(2));
        if stride == 0 || stride > context {
            return Err(CliError::Usage(format!(
                "--stride: must be between 1 and the window of {context} tokens, got {stride}"
            )));
        }
        let model = dir.load::<B>(&self.device)?;
        let result = ember_infer::perplexity(&model, &ids, context, stride, &self.device)
            .map_err(|e| CliError::Usage(format!("--data {}: {e}", args.data.display())))?;
        println!("tokens: {}", result.tokens);
        println!("mean nll: {:.6}", result.mean_nll);
        println!("perplexity: {:.6}", result.perplexity);
        Ok(())
    }

    fn export(&self, args: ExportArgs) -> Result<(), CliError> {
        let same = |a: &Path, b: &Path| {
            matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
        };
        if same(&args.model, &args.out) {
            return Err(CliError::Usage(format!(
                "--out {}: is the --model directory; export to another directory",
                args.out.display()
            )));
        }
        ember_hf::check_export_target(&args.out, args.force)
            .map_err(|e| CliError::Usage(format!("--out {e}")))?;
        let dir = ModelDir::open(&args.model)?;
        ember_hf::export_arch(dir.config())
            .map_err(|e| CliError::Runtime(format!("--model {}: {e}", args.model.display())))?;
        let model = dir.load::<B>(&self.device)?;
        let dtype = match args.dtype {
            DTypeArg::F32 => WeightDType::F32,
            DTypeArg::F16 => WeightDType::F16,
            DTypeArg::Bf16 => WeightDType::Bf16,
        };
        let arch = ember_hf::export(
            &model,
            dir.tokenizer(),
            &dir.generation_config(),
            &args.out,
            dtype,
        )?;
        println!(
            "exported {} ({}) to {}",
            arch.model_type(),
            arch.class_name(),
            args.out.display()
        );
        Ok(())
    }
}

/// Time to the first token (prompt processing plus one token) and the rate after it.
struct DecodeTimer {
    start: std::time::Instant,
    first: Option<std::time::Instant>,
    last: std::time::Instant,
    tokens: usize,
    prompt: usize,
    decoder: &'static str,
}

impl DecodeTimer {
    fn start(prompt: usize, decoder: &'static str) -> Self {
        let now = std::time::Instant::now();
        Self {
            start: now,
            first: None,
            last: now,
            tokens: 0,
            prompt,
            decoder,
        }
    }

    fn token(&mut self) {
        let now = std::time::Instant::now();
        self.first.get_or_insert(now);
        self.last = now;
        self.tokens += 1;
    }

    fn report(&self) -> String {
        let first = self.first.unwrap_or(self.last);
        let ttft = (first - self.start).as_secs_f64();
        let rest = (self.last - first).as_secs_f64();
        let rate = if self.tokens > 1 && rest > 0.0 {
            format!("{:.1} tokens/s", (self.tokens - 1) as f64 / rest)
        } else {
            "-".into()
        };
        // The process's peak resident memory (Linux).
        let peak = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or("-".into(), |kb| format!("{:.1} MB", kb / 1024.0));
        format!(
            "decoder {} | prompt {} tokens, first token after {:.1} ms ({:.0} prompt tokens/s) | {} tokens, {rate} after the first | peak RSS {peak}",
            self.decoder,
            self.prompt,
            ttft * 1e3,
            self.prompt as f64 / ttft.max(1e-9),
            self.tokens,
        )
    }
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
    std::fs::rename(&tmp, path).map_err(|e| fail(e.to_string()))
}

/// `ember info`: reads only the model's metadata.
pub fn info(args: InfoArgs) -> Result<(), CliError> {
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
            println!("step: {}", ckpt.state.step);
            println!(
                "last val loss: {}",
                ckpt.state
                    .last_val_loss
                    .map_or("-".into(), |l| format!("{l:.4}"))
            );
            println!("tokenizer: {tokenizer}");
            println!("\n{}", ckpt.config.to_toml());
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
