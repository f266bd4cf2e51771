//! The server over HTTP on a loopback port, with a random-weight Llama-shaped model and a
//! byte-level BPE tokenizer (whose tokens can end inside a multi-byte character). Greedy
//! answers are checked against the batch-1 host decoder run on each prompt alone (no
//! batching, no paging, no server); streams against the non-streamed answers.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use burn::backend::Flex;
use ember_data::sft::ChatTemplate;
use ember_data::{BpeTokenizer, Tokenizer};
use ember_infer::{HostDecoder, HostWeights, PagedKv, argmax};
use ember_nn::{Transformer, TransformerConfig};
use ember_serve::{
    AppState, Codec, EngineConfig, EngineHandle, Metrics, RequestLimits, SchedulerConfig,
    ServeOptions,
};
use serde_json::{Value, json};
use tokio::sync::oneshot;

type B = Flex;

const MAX_SEQ: usize = 160;
const MODEL: &str = "tiny";

struct Fixture {
    host: Arc<HostDecoder>,
    tokenizer: Tokenizer,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let docs: Vec<String> = [
            "the quick brown fox jumps over the lazy dog",
            "café crème brûlée à la française, naïve façade",
            "日本語のテキストと中文字符 😀 🚀 emoji",
            "Ünïcödé text with ümlauts and ß and €100",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let tokenizer = Tokenizer::Bpe(Box::new(BpeTokenizer::train(&docs, 300).unwrap()));
        let vocab = tokenizer.vocab_size();
        let mut config = TransformerConfig::llama(vocab, 64, 2, 4, 2, 128, MAX_SEQ);
        config.init_std = 0.3;
        let device = Default::default();
        <B as burn::tensor::backend::Backend>::seed(&device, 11);
        let model = Transformer::<B>::new(&config, &device).unwrap();
        let host = Arc::new(HostDecoder::new(&model, HostWeights::F32).unwrap());
        Fixture { host, tokenizer }
    })
}

/// How a test's server is set up.
#[derive(Clone)]
struct Setup {
    kv_blocks: Option<usize>,
    max_num_seqs: usize,
    max_batched_tokens: usize,
    max_queued: usize,
    api_key: Option<String>,
    stop_tokens: Vec<u32>,
    grace: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            kv_blocks: None,
            max_num_seqs: 64,
            max_batched_tokens: 256,
            max_queued: 64,
            api_key: None,
            stop_tokens: Vec::new(),
            grace: Duration::from_secs(10),
        }
    }
}

struct Server {
    base: String,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    client: reqwest::Client,
}

impl Server {
    async fn start(setup: Setup) -> Self {
        let f = fixture();
        let config = f.host.config().clone();
        let codec = Arc::new(Codec::new(
            Some(f.tokenizer.clone()),
            ChatTemplate::builtin(),
            setup.stop_tokens.clone(),
            config.vocab_size,
            config.max_seq_len,
        ));
        let metrics = Arc::new(Metrics::new(MODEL));
        let engine = EngineHandle::start(
            f.host.clone(),
            EngineConfig {
                scheduler: SchedulerConfig {
                    max_num_seqs: setup.max_num_seqs,
                    max_batched_tokens: setup.max_batched_tokens,
                },
                block_size: 16,
                kv_blocks: setup.kv_blocks.unwrap_or(256),
                max_queued_requests: setup.max_queued,
            },
            codec.detokenize(),
            metrics.clone(),
        );
        let state = AppState {
            engine,
            codec,
            metrics,
            options: Arc::new(ServeOptions {
                model_name: MODEL.into(),
                api_key: setup.api_key.clone(),
                limits: RequestLimits::default(),
                max_body_bytes: 64 * 1024,
                shutdown_grace: setup.grace,
            }),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ember_serve::serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        Self {
            base,
            state,
            stop: Some(stop),
            task,
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// A streamed answer's `data:` payloads, `[DONE]` included.
    async fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let text = response.text().await.unwrap();
        text.split("\n\n")
            .filter_map(|event| {
                event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: ").map(str::to_string))
            })
            .collect()
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the server stops within its grace period")
            .unwrap()
            .unwrap();
    }
}

fn encode(text: &str) -> Vec<u32> {
    fixture().tokenizer.encode_with_special(text).unwrap()
}

fn decode(ids: &[u32]) -> String {
    match &fixture().tokenizer {
        Tokenizer::Bpe(t) => t.decode_with(ids, true).unwrap(),
        t => t.decode(ids).unwrap(),
    }
}

/// Greedy ids of `prompt` alone on the batch-1 host decoder, stopping after any of `stop`.
fn alone(prompt: &[u32], max_tokens: usize, stop: &[u32]) -> Vec<u32> {
    let host = &fixture().host;
    let mut state = host.new_state();
    let mut logits = host.prefill(&mut state, prompt).to_vec();
    let mut out = Vec::new();
    while out.len() < max_tokens {
        let t = argmax(&logits);
        out.push(t);
        if stop.contains(&t) || out.len() == max_tokens {
            break;
        }
        logits = host.step(&mut state, t).to_vec();
    }
    out
}

fn prompts() -> Vec<String> {
    (0..16)
        .map(|i| {
            let words = [
                "the fox",
                "café",
                "日本語",
                "ümlauts",
                "emoji 😀",
                "crème",
                "lazy dog",
            ];
            format!(
                "{} {} {i}",
                words[i % words.len()],
                words[(i * 3 + 1) % words.len()]
            )
        })
        .collect()
}

fn greedy(prompt: &str, max_tokens: usize) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

/// Text of concatenated stream chunks (completions or chat), per choice.
fn stream_text(events: &[String], choices: usize) -> (Vec<String>, Vec<Option<String>>) {
    let mut text = vec![String::new(); choices];
    let mut finish = vec![None; choices];
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(e).unwrap();
        for c in chunk["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            let piece = c["text"]
                .as_str()
                .or_else(|| c["delta"]["content"].as_str())
                .unwrap_or("");
            text[i] += piece;
            if let Some(f) = c["finish_reason"].as_str() {
                finish[i] = Some(f.to_string());
            }
        }
    }
    (text, finish)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_streamed_and_whole_agree_with_each_prompt_decoded_alone() {
    let server = Server::start(Setup::default()).await;
    let prompt = "café crème 😀";
    let ids = encode(prompt);
    let want = decode(&alone(&ids, 40, &[]));
    let (status, body) = server.post("/v1/completions", &greedy(prompt, 40)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["text"], want.as_str());
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["prompt_tokens"], ids.len());
    assert_eq!(body["usage"]["completion_tokens"], 40);
    assert_eq!(body["usage"]["total_tokens"], ids.len() + 40);
    // Streamed: the same text, one id throughout, usage last, then [DONE].
    let mut request = greedy(prompt, 40);
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let events = server.stream("/v1/completions", &request).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("cmpl-"));
    assert!(
        chunks
            .iter()
            .all(|c| c["id"] == id && c["object"] == "text_completion")
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 40);
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    let (text, finish) = stream_text(&events, 1);
    assert_eq!(text[0], want);
    assert_eq!(finish[0].as_deref(), Some("length"));
    // No chunk shows a replacement character the whole text does not have.
    let replaced = |s: &str| s.matches('\u{fffd}').count();
    let pieces: usize = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .map(replaced)
        .sum();
    assert_eq!(pieces, replaced(&want));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_prompts_each_get_the_tokens_they_get_alone() {
    let server = Arc::new(Server::start(Setup::default()).await);
    let mut tasks = Vec::new();
    for (i, prompt) in prompts().into_iter().enumerate() {
        let server = server.clone();
        let max_tokens = 20 + i;
        tasks.push(tokio::spawn(async move {
            let mut request = greedy(&prompt, max_tokens);
            if i % 2 == 1 {
                request["stream"] = json!(true);
                let events = server.stream("/v1/completions", &request).await;
                (prompt, max_tokens, stream_text(&events, 1).0.remove(0))
            } else {
                let (status, body) = server.post("/v1/completions", &request).await;
                assert_eq!(status, 200, "{body}");
                (
                    prompt,
                    max_tokens,
                    body["choices"][0]["text"].as_str().unwrap().to_string(),
                )
            }
        }));
    }
    for task in tasks {
        let (prompt, max_tokens, text) = task.await.unwrap();
        assert_eq!(
            text,
            decode(&alone(&encode(&prompt), max_tokens, &[])),
            "{prompt}"
        );
    }
    assert!(server.metric("vllm:generation_tokens_total").await >= (20..36).sum::<usize>() as f64);
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_render_the_template_and_stream_the_same_answer() {
    let server = Server::start(Setup::default()).await;
    let messages = json!([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "café?"}]},
    ]);
    let rendered = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\ncafé?<|im_end|>\n<|im_start|>assistant\n";
    let ids = fixture().tokenizer.encode(rendered).unwrap();
    let want = decode(&alone(&ids, 24, &[]));
    let request = json!({"model": MODEL, "messages": messages, "max_tokens": 24, "temperature": 0});
    let (status, body) = server.post("/v1/chat/completions", &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(body["usage"]["prompt_tokens"], ids.len());
    let mut request = request;
    request["stream"] = json!(true);
    let events = server.stream("/v1/chat/completions", &request).await;
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let (text, finish) = stream_text(&events, 1);
    assert_eq!(text[0], want);
    assert_eq!(finish[0].as_deref(), Some("length"));
    assert_eq!(events.last().unwrap(), "[DONE]");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_kv_budget_preempts_and_every_answer_is_still_complete_and_identical() {
    // Room for one full-length sequence and a little more: 8 concurrent requests of up
    // to 100 positions must take turns.
    let blocks = MAX_SEQ.div_ceil(16) + 2;
    let setup = Setup {
        kv_blocks: Some(blocks),
        ..Setup::default()
    };
    let server = Arc::new(Server::start(setup).await);
    let (free, total) = server.state.engine.blocks();
    assert_eq!((free, total), (blocks, blocks));
    let mut tasks = Vec::new();
    for prompt in prompts().into_iter().take(8) {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let (status, body) = server.post("/v1/completions", &greedy(&prompt, 90)).await;
            assert_eq!(status, 200, "{body}");
            (prompt, body)
        }));
    }
    for task in tasks {
        let (prompt, body) = task.await.unwrap();
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["completion_tokens"], 90);
        let want = decode(&alone(&encode(&prompt), 90, &[]));
        assert_eq!(body["choices"][0]["text"], want.as_str(), "{prompt}");
    }
    let preemptions = server.metric("vllm:num_preemptions_total").await;
    assert!(preemptions > 0.0, "the budget forced no preemption");
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_prompt_prefix_is_computed_once_and_n_choices_share_it() {
    let server = Server::start(Setup::default()).await;
    let common = "the quick brown fox jumps over the lazy dog and the café crème brûlée";
    let first = format!("{common} one");
    let second = format!("{common} and something else");
    let (_, a) = server.post("/v1/completions", &greedy(&first, 8)).await;
    assert_eq!(server.metric("vllm:prefix_cache_hits_total").await, 0.0);
    let (_, b) = server.post("/v1/completions", &greedy(&second, 8)).await;
    let hits = server.metric("vllm:prefix_cache_hits_total").await;
    let shared = encode(&first)
        .iter()
        .zip(encode(&second))
        .take_while(|(x, y)| **x == *y)
        .count();
    assert_eq!(
        hits as usize,
        shared / 16 * 16,
        "whole shared blocks are reused"
    );
    assert!(hits >= 16.0);
    assert_eq!(
        a["choices"][0]["text"],
        decode(&alone(&encode(&first), 8, &[])).as_str()
    );
    assert_eq!(
        b["choices"][0]["text"],
        decode(&alone(&encode(&second), 8, &[])).as_str()
    );
    // n = 3 greedy continuations: the prompt's blocks computed by choice 0, shared.
    let mut request = greedy(&second, 8);
    request["n"] = json!(3);
    let (status, body) = server.post("/v1/completions", &request).await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["text"], b["choices"][0]["text"]);
    }
    assert_eq!(body["usage"]["completion_tokens"], 24);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_frees_its_blocks() {
    let server = Server::start(Setup::default()).await;
    let mut request = greedy("the lazy dog", 140);
    request["stream"] = json!(true);
    let mut response = server
        .client
        .post(format!("{}/v1/completions", server.base))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert!(response.chunk().await.unwrap().is_some());
    drop(response);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (free, total) = server.state.engine.blocks();
        let running = server.metric("vllm:num_requests_running").await;
        if free == total && running == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "blocks not freed: {free}/{total}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let generated = server.metric("vllm:generation_tokens_total").await;
    assert!(generated < 140.0, "the cancelled stream ran to the end");
    assert_eq!(server.metric("vllm:request_success_total").await, 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_seeds_logprobs_and_eos_behave_as_openai_and_vllm_define_them() {
    let prompt = "emoji 😀 crème";
    let ids = encode(prompt);
    let reference = alone(&ids, 30, &[]);
    let server = Server::start(Setup {
        stop_tokens: vec![reference[4]],
        ..Setup::default()
    })
    .await;
    // The model's end-of-sequence token ends the answer (not in its text)...
    let (_, body) = server.post("/v1/completions", &greedy(prompt, 30)).await;
    let at = reference.iter().position(|&t| t == reference[4]).unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["choices"][0]["text"],
        decode(&reference[..at]).as_str()
    );
    assert_eq!(body["usage"]["completion_tokens"], at + 1);
    // ...unless ignore_eos.
    let mut request = greedy(prompt, 30);
    request["ignore_eos"] = json!(true);
    let (_, body) = server.post("/v1/completions", &request).await;
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let full = decode(&reference);
    assert_eq!(body["choices"][0]["text"], full.as_str());
    // A stop string spanning tokens: the text ends before it.
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = full.find(&stop).unwrap();
    for stream in [false, true] {
        let mut request = greedy(prompt, 30);
        request["ignore_eos"] = json!(true);
        request["stop"] = json!(["never-there", stop]);
        request["stream"] = json!(stream);
        let (text, finish) = if stream {
            let events = server.stream("/v1/completions", &request).await;
            let (t, f) = stream_text(&events, 1);
            (t[0].clone(), f[0].clone().unwrap())
        } else {
            let (_, body) = server.post("/v1/completions", &request).await;
            let c = &body["choices"][0];
            (
                c["text"].as_str().unwrap().to_string(),
                c["finish_reason"].as_str().unwrap().to_string(),
            )
        };
        assert_eq!(text, &full[..cut], "stream {stream}");
        assert_eq!(finish, "stop");
    }
    // Seeds: the same seed, the same text; sampling at temperature 1 follows the seed.
    let sampled = |seed: u64| {
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 20, "temperature": 1.0,
               "top_p": 0.95, "top_k": 50, "min_p": 0.01, "seed": seed, "ignore_eos": true,
               "presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.2})
    };
    let (_, a) = server.post("/v1/completions", &sampled(5)).await;
    let (_, b) = server.post("/v1/completions", &sampled(5)).await;
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let mut differs = false;
    for seed in 6..10 {
        let (_, c) = server.post("/v1/completions", &sampled(seed)).await;
        differs |= c["choices"][0]["text"] != a["choices"][0]["text"];
    }
    assert!(differs, "five seeds gave one text");
    // Log-probabilities: greedy picks the most likely token, alternatives sorted.
    let mut request = greedy(prompt, 6);
    request["logprobs"] = json!(3);
    request["ignore_eos"] = json!(true);
    let (_, body) = server.post("/v1/completions", &request).await;
    let lp = &body["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
    for (chosen, top) in lp["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(lp["top_logprobs"].as_array().unwrap())
    {
        let values: Vec<f64> = top
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(!values.is_empty() && values.len() <= 3);
        let best = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert!((chosen.as_f64().unwrap() - best).abs() < 1e-6);
        assert!(best <= 0.0);
    }
    let mut chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4, "temperature": 0, "logprobs": true, "top_logprobs": 2, "ignore_eos": true});
    let (status, body) = server.post("/v1/chat/completions", &chat).await;
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(content.len(), 4);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    chat["logprobs"] = json!(false);
    let (status, body) = server.post("/v1/chat/completions", &chat).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "top_logprobs");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let server = Server::start(Setup::default()).await;
    let ok = greedy("the fox", 4);
    let with = |key: &str, value: Value| {
        let mut r = ok.clone();
        r[key] = value;
        r
    };
    let long_prompt: Vec<u32> = vec![5; MAX_SEQ + 1];
    let cases: Vec<(Value, u16, &str)> = vec![
        (with("temperature", json!("hot")), 400, "temperature"),
        (with("temperature", json!(-1)), 400, "temperature"),
        (with("top_p", json!(0)), 400, "top_p"),
        (with("top_p", json!(1.5)), 400, "top_p"),
        (with("max_tokens", json!(0)), 400, "max_tokens"),
        (with("max_tokens", json!(-3)), 400, "max_tokens"),
        (
            with("max_tokens", json!(10_000)),
            400,
            "maximum context length",
        ),
        (with("n", json!(1000)), 400, "n"),
        (
            with("frequency_penalty", json!(3)),
            400,
            "frequency_penalty",
        ),
        (with("logprobs", json!(99)), 400, "logprobs"),
        (with("bogus_field", json!(1)), 400, "bogus_field"),
        (with("model", json!("gpt-4")), 404, "gpt-4"),
        (with("prompt", json!("")), 400, "prompt"),
        (
            with("prompt", json!(long_prompt)),
            400,
            "maximum context length",
        ),
        (with("prompt", json!([1, 2, 999_999])), 400, "vocabulary"),
        (with("stop", json!(3)), 400, "stop"),
        (
            with("stream_options", json!({"include_usage": true})),
            400,
            "stream_options",
        ),
        (with("logit_bias", json!({"abc": 1})), 400, "logit_bias"),
        (with("stop", json!(["x".repeat(300)])), 400, "stop"),
        (with("prompt", json!(vec!["a"; 40])), 400, "prompts"),
    ];
    for (body, status, mention) in cases {
        let (got, answer) = server.post("/v1/completions", &body).await;
        assert_eq!(got, status, "{body} -> {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(mention),
            "{body}: `{message}` does not name {mention}"
        );
        assert!(answer["error"]["type"].is_string());
    }
    // Not JSON at all, and a body over the limit.
    for (raw, status) in [("{not json".to_string(), 400u16), ("x".repeat(70_000), 413)] {
        let response = server
            .client
            .post(format!("{}/v1/completions", server.base))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        let answer: Value = response.json().await.unwrap();
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    let (status, answer) = server
        .post(
            "/v1/chat/completions",
            &json!({"model": MODEL, "messages": []}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["param"], "messages");
    let (status, _) = server.post("/v1/nothing", &json!({})).await;
    assert_eq!(status, 404);
    let r = server
        .client
        .get(format!("{}/v1/completions", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());
    // The engine itself refuses what would break its passes, whoever calls it.
    let bad = ember_serve::engine::GenerationRequest {
        prompt: Vec::new(),
        params: ember_serve::engine::GenerationParams {
            sampling: ember_infer::SamplingConfig::greedy(),
            penalties: Default::default(),
            logit_bias: Vec::new(),
            max_tokens: 4,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            n: 1,
            logprobs: None,
        },
    };
    assert!(matches!(
        server.state.engine.submit(bad.clone()),
        Err(ember_serve::engine::SubmitError::Invalid(_))
    ));
    let mut past = bad;
    past.prompt = vec![1; 10];
    past.params.max_tokens = MAX_SEQ;
    assert!(server.state.engine.submit(past).is_err());
    // Still serving.
    let (status, body) = server.post("/v1/completions", &ok).await;
    assert_eq!(status, 200, "{body}");
    let (status, models) = {
        let r = server
            .client
            .get(format!("{}/v1/models", server.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], MODEL);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_guards_the_api_but_not_health_or_metrics() {
    let server = Server::start(Setup {
        api_key: Some("sesame".into()),
        ..Setup::default()
    })
    .await;
    let get = |path: &str, key: Option<&str>| {
        let mut r = server.client.get(format!("{}{path}", server.base));
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        r.send()
    };
    // As vLLM: health checks and metric scrapes stay open.
    assert_eq!(get("/health", None).await.unwrap().status(), 200);
    assert_eq!(get("/metrics", None).await.unwrap().status(), 200);
    for path in ["/v1/models"] {
        let r = get(path, None).await.unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(get(path, Some("wrong")).await.unwrap().status(), 401);
        assert_eq!(get(path, Some("sesame")).await.unwrap().status(), 200);
    }
    let r = server
        .client
        .post(format!("{}/v1/completions", server.base))
        .json(&greedy("the fox", 2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after() {
    let server = Arc::new(
        Server::start(Setup {
            max_num_seqs: 1,
            max_queued: 1,
            ..Setup::default()
        })
        .await,
    );
    // One running (16 choices of 120 tokens, one at a time: it stays busy), one waiting;
    // a third is refused. The first is known to run once its first chunk arrives.
    let mut streams = Vec::new();
    for i in 0..2 {
        let mut request = greedy("the fox", 120);
        request["stream"] = json!(true);
        if i == 0 {
            request["n"] = json!(16);
        }
        let mut response = server
            .client
            .post(format!("{}/v1/completions", server.base))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        if i == 0 {
            assert!(response.chunk().await.unwrap().is_some());
        }
        streams.push(response);
    }
    let response = server
        .client
        .post(format!("{}/v1/completions", server.base))
        .json(&greedy("the fox", 2))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("busy"));
    drop(streams);
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_running_streams_within_the_grace_period() {
    let server = Server::start(Setup {
        grace: Duration::from_millis(200),
        max_batched_tokens: 16,
        ..Setup::default()
    })
    .await;
    let mut request = greedy("the lazy dog", 150);
    request["stream"] = json!(true);
    let response = server
        .client
        .post(format!("{}/v1/completions", server.base))
        .json(&request)
        .send()
        .await
        .unwrap();
    let base = server.base.clone();
    let started = Instant::now();
    let reader = tokio::spawn(async move { response.text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.stop().await;
    let text = reader.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(
        text.contains("\"finish_reason\":\"abort\"")
            || text.contains("\"finish_reason\":\"length\"")
    );
    // Nothing listens any more.
    assert!(reqwest::get(format!("{base}/health")).await.is_err());
}

#[test]
fn the_kv_budget_in_megabytes_counts_whole_blocks() {
    let config = fixture().host.config();
    // 2 layers · 16 positions · 2 kv heads · 16 dims · (keys + values) · 4 bytes.
    assert_eq!(PagedKv::block_bytes(config, 16), 2 * 2 * 16 * 2 * 16 * 4);
    assert_eq!(PagedKv::blocks_in(config, 16, 1.0), (1 << 20) / 8192);
}
