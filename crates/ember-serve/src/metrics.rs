//! The server's metrics, named as vLLM names them so that dashboards and alerts written
//! for vLLM read Ember unchanged, served on `GET /metrics` in the OpenMetrics text format
//! (which Prometheus scrapes) through the `prometheus-client` crate. Every series carries
//! a `model_name` label.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds (vLLM's time-to-first-token buckets, which also cover the
/// per-token and end-to-end latencies of CPU serving).
const SECONDS: [f64; 20] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0,
];

/// Every metric the engine and the server update.
pub struct Metrics {
    registry: Registry,
    pub running: Gauge,
    pub waiting: Gauge,
    pub kv_cache_usage: Gauge<f64, AtomicU64>,
    pub preemptions: Counter,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub prefix_cache_queries: Counter,
    pub prefix_cache_hits: Counter,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub time_per_output_token: Histogram,
    pub e2e_latency: Histogram,
    /// Finished requests by `finished_reason` (`stop`, `length`, `abort`).
    pub request_success: Family<Vec<(String, String)>, Counter>,
    /// Requests refused before reaching the engine (full queue, bad input), by HTTP status.
    pub rejected: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    pub fn new(model_name: &str) -> Self {
        let mut registry = Registry::with_labels(
            [("model_name".into(), model_name.to_string().into())].into_iter(),
        );
        let histogram = || Histogram::new(SECONDS);
        let m = Self {
            running: Gauge::default(),
            waiting: Gauge::default(),
            kv_cache_usage: Gauge::default(),
            preemptions: Counter::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            prefix_cache_queries: Counter::default(),
            prefix_cache_hits: Counter::default(),
            time_to_first_token: histogram(),
            inter_token_latency: histogram(),
            time_per_output_token: histogram(),
            e2e_latency: histogram(),
            request_success: Family::default(),
            rejected: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "vllm:num_requests_running",
            "Sequences in the running batch",
            m.running.clone(),
        );
        r.register(
            "vllm:num_requests_waiting",
            "Sequences waiting to be scheduled (new or preempted)",
            m.waiting.clone(),
        );
        r.register(
            "vllm:kv_cache_usage_perc",
            "Fraction of KV-cache blocks in use, 0 to 1",
            m.kv_cache_usage.clone(),
        );
        r.register(
            "vllm:num_preemptions",
            "Sequences preempted for lack of KV-cache blocks (recomputed later)",
            m.preemptions.clone(),
        );
        r.register(
            "vllm:prompt_tokens",
            "Prompt tokens processed",
            m.prompt_tokens.clone(),
        );
        r.register(
            "vllm:generation_tokens",
            "Tokens generated",
            m.generation_tokens.clone(),
        );
        r.register(
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache",
            m.prefix_cache_queries.clone(),
        );
        r.register(
            "vllm:prefix_cache_hits",
            "Prompt tokens found in the prefix cache (not computed again)",
            m.prefix_cache_hits.clone(),
        );
        r.register(
            "vllm:time_to_first_token_seconds",
            "Arrival to first generated token",
            m.time_to_first_token.clone(),
        );
        r.register(
            "vllm:inter_token_latency_seconds",
            "Time between consecutive generated tokens of a sequence",
            m.inter_token_latency.clone(),
        );
        r.register(
            "vllm:time_per_output_token_seconds",
            "Per request: (end-to-end - time to first token) / (tokens - 1)",
            m.time_per_output_token.clone(),
        );
        r.register(
            "vllm:e2e_request_latency_seconds",
            "Arrival to the last token",
            m.e2e_latency.clone(),
        );
        r.register(
            "vllm:request_success",
            "Finished sequences by finish reason",
            m.request_success.clone(),
        );
        r.register(
            "ember:requests_rejected",
            "Requests answered with an error before reaching the engine, by status",
            m.rejected.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts a finished sequence under `reason`.
    pub fn finished(&self, reason: &str) {
        self.request_success
            .get_or_create(&vec![("finished_reason".into(), reason.into())])
            .inc();
    }

    /// Counts a refused request under its HTTP status.
    pub fn rejected(&self, status: u16) {
        self.rejected
            .get_or_create(&vec![("status".into(), status.to_string())])
            .inc();
    }

    /// The text `GET /metrics` answers.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
