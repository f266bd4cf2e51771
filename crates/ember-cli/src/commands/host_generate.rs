//! The generation modes that run on the host decoder alone: beam search, speculative
//! decoding, and models `ember quantize` wrote (which have no burn form).

use std::io::Write;
use std::path::Path;

use ember_infer::{HostDecoder, HostWeights, Sampler, SamplingConfig};
use ember_model::{ModelDir, QuantizedDir, StreamDecoder};
use ember_nn::{FusedBackend, Transformer};

use crate::commands::On;
use crate::commands::generate::{DecodeTimer, DecoderArg, EarlyStoppingArg, GenerateArgs};
use crate::error::CliError;

/// The weights `--decoder` asks of the host decoder (`auto` and `host`: f32).
fn weights(args: &GenerateArgs) -> Result<HostWeights, CliError> {
    if args.no_cache || args.decoder == DecoderArg::Burn {
        return Err(CliError::Usage(
            "--decoder: beam search, speculative decoding and quantized models run the host decoder over its KV cache; drop --no-cache / --decoder burn".into(),
        ));
    }
    Ok(match args.decoder {
        DecoderArg::HostInt8 => HostWeights::Int8,
        DecoderArg::HostInt4 => HostWeights::Int4,
        _ => HostWeights::F32,
    })
}

/// The host decoder of a loaded model, in the weights `--decoder` asks for.
pub fn host_of<B: FusedBackend>(
    model: &Transformer<B>,
    args: &GenerateArgs,
) -> Result<HostDecoder, CliError> {
    HostDecoder::new(model, weights(args)?)
        .map_err(|e| CliError::Usage(format!("--model: this mode runs the host decoder: {e}")))
}

/// The host decoder of the model directory at `path` (`flag` names it in errors): a
/// quantized directory as stored, any other through its burn model.
fn host_at<B: FusedBackend>(
    on: &On<B>,
    path: &Path,
    args: &GenerateArgs,
    flag: &str,
) -> Result<HostDecoder, CliError> {
    let named = |e: String| e.replacen("--model", flag, 1);
    let dir = ModelDir::open(path).map_err(|e| match e {
        ember_model::ModelError::BadInput(m) => CliError::Usage(named(m)),
        other => CliError::Runtime(format!("{flag}: {}", named(other.to_string()))),
    })?;
    if let ModelDir::Quantized(q) = &dir {
        weights(args)?;
        return HostDecoder::load(&q.weights_path())
            .map_err(|e| CliError::Runtime(format!("{flag}: {e}")));
    }
    let model = dir.load::<B>(&on.device)?;
    HostDecoder::new(&model, weights(args)?)
        .map_err(|e| CliError::Usage(format!("{flag}: this mode runs the host decoder: {e}")))
}

/// `ember generate` on a quantized model: sampling, beam search or speculative decoding,
/// all on its stored weights.
pub fn quantized<B: FusedBackend>(
    on: &On<B>,
    dir: &ModelDir,
    quantized: &QuantizedDir,
    args: &GenerateArgs,
    prompt_ids: &[u32],
    prompt_text: Option<String>,
    sampling: SamplingConfig,
) -> Result<(), CliError> {
    if args.adapter.is_some() {
        return Err(CliError::Usage(format!(
            "--adapter: {} holds quantized weights; apply the adapter when quantizing (`ember quantize --adapter`)",
            quantized.dir.display()
        )));
    }
    if matches!(args.decoder, DecoderArg::HostInt8 | DecoderArg::HostInt4) {
        return Err(CliError::Usage(format!(
            "--decoder: {} is already quantized ({}); it runs as stored (drop --decoder)",
            quantized.dir.display(),
            quantized.weights
        )));
    }
    weights(args)?;
    let host = HostDecoder::load(&quantized.weights_path())
        .map_err(|e| CliError::Runtime(format!("--model: {e}")))?;
    if let Some(&id) = prompt_ids
        .iter()
        .find(|&&id| id as usize >= host.config().vocab_size)
    {
        return Err(CliError::Usage(format!(
            "--ids: token id {id} is outside the vocabulary of {}",
            host.config().vocab_size
        )));
    }
    if args.num_beams > 1 || args.num_return_sequences > 1 {
        return beams(dir, &host, args, prompt_ids, prompt_text);
    }
    if args.draft_model.is_some() {
        return speculative(on, dir, &host, args, prompt_ids, prompt_text, sampling);
    }
    let defaults = dir.sample_defaults();
    let max_new = args.max_new_tokens.unwrap_or(defaults.max_new_tokens);
    let mut sampler = Sampler::new(sampling);
    let mut stdout = std::io::stdout().lock();
    let mut timer = DecodeTimer::start(prompt_ids.len(), "host (quantized)");
    let (mut stream, prompt_decoded) =
        StreamDecoder::new(|ids: &[u32]| dir.decode(ids), prompt_ids);
    if !args.print_ids {
        let _ = write!(stdout, "{}", prompt_text.unwrap_or(prompt_decoded));
        let _ = stdout.flush();
    }
    let new = ember_infer::decode_loop(
        &host,
        prompt_ids,
        max_new,
        &mut sampler,
        &dir.stop_tokens(),
        |id| {
            timer.token();
            if !args.print_ids
                && let Some(text) = stream.push(id)
            {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
        },
    );
    if args.print_ids {
        let ids: Vec<String> = new.iter().map(u32::to_string).collect();
        let _ = writeln!(stdout, "{}", ids.join(","));
    } else {
        let _ = writeln!(stdout, "{}", stream.finish());
    }
    if args.stats {
        eprintln!("{}", timer.report());
    }
    Ok(())
}

/// `--num-beams N`: beam search on the host decoder, each returned hypothesis on its
/// own line, best first.
pub fn beams(
    dir: &ModelDir,
    host: &HostDecoder,
    args: &GenerateArgs,
    prompt_ids: &[u32],
    prompt_text: Option<String>,
) -> Result<(), CliError> {
    if args.num_beams == 0 {
        return Err(CliError::Usage("--num-beams: must be at least 1".into()));
    }
    if args.num_return_sequences == 0 || args.num_return_sequences > args.num_beams {
        return Err(CliError::Usage(format!(
            "--num-return-sequences: must be between 1 and --num-beams ({}), got {}",
            args.num_beams, args.num_return_sequences
        )));
    }
    if !args.length_penalty.is_finite() {
        return Err(CliError::Usage(
            "--length-penalty: must be a finite number".into(),
        ));
    }
    let defaults = dir.sample_defaults();
    let config = ember_infer::BeamSearchConfig {
        num_beams: args.num_beams,
        length_penalty: args.length_penalty,
        early_stopping: match args.early_stopping {
            EarlyStoppingArg::True => ember_infer::EarlyStopping::True,
            EarlyStoppingArg::False => ember_infer::EarlyStopping::False,
            EarlyStoppingArg::Never => ember_infer::EarlyStopping::Never,
        },
        max_new_tokens: args.max_new_tokens.unwrap_or(defaults.max_new_tokens),
        eos_token_ids: dir.stop_tokens(),
        num_return_sequences: args.num_return_sequences,
    };
    let hyps = ember_infer::beam_search(host, prompt_ids, &config)
        .map_err(|e| CliError::Usage(format!("--num-beams: {e}")))?;
    let mut stdout = std::io::stdout().lock();
    for h in hyps {
        if args.print_ids {
            let ids: Vec<String> = h.tokens.iter().map(u32::to_string).collect();
            let _ = writeln!(stdout, "{}", ids.join(","));
        } else {
            let shown = prompt_text
                .clone()
                .or_else(|| dir.decode(prompt_ids))
                .unwrap_or_default();
            let mut all = prompt_ids.to_vec();
            all.extend(&h.tokens);
            let full = dir.decode(&all).unwrap_or_default();
            let decoded_prompt = dir.decode(prompt_ids).unwrap_or_default();
            let continuation = full.get(decoded_prompt.len()..).unwrap_or(&full);
            let _ = writeln!(stdout, "{shown}{continuation}");
        }
        if args.stats {
            eprintln!(
                "beam score {:.6} ({})",
                h.score,
                if h.finished { "finished" } else { "length" }
            );
        }
    }
    Ok(())
}

/// `--draft-model DIR`: speculative decoding on the host decoder, printed as it comes.
pub fn speculative<B: FusedBackend>(
    on: &On<B>,
    dir: &ModelDir,
    target: &HostDecoder,
    args: &GenerateArgs,
    prompt_ids: &[u32],
    prompt_text: Option<String>,
    sampling: SamplingConfig,
) -> Result<(), CliError> {
    let draft_path = args.draft_model.as_deref().expect("checked by the caller");
    if args.num_speculative_tokens == 0 {
        return Err(CliError::Usage(
            "--num-speculative-tokens: must be at least 1".into(),
        ));
    }
    let draft = host_at(on, draft_path, args, "--draft-model")?;
    let defaults = dir.sample_defaults();
    let config = ember_infer::SpeculativeConfig {
        max_new_tokens: args.max_new_tokens.unwrap_or(defaults.max_new_tokens),
        num_speculative_tokens: args.num_speculative_tokens,
        stop_tokens: dir.stop_tokens(),
    };
    let mut sampler = Sampler::new(sampling);
    let mut stdout = std::io::stdout().lock();
    let mut timer = DecodeTimer::start(prompt_ids.len(), "host, speculative");
    let (mut stream, prompt_decoded) =
        StreamDecoder::new(|ids: &[u32]| dir.decode(ids), prompt_ids);
    if !args.print_ids {
        let _ = write!(stdout, "{}", prompt_text.unwrap_or(prompt_decoded));
        let _ = stdout.flush();
    }
    let (new, stats) = ember_infer::speculative_generate(
        target,
        &draft,
        prompt_ids,
        &config,
        &mut sampler,
        |id| {
            timer.token();
            if !args.print_ids
                && let Some(text) = stream.push(id)
            {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
        },
    )
    .map_err(|e| CliError::Usage(format!("--draft-model: {e}")))?;
    if args.print_ids {
        let ids: Vec<String> = new.iter().map(u32::to_string).collect();
        let _ = writeln!(stdout, "{}", ids.join(","));
    } else {
        let _ = writeln!(stdout, "{}", stream.finish());
    }
    if args.stats {
        eprintln!(
            "{} | drafted {} accepted {} (acceptance {:.1}%) in {} passes of the model",
            timer.report(),
            stats.drafted,
            stats.accepted,
            100.0 * stats.acceptance_rate(),
            stats.target_passes
        );
    }
    Ok(())
}
