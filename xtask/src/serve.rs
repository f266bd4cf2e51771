//! `cargo xtask bench --suite serve`: `ember serve` under concurrent streaming clients on
//! loopback, and the batch-1 decoding modes around it.
//!
//! - `serve-stories15m`: llama2.c's stories15M shape (random weights), 1, 8, 32 and 64
//!   concurrent streaming clients, each a 128-token prompt and 128 new tokens (greedy,
//!   `ignore_eos`): aggregate tokens/s, p50/p99 time to first token and inter-token
//!   latency, the server's peak RSS against its KV budget plus weights, and every answer
//!   checked against the same prompt served alone (0 lost, 0 mixed).
//! - `serve-nanogpt`: the trained `nanogpt-cpu` model (context 64: 32-token prompts, 31
//!   new tokens), the same concurrency levels.
//! - `decode-quantized`: batch-1 tokens/s of stories15M with f32, int8 and 4-bit weights.
//! - `speculative-nanogpt`: batch-1 greedy decoding of `nanogpt-cpu` with and without a
//!   smaller draft model trained by `ember train` on the same data; the output must be
//!   identical; acceptance rate reported.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{build_ember, root, run, summary_line};

/// What one streaming client saw.
struct ClientRun {
    /// The streamed tokens' strings, each followed by U+0001.
    text: String,
    tokens: usize,
    ttft_ms: f64,
    gaps_ms: Vec<f64>,
}

/// Sends one streaming completion and reads its server-sent events as they arrive.
fn stream_completion(addr: &str, body: &Value) -> Result<ClientRun> {
    let mut stream = TcpStream::connect(addr).context("connecting to the server")?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    let body = body.to_string();
    let start = Instant::now();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.contains(" 200 ") {
        bail!("the server answered {}", line.trim());
    }
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    // Chunked transfer: size line, data, CRLF; events split on blank lines.
    let mut pending = String::new();
    let mut run = ClientRun {
        text: String::new(),
        tokens: 0,
        ttft_ms: f64::NAN,
        gaps_ms: Vec::new(),
    };
    let mut last: Option<Instant> = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let mut chunk = vec![0u8; size + 2];
        reader.read_exact(&mut chunk)?;
        pending.push_str(&String::from_utf8_lossy(&chunk[..size]));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            if data == "[DONE]" {
                return Ok(run);
            }
            let chunk: Value = serde_json::from_str(data)?;
            if let Some(tokens) = chunk["usage"]["completion_tokens"].as_u64() {
                run.tokens = tokens as usize;
            }
            // Tokens come with their log-probabilities (`logprobs: 0`), text or not (a
            // model without a tokenizer streams none).
            let tokens: Vec<&str> = chunk["choices"][0]["logprobs"]["tokens"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if !tokens.is_empty() {
                let piece = tokens.join("\u{1}");
                let now = Instant::now();
                match last {
                    None => run.ttft_ms = (now - start).as_secs_f64() * 1e3,
                    Some(t) => run.gaps_ms.push((now - t).as_secs_f64() * 1e3),
                }
                last = Some(now);
                run.text.push_str(&piece);
                run.text.push('\u{1}');
            }
        }
    }
    bail!("the stream ended without [DONE]")
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// `ember serve` on a free port; its address.
fn start_server(ember: &Path, model: &Path, kv_mb: usize) -> Result<(Child, String)> {
    let mut child = Command::new(ember)
        .arg("serve")
        .arg("--model")
        .arg(model)
        .args([
            "--port",
            "0",
            "--served-model-name",
            "bench",
            "--max-num-seqs",
            "64",
        ])
        .args(["--kv-cache-mb", &kv_mb.to_string()])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting ember serve")?;
    let stderr = child.stderr.take().context("server stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .context("ember serve exited before listening")??;
        if let Some(rest) = line.strip_prefix("ember serve: listening on http://") {
            break rest.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addr))
}

fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn stop(mut child: Child) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

fn request(prompt: &[u32], new: usize) -> Value {
    json!({"model": "bench", "prompt": prompt, "max_tokens": new, "temperature": 0,
           "ignore_eos": true, "logprobs": 0, "stream": true,
           "stream_options": {"include_usage": true}})
}

/// The concurrency sweep on one model: a summary per level.
fn sweep(
    ember: &Path,
    name: &str,
    model: &Path,
    prompts: &[Vec<u32>],
    new: usize,
    kv_mb: usize,
    weight_mb: f64,
) -> Result<Vec<Value>> {
    let (child, addr) = start_server(ember, model, kv_mb)?;
    let pid = child.id();
    // Each prompt alone first: the answers the concurrent runs must reproduce.
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| stream_completion(&addr, &request(p, new)).map(|r| r.text))
        .collect::<Result<_>>()?;
    let mut summaries = Vec::new();
    for clients in [1usize, 8, 32, 64] {
        let start = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let addr = addr.clone();
                let body = request(&prompts[i % prompts.len()], new);
                std::thread::spawn(move || stream_completion(&addr, &body))
            })
            .collect();
        let runs: Vec<Result<ClientRun>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("client thread panicked")))
            .collect();
        let wall = start.elapsed().as_secs_f64();
        let mut lost = 0;
        let mut mixed = 0;
        let mut tokens = 0;
        let (mut ttft, mut gaps) = (Vec::new(), Vec::new());
        for (i, run) in runs.into_iter().enumerate() {
            match run {
                Ok(r) if r.tokens == new => {
                    if r.text != alone[i % prompts.len()] {
                        mixed += 1;
                    }
                    tokens += r.tokens;
                    ttft.push(r.ttft_ms);
                    gaps.extend(r.gaps_ms);
                }
                _ => lost += 1,
            }
        }
        summaries.push(json!({
            "bench": format!("{name}-c{clients}"),
            "clients": clients,
            "prompt_tokens": prompts[0].len(),
            "new_tokens": new,
            "tokens_per_s": (tokens as f64 / wall * 10.0).round() / 10.0,
            "ttft_p50_ms": (percentile(&ttft, 0.5) * 10.0).round() / 10.0,
            "ttft_p99_ms": (percentile(&ttft, 0.99) * 10.0).round() / 10.0,
            "itl_p50_ms": (percentile(&gaps, 0.5) * 100.0).round() / 100.0,
            "itl_p99_ms": (percentile(&gaps, 0.99) * 100.0).round() / 100.0,
            "lost": lost,
            "mixed": mixed,
            "peak_rss_mb": (peak_rss_mb(pid) * 10.0).round() / 10.0,
            "kv_budget_plus_weights_mb": (kv_mb as f64 + weight_mb).round(),
        }));
    }
    stop(child);
    let one = summaries[0]["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
    let at32 = summaries[2]["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
    summaries.push(json!({
        "bench": format!("{name}-scaling"),
        "tokens_per_s_1": one,
        "tokens_per_s_32": at32,
        "ratio_32_vs_1": ((at32 / one) * 100.0).round() / 100.0,
    }));
    Ok(summaries)
}

/// `ember generate --stats` tokens/s (after the first) and the printed ids.
fn generate_rate(ember: &Path, model: &Path, extra: &[&str]) -> Result<(f64, String, String)> {
    let out = Command::new(ember)
        .arg("generate")
        .arg("--model")
        .arg(model)
        .args(["--temperature", "0", "--print-ids", "--stats"])
        .args(extra)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        bail!("ember generate {extra:?} failed: {stderr}");
    }
    let rate = stderr
        .rsplit("tokens, ")
        .next()
        .and_then(|s| s.split(" tokens/s").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(f64::NAN);
    Ok((
        rate,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr,
    ))
}

fn median3(ember: &Path, model: &Path, extra: &[&str]) -> Result<(f64, String, String)> {
    let mut runs: Vec<(f64, String, String)> = (0..3)
        .map(|_| generate_rate(ember, model, extra))
        .collect::<Result<_>>()?;
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(runs.swap_remove(1))
}

pub fn bench(data: &Path) -> Result<()> {
    let root = root();
    let ember = build_ember()?;
    let bench_dir = root.join("target/bench");
    std::fs::create_dir_all(&bench_dir)?;
    let stories = bench_dir.join("stories15m-hf");
    if !stories.join("model.safetensors").exists() {
        run(Command::new(env!("CARGO"))
            .current_dir(&root)
            .args(["run", "--release", "--quiet", "-p", "ember-examples"])
            .args(["--example", "random_hf_model", "--", "stories15m"])
            .arg(&stories))?;
    }
    let mut summaries = Vec::new();
    // 128-token prompts over the stories15M vocabulary (32000), distinct per client.
    let prompts: Vec<Vec<u32>> = (0..64u32)
        .map(|c| {
            (0..128u32)
                .map(|i| 1 + (i * 7919 + c * 104_729) % 31_000)
                .collect()
        })
        .collect();
    let stories_weights_mb = 15.2e6 * 4.0 / (1 << 20) as f64;
    summaries.extend(sweep(
        &ember,
        "serve-stories15m",
        &stories,
        &prompts,
        128,
        256,
        stories_weights_mb,
    )?);

    let run_dir = bench_dir.join("nanogpt-cpu-run");
    let draft_dir = bench_dir.join("nanogpt-draft-run");
    if run_dir.join("checkpoint/ember.json").exists() {
        let prompts: Vec<Vec<u32>> = (0..64u32)
            .map(|c| (0..32u32).map(|i| (i * 13 + c * 7) % 60).collect())
            .collect();
        summaries.extend(sweep(
            &ember,
            "serve-nanogpt",
            &run_dir,
            &prompts,
            31,
            64,
            3.2,
        )?);
    } else {
        println!(
            "xtask: no trained nanogpt-cpu run in {}; run `cargo xtask bench` first for serve-nanogpt",
            run_dir.display()
        );
    }

    // Batch 1: f32, int8 and 4-bit weights on stories15M.
    let ids = "1";
    let new = ["--ids", ids, "--max-new-tokens", "255"];
    let rate = |decoder: &str| -> Result<f64> {
        let mut extra = new.to_vec();
        extra.extend(["--decoder", decoder]);
        Ok(median3(&ember, &stories, &extra)?.0)
    };
    let (f32_rate, int8_rate, int4_rate) = (rate("host")?, rate("host-int8")?, rate("host-int4")?);
    summaries.push(json!({
        "bench": "decode-quantized",
        "model": "stories15m",
        "f32_tokens_per_s": f32_rate,
        "int8_tokens_per_s": int8_rate,
        "int4_tokens_per_s": int4_rate,
        "int4_vs_int8": ((int4_rate / int8_rate) * 100.0).round() / 100.0,
    }));

    // Speculative decoding: a draft trained on the same data as nanogpt-cpu.
    if run_dir.join("checkpoint/ember.json").exists() && data.exists() {
        if !draft_dir.join("checkpoint/ember.json").exists() {
            println!("xtask: training a draft model for speculative decoding");
            run(Command::new(&ember)
                .args(["train", "--preset", "nanogpt-cpu", "--quiet", "--data"])
                .arg(data)
                .arg("--out")
                .arg(&draft_dir)
                .args(["--set", "model.n_layers=1", "--set", "model.d_model=64"])
                .args(["--set", "model.n_heads=2", "--set", "model.n_kv_heads=2"])
                .args(["--set", "model.d_ff=256", "--set", "train.steps=600"]))?;
        }
        let base = [
            "--ids",
            "1,2,3",
            "--max-new-tokens",
            "60",
            "--decoder",
            "host",
        ];
        let (plain, plain_ids, _) = median3(&ember, &run_dir, &base)?;
        let mut extra = base.to_vec();
        let draft = draft_dir.to_string_lossy().to_string();
        extra.extend([
            "--draft-model",
            draft.as_str(),
            "--num-speculative-tokens",
            "4",
        ]);
        let (spec, spec_ids, stderr) = median3(&ember, &run_dir, &extra)?;
        let acceptance = stderr
            .split("acceptance ")
            .nth(1)
            .and_then(|s| s.split('%').next())
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        summaries.push(json!({
            "bench": "speculative-nanogpt",
            "plain_tokens_per_s": plain,
            "speculative_tokens_per_s": spec,
            "speedup": ((spec / plain) * 100.0).round() / 100.0,
            "acceptance_pct": acceptance,
            "identical": plain_ids == spec_ids,
        }));
    }
    for summary in &summaries {
        println!("{}", summary_line(summary));
        let name = summary["bench"].as_str().unwrap_or("serve");
        std::fs::write(
            bench_dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(summary)?,
        )?;
    }
    Ok(())
}
