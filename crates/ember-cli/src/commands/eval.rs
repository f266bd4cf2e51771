//! `ember eval`: generates completions of a `.jsonl` of prompts (through the serving
//! engine, greedy by default) or reads existing predictions, scores them against the
//! references (BLEU, chrF, ROUGE, exact match, perplexity) and writes a JSON report and
//! a markdown table.

use std::path::{Path, PathBuf};

use clap::Args;
use ember_eval::metrics::BleuTokenizer;
use ember_eval::report::{
    EvalConfig, EvalReport, MetricName, PerplexityReport, parse_metrics, score,
};
use ember_infer::SamplingConfig;
use ember_model::ModelDir;
use ember_nn::FusedBackend;

use crate::commands::On;
use crate::commands::eval_data::{Example, read_examples, read_predictions, usage};
use crate::commands::local_engine::LocalEngine;
use crate::commands::serve::WeightsArg;
use crate::error::CliError;

#[derive(Args)]
pub struct EvalArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory that generates
    /// the predictions (not needed with --predictions, except for perplexity).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A `peft` adapter directory or an `ember finetune` run, merged into the weights.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Examples: one JSON object per line with `prompt` and `reference` (a string) or
    /// `references` (a list of strings).
    #[arg(long)]
    pub data: PathBuf,
    /// Score these predictions instead of generating: one `{"prediction": …}` per line,
    /// in the order of --data.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Comma-separated: bleu, chrf, rouge, exact_match, perplexity (of the references
    /// given the prompts; needs --model).
    #[arg(long, default_value = "bleu,chrf,rouge,exact_match")]
    pub metrics: String,
    /// BLEU's tokenizer: 13a (sacrebleu's default), intl, char or none.
    #[arg(long, default_value = "13a")]
    pub tokenize: String,
    /// ROUGE with the Porter stemmer (rouge-score's `use_stemmer=True`).
    #[arg(long)]
    pub rouge_stemmer: bool,
    /// The JSON report; the markdown table goes beside it (`.md`) and to stdout.
    #[arg(long, default_value = "eval.json")]
    pub out: PathBuf,
    /// New tokens per prediction at most.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 = greedy (the default).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// 1.0 = off.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Generation ends before this text (repeatable); the model's end-of-sequence tokens
    /// always end it.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Prompts go through the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// Weights the decoder runs: f32 (default), int8 or int4.
    #[arg(long, value_enum)]
    pub weights: Option<WeightsArg>,
}

/// `ember eval` on backend `B`.
pub fn run<B: FusedBackend>(on: &On<B>, args: EvalArgs) -> Result<(), CliError> {
    let metrics = parse_metrics(&args.metrics).map_err(|e| usage(format!("--metrics: {e}")))?;
    let tokenizer: BleuTokenizer = args
        .tokenize
        .parse()
        .map_err(|e| usage(format!("--tokenize: {e}")))?;
    if args.out.extension().and_then(|e| e.to_str()) != Some("json") {
        return Err(usage(format!(
            "--out {}: the report's name must end in .json",
            args.out.display()
        )));
    }
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        return Err(usage(format!(
            "--temperature: must be >= 0, got {}",
            args.temperature
        )));
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        return Err(usage(format!(
            "--top-p: must be in (0, 1], got {}",
            args.top_p
        )));
    }
    if args.max_new_tokens == 0 {
        return Err(usage("--max-new-tokens: must be at least 1".into()));
    }
    let wants_perplexity = metrics.contains(&MetricName::Perplexity);
    if args.model.is_none() && (args.predictions.is_none() || wants_perplexity) {
        return Err(usage(if wants_perplexity {
            "--model: perplexity needs the model".into()
        } else {
            "--model or --predictions: give a model to generate with, or predictions to score"
                .into()
        }));
    }
    let examples = read_examples(&args.data)?;
    let references: Vec<Vec<String>> = examples.iter().map(|e| e.references.clone()).collect();
    let text_metrics = metrics.iter().any(|m| *m != MetricName::Perplexity);
    let predictions = match &args.predictions {
        Some(path) => read_predictions(path, examples.len())?,
        // Perplexity alone scores the references: nothing to generate.
        None if !text_metrics => vec![String::new(); examples.len()],
        None => {
            let model = args.model.as_deref().unwrap_or(Path::new("."));
            generate(on, model, &args, &examples)?
        }
    };
    let config = EvalConfig {
        metrics: metrics.clone(),
        bleu_tokenizer: tokenizer,
        rouge_stemmer: args.rouge_stemmer,
        ..EvalConfig::default()
    };
    let scored = if text_metrics {
        config
    } else {
        EvalConfig {
            metrics: Vec::new(),
            ..config
        }
    };
    let mut report = score(&predictions, &references, &scored)
        .map_err(|e| usage(format!("--data {}: {e}", args.data.display())))?;
    if wants_perplexity {
        let model = args.model.as_deref().unwrap_or(Path::new("."));
        report.perplexity = Some(perplexity(
            on,
            model,
            args.adapter.as_deref(),
            &args.data,
            &examples,
        )?);
    }
    write_report(&args.out, &report)
}

fn generate<B: FusedBackend>(
    on: &On<B>,
    model: &Path,
    args: &EvalArgs,
    examples: &[Example],
) -> Result<Vec<String>, CliError> {
    let local = LocalEngine::start(
        on,
        model,
        args.adapter.as_deref(),
        args.weights,
        "ember eval",
    )?;
    let prompts = examples
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let ids = if args.chat {
                let message = ember_data::sft::Message {
                    role: "user".into(),
                    content: e.prompt.clone(),
                };
                local.codec.encode_chat(&[message])
            } else {
                local.codec.encode_prompt(&e.prompt)
            };
            match ids {
                Ok(ids) if ids.is_empty() => Err(usage(format!(
                    "--data example {}: the prompt is empty",
                    i + 1
                ))),
                Ok(ids) => Ok(ids),
                Err(e) => Err(usage(format!("--data example {}: {e}", i + 1))),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_k: (args.top_k > 0).then_some(args.top_k),
        top_p: (args.top_p < 1.0).then_some(args.top_p),
        min_p: None,
        seed: args.seed,
    };
    let params = local.params(sampling, args.max_new_tokens, &args.stop);
    let started = std::time::Instant::now();
    let texts = local.complete(&prompts, &params, |_, _| {})?;
    eprintln!(
        "ember eval: generated {} predictions in {:.1}s",
        texts.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(texts)
}

fn perplexity<B: FusedBackend>(
    on: &On<B>,
    model: &Path,
    adapter: Option<&Path>,
    data: &Path,
    examples: &[Example],
) -> Result<PerplexityReport, CliError> {
    let dir = ModelDir::open(model)?;
    let tokenizer = dir.tokenizer().cloned().ok_or_else(|| {
        usage(format!(
            "--model {}: perplexity needs the model's tokenizer (tokenizer.json)",
            model.display()
        ))
    })?;
    let loaded = dir.load::<B>(&on.device)?;
    let adapted = crate::adapter::apply(&dir, loaded, adapter, &on.device)?
        .without_bottleneck("`ember eval --metrics perplexity`")?;
    if adapted.prompt.is_some() {
        return Err(usage(
            "--adapter: perplexity takes projection adapters (LoRA, DoRA, IA3); prefix- and prompt-tuning adapters are not applied here".into(),
        ));
    }
    let (mut nll, mut tokens) = (0.0, 0usize);
    for (i, e) in examples.iter().enumerate() {
        let at = |what: &str, err: ember_data::DataError| {
            usage(format!(
                "--data {} example {}: {what}: {err}",
                data.display(),
                i + 1
            ))
        };
        // The prompt with the tokenizer's markers (a Llama `<s>`), as generation encodes
        // it; the reference without them, continuing the prompt.
        let prompt = tokenizer
            .encode_with_special(&e.prompt)
            .map_err(|err| at("prompt", err))?;
        let reference = tokenizer
            .encode(&e.references[0])
            .map_err(|err| at("reference", err))?;
        let (sum, n) = ember_eval::perplexity::continuation_nll(
            &adapted.model,
            &prompt,
            &reference,
            &on.device,
        )
        .map_err(|m| usage(format!("--data example {}: {m}", i + 1)))?;
        nll += sum;
        tokens += n;
    }
    if tokens == 0 {
        return Err(usage(
            "--data: the references hold no tokens to score".into(),
        ));
    }
    let mean_nll = nll / tokens as f64;
    Ok(PerplexityReport {
        perplexity: mean_nll.exp(),
        mean_nll,
        tokens,
    })
}

fn write_report(out: &Path, report: &EvalReport) -> Result<(), CliError> {
    let json =
        serde_json::to_string_pretty(report).map_err(|e| CliError::Runtime(e.to_string()))?;
    let write = |path: &Path, bytes: &[u8]| {
        ember_data::files::write_atomic(path, bytes)
            .map_err(|e| CliError::Runtime(format!("--out {}: {e}", path.display())))
    };
    write(out, format!("{json}\n").as_bytes())?;
    let md_path = out.with_extension("md");
    let markdown = report.markdown();
    write(&md_path, markdown.as_bytes())?;
    print!("{markdown}");
    eprintln!(
        "ember eval: wrote {} and {}",
        out.display(),
        md_path.display()
    );
    Ok(())
}
