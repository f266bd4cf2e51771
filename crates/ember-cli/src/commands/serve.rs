//! `ember serve`: the OpenAI-compatible server on the continuous-batching engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use ember_infer::{HostDecoder, HostWeights, PagedKv};
use ember_model::ModelDir;
use ember_nn::FusedBackend;
use ember_serve::{
    AppState, Codec, EngineConfig, EngineHandle, Metrics, RequestLimits, SchedulerConfig,
    ServeOptions,
};

use crate::commands::On;
use crate::error::CliError;

#[derive(Args)]
pub struct ServeArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// A `peft` adapter directory or an `ember finetune` run, merged into the weights
    /// (LoRA, rsLoRA, DoRA, IA3, or a full fine-tune).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Address to listen on; only this machine by default.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The name clients send as `model` (default: the model directory's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on the API (`/v1/...`; `/health` and
    /// `/metrics` stay open, as in vLLM) (also read from
    /// the EMBER_API_KEY environment variable).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Weights of the decoder: `f32` (the model's numbers; the default), `int8`
    /// (block-scaled int8, faster) or `int4` (4-bit in groups of 32, smallest). A model
    /// `ember quantize` wrote runs as stored.
    #[arg(long, value_enum)]
    pub weights: Option<WeightsArg>,
    /// Memory for the paged KV cache, in MiB.
    #[arg(long, default_value_t = 256.0)]
    pub kv_cache_mb: f64,
    /// Positions per KV-cache block.
    #[arg(long, default_value_t = ember_infer::paged_kv::DEFAULT_BLOCK_SIZE)]
    pub block_size: usize,
    /// Sequences in the running batch at most.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Tokens per model pass at most (running sequences' next tokens, then prompt chunks).
    #[arg(long, default_value_t = 512)]
    pub max_num_batched_tokens: usize,
    /// Requests waiting for the batch at most; beyond it, 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub max_queued_requests: usize,
    /// Largest `n` (and number of prompts) one request may ask for.
    #[arg(long, default_value_t = 16)]
    pub max_n: usize,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Seconds running requests may take to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10.0)]
    pub shutdown_timeout: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsArg {
    F32,
    Int8,
    Int4,
}

fn positive(flag: &str, value: usize) -> Result<usize, CliError> {
    if value == 0 {
        return Err(CliError::Usage(format!("{flag}: must be at least 1")));
    }
    Ok(value)
}

/// The host decoder a command runs (`serve`, `eval`, `chat`): a quantized directory as
/// stored, any other model loaded on backend `B`, its adapter merged, in `weights`.
pub fn load_host_decoder<B: FusedBackend>(
    on: &On<B>,
    dir: &ModelDir,
    adapter: Option<&std::path::Path>,
    weights: Option<WeightsArg>,
    command: &str,
) -> Result<HostDecoder, CliError> {
    if let ModelDir::Quantized(q) = dir {
        if adapter.is_some() {
            return Err(CliError::Usage(format!(
                "--adapter: {} holds quantized weights; apply the adapter when quantizing (`ember quantize --adapter`)",
                q.dir.display()
            )));
        }
        if weights.is_some() {
            return Err(CliError::Usage(format!(
                "--weights: {} is already quantized ({}); it runs as stored",
                q.dir.display(),
                q.weights
            )));
        }
        return HostDecoder::load(&q.weights_path())
            .map_err(|e| CliError::Runtime(format!("--model: {e}")));
    }
    let model = dir.load::<B>(&on.device)?;
    let adapted = crate::adapter::apply(dir, model, adapter, &on.device)?
        .without_bottleneck(&format!("`{command}`"))?;
    if adapted.prompt.is_some() {
        return Err(CliError::Usage(format!(
            "--adapter: prefix- and prompt-tuning adapters do not run on the host decoder `{command}` uses; merge-able adapters (LoRA, DoRA, IA3) do"
        )));
    }
    let weights = match weights.unwrap_or(WeightsArg::F32) {
        WeightsArg::F32 => HostWeights::F32,
        WeightsArg::Int8 => HostWeights::Int8,
        WeightsArg::Int4 => HostWeights::Int4,
    };
    HostDecoder::new(&adapted.model, weights)
        .map_err(|e| CliError::Usage(format!("--model: `{command}` runs the host decoder: {e}")))
}

/// `ember serve` on backend `B` (which loads the weights; the host decoder runs them).
pub fn run<B: FusedBackend>(on: &On<B>, args: ServeArgs) -> Result<(), CliError> {
    let block_size = positive("--block-size", args.block_size)?;
    let max_num_seqs = positive("--max-num-seqs", args.max_num_seqs)?;
    let max_batched = positive("--max-num-batched-tokens", args.max_num_batched_tokens)?;
    let max_n = positive("--max-n", args.max_n)?;
    let max_queued = positive("--max-queued-requests", args.max_queued_requests)?;
    if !(args.shutdown_timeout >= 0.0 && args.shutdown_timeout.is_finite()) {
        return Err(CliError::Usage(format!(
            "--shutdown-timeout: must be a number of seconds >= 0, got {}",
            args.shutdown_timeout
        )));
    }
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| format!("[{}]:{}", args.host, args.port).parse())
        .map_err(|_| {
            CliError::Usage(format!(
                "--host {}: not an IP address (e.g. 127.0.0.1 or 0.0.0.0)",
                args.host
            ))
        })?;
    let dir = ModelDir::open(&args.model)?;
    let config = dir.config().clone();
    let kv_blocks = if args.kv_cache_mb.is_finite() && args.kv_cache_mb > 0.0 {
        PagedKv::blocks_in(&config, block_size, args.kv_cache_mb)
    } else {
        0
    };
    let needed = config.max_seq_len.div_ceil(block_size);
    if kv_blocks < needed {
        let mb = (needed * PagedKv::block_bytes(&config, block_size)) as f64 / (1 << 20) as f64;
        return Err(CliError::Usage(format!(
            "--kv-cache-mb {}: must hold at least one full-length sequence ({} positions = {needed} blocks of {block_size}): at least {mb:.3} MiB",
            args.kv_cache_mb, config.max_seq_len
        )));
    }
    let decoder = load_host_decoder(
        on,
        &dir,
        args.adapter.as_deref(),
        args.weights,
        "ember serve",
    )?;
    let weights = decoder.weights();
    let codec = Arc::new(Codec::of(&dir).map_err(|e| CliError::Usage(format!("--model: {e}")))?);
    let model_name = args.served_model_name.clone().unwrap_or_else(|| {
        args.model
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| args.model.display().to_string())
    });
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("EMBER_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let metrics = Arc::new(Metrics::new(&model_name));
    let engine_config = EngineConfig {
        scheduler: SchedulerConfig {
            max_num_seqs,
            max_batched_tokens: max_batched,
        },
        block_size,
        kv_blocks,
        max_queued_requests: max_queued,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("starting the server runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| CliError::Runtime(format!("--host/--port: cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        let engine = EngineHandle::start(
            Arc::new(decoder),
            engine_config,
            codec.detokenize(),
            metrics.clone(),
        );
        let state = AppState {
            engine,
            codec,
            metrics,
            options: Arc::new(ServeOptions {
                model_name: model_name.clone(),
                api_key,
                limits: RequestLimits {
                    max_n,
                    ..Default::default()
                },
                max_body_bytes: args.max_body_bytes,
                shutdown_grace: Duration::from_secs_f64(args.shutdown_timeout),
            }),
        };
        let kv_mb = (kv_blocks * PagedKv::block_bytes(&config, block_size)) as f64 / (1 << 20) as f64;
        eprintln!(
            "ember serve: model `{model_name}` ({weights:?} weights), KV cache {kv_blocks} blocks of {block_size} positions ({kv_mb:.1} MiB)"
        );
        eprintln!("ember serve: listening on http://{local}");
        ember_serve::serve(listener, state, ember_serve::shutdown_signal())
            .await
            .map_err(|e| CliError::Runtime(format!("serving: {e}")))?;
        eprintln!("ember serve: stopped");
        Ok(())
    })
}
