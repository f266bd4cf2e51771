//! `ember generate`: text (or token ids) from an Ember checkpoint or a Hugging Face model.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use ember_hf::peft::PromptAdapter;
use ember_infer::{Generator, HostWeights, Sampler, SamplingConfig, VirtualTokens};
use ember_nn::FusedBackend;

use crate::commands::{On, host_generate};
use crate::error::CliError;
use crate::ids::parse_ids;
use ember_model::{ModelDir, StreamDecoder};

#[derive(Args)]
pub struct GenerateArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Text to continue; defaults to the checkpoint's `sample.prompt`.
    #[arg(long, conflicts_with = "ids")]
    pub prompt: Option<String>,
    /// Token ids to continue instead of text, e.g. `1,2,3`.
    #[arg(long)]
    pub ids: Option<String>,
    /// Print only the new token ids, comma-separated.
    #[arg(long)]
    pub print_ids: bool,
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// 0 = off.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// 1.0 = off.
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Recompute the whole context for every token instead of using the KV cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Who decodes: `auto` (the host decoder on CPU backends when it supports the model,
    /// else burn), `burn`, `host` (f32 weights, the same numbers as burn) or `host-int8`
    /// (int8 weights with block scales: faster, approximate) or `host-int4` (4-bit weights
    /// in groups of 32: fastest, more approximate).
    #[arg(long, value_enum, default_value_t = DecoderArg::Auto)]
    pub decoder: DecoderArg,
    /// Print prefill and decoding speed to stderr.
    #[arg(long)]
    pub stats: bool,
    /// A `peft` adapter directory or an `ember finetune` run: LoRA, rsLoRA, DoRA and IA3
    /// are merged into the weights; prefix and prompt tuning put their virtual tokens
    /// before the prompt (burn decoder).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Beam search with this many beams (transformers' `num_beams`); 1 = no beam search.
    /// Deterministic: sampling flags do not apply. Runs the host decoder.
    #[arg(long, default_value_t = 1)]
    pub num_beams: usize,
    /// Beam search: hypotheses are ranked by summed log-probability / new_tokens^this.
    #[arg(long, default_value_t = 1.0)]
    pub length_penalty: f64,
    /// Beam search: when to stop before --max-new-tokens (as transformers' `early_stopping`).
    #[arg(long, value_enum, default_value_t = EarlyStoppingArg::False)]
    pub early_stopping: EarlyStoppingArg,
    /// Beam search: how many of the best hypotheses to print, best first.
    #[arg(long, default_value_t = 1)]
    pub num_return_sequences: usize,
    /// Speculative decoding: a smaller model with the same vocabulary drafts tokens that
    /// the model checks in one pass (output follows the model's distribution exactly;
    /// greedy output is identical). Runs the host decoder.
    #[arg(long)]
    pub draft_model: Option<PathBuf>,
    /// Speculative decoding: tokens the draft proposes per pass of the model.
    #[arg(long, default_value_t = 4)]
    pub num_speculative_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EarlyStoppingArg {
    True,
    False,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecoderArg {
    Auto,
    Burn,
    Host,
    HostInt8,
    HostInt4,
}

/// `ember generate` on backend `B`.
pub fn run<B: FusedBackend>(on: &On<B>, args: GenerateArgs) -> Result<(), CliError> {
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
    let sampling = SamplingConfig {
        temperature,
        top_k: Some(args.top_k.unwrap_or(defaults.top_k)),
        top_p: Some(top_p),
        min_p: None,
        seed: args.seed,
    };
    if let ModelDir::Quantized(quantized) = &dir {
        return host_generate::quantized(
            on,
            &dir,
            quantized,
            &args,
            &prompt_ids,
            prompt_text,
            sampling,
        );
    }
    let model = dir.load::<B>(&on.device)?;
    let adapted = crate::adapter::apply(&dir, model, args.adapter.as_deref(), &on.device)?
        .without_bottleneck("`ember generate`")?;
    // Prefix and prompt tuning: their virtual tokens go before the prompt.
    let virtual_tokens = adapted.prompt.as_ref().map(|prompt| match prompt {
        PromptAdapter::Prefix(prefix) => VirtualTokens::Prefix(prefix.prefixes(1)),
        PromptAdapter::Prompt(soft) => VirtualTokens::Prompt(soft.embeddings.val()),
    });
    if virtual_tokens.is_some()
        && matches!(
            args.decoder,
            DecoderArg::Host | DecoderArg::HostInt8 | DecoderArg::HostInt4
        )
    {
        return Err(CliError::Usage(
            "--decoder: the host decoder takes no prefix- or prompt-tuning adapter; use --decoder burn (or auto)".into(),
        ));
    }
    let model = adapted.model;
    if args.num_beams == 0 {
        return Err(CliError::Usage("--num-beams: must be at least 1".into()));
    }
    if args.num_beams > 1 || args.num_return_sequences > 1 {
        if virtual_tokens.is_some() {
            return Err(CliError::Usage(
                "--num-beams: beam search does not take prefix- or prompt-tuning adapters yet"
                    .into(),
            ));
        }
        let host = host_generate::host_of(&model, &args)?;
        return host_generate::beams(&dir, &host, &args, &prompt_ids, prompt_text);
    }
    if args.draft_model.is_some() {
        if virtual_tokens.is_some() {
            return Err(CliError::Usage(
                "--draft-model: speculative decoding does not take prefix- or prompt-tuning adapters yet".into(),
            ));
        }
        let target = host_generate::host_of(&model, &args)?;
        return host_generate::speculative(
            on,
            &dir,
            &target,
            &args,
            &prompt_ids,
            prompt_text,
            sampling,
        );
    }
    let mut sampler = Sampler::new(sampling);
    let mut generator =
        Generator::new(&model, &on.device, !args.no_cache).with_stop_tokens(&dir.stop_tokens());
    let host = match args.decoder {
        _ if virtual_tokens.is_some() => None,
        DecoderArg::Burn => None,
        DecoderArg::Auto if !on.cpu || args.no_cache => None,
        DecoderArg::Auto | DecoderArg::Host => Some(HostWeights::F32),
        DecoderArg::HostInt8 => Some(HostWeights::Int8),
        DecoderArg::HostInt4 => Some(HostWeights::Int4),
    };
    if let Some(weights) = host {
        generator = match generator.with_host_decoder(weights) {
            Ok(g) => g,
            Err(e) if args.decoder != DecoderArg::Auto => {
                return Err(CliError::Usage(format!("--decoder: {e}")));
            }
            // `auto` keeps the burn path for models the host decoder lacks.
            Err(_) => Generator::new(&model, &on.device, !args.no_cache)
                .with_stop_tokens(&dir.stop_tokens()),
        };
    }
    if let Some(tokens) = &virtual_tokens {
        generator = generator.with_virtual_tokens(tokens);
    }
    if args.no_cache
        && matches!(
            args.decoder,
            DecoderArg::Host | DecoderArg::HostInt8 | DecoderArg::HostInt4
        )
    {
        return Err(CliError::Usage(
            "--decoder host needs the KV cache; drop --no-cache".into(),
        ));
    }
    let max_new_tokens = args.max_new_tokens.unwrap_or(defaults.max_new_tokens);
    let mut stdout = std::io::stdout().lock();
    let decoder = if generator.uses_host_decoder() {
        match host {
            Some(HostWeights::Int8) => "host-int8",
            Some(HostWeights::Int4) => "host-int4",
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
    // Prompt and continuation are decoded together and printed as they become final
    // (see `ember_model::detokenizer`).
    let (mut stream, prompt_decoded) =
        StreamDecoder::new(|ids: &[u32]| dir.decode(ids), &prompt_ids);
    let prompt_shown = prompt_text.unwrap_or(prompt_decoded);
    let _ = write!(stdout, "{prompt_shown}");
    let _ = stdout.flush();
    generator
        .generate(&prompt_ids, max_new_tokens, &mut sampler, |id| {
            timer.token();
            if let Some(text) = stream.push(id) {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
        })
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let _ = writeln!(stdout);
    if args.stats {
        eprintln!("{}", timer.report());
    }
    Ok(())
}

/// Time to the first token (prompt processing plus one token) and the rate after it.
pub(crate) struct DecodeTimer {
    start: std::time::Instant,
    first: Option<std::time::Instant>,
    last: std::time::Instant,
    tokens: usize,
    prompt: usize,
    decoder: &'static str,
}

impl DecodeTimer {
    pub(crate) fn start(prompt: usize, decoder: &'static str) -> Self {
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

    pub(crate) fn token(&mut self) {
        let now = std::time::Instant::now();
        self.first.get_or_insert(now);
        self.last = now;
        self.tokens += 1;
    }

    pub(crate) fn report(&self) -> String {
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
