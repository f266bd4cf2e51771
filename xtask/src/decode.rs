//! `cargo xtask bench --suite decode`: batch-1 decoding and prefill, Ember against a
//! KV-cached PyTorch decoder (`benches/reference/decode_torch.py`) on the same weights.
//!
//! - `decode-stories15m`: a random-weight Llama of llama2.c's stories15M shape, 255 new
//!   tokens after one (host decoder with int8 weights; f32 and burn also reported).
//! - `prefill-stories15m`: time to the first token after a 256-token prompt.
//! - `decode-nanogpt`: the trained `nanogpt-cpu` model (the run `cargo xtask bench`
//!   leaves in `target/bench/nanogpt-cpu-run`, trained here when missing), 63 new tokens
//!   (its context is 64), f32 host decoder; the greedy ids must equal the reference's.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{build_ember, python_with_torch, root, run, summary_line};

/// What `ember generate --stats` reported.
struct Stats {
    ids: String,
    ttft_ms: f64,
    tokens_per_s: f64,
    peak_rss_mb: f64,
}

/// The number between the last `before` and the `after` that follows it.
fn number_after(line: &str, before: &str, after: &str) -> Option<f64> {
    let start = line.rfind(before)? + before.len();
    let rest = &line[start..];
    rest[..rest.find(after)?].trim().parse().ok()
}

fn generate(ember: &Path, model: &Path, ids: &str, new: usize, decoder: &str) -> Result<Stats> {
    let out = Command::new(ember)
        .arg("generate")
        .arg("--model")
        .arg(model)
        .args(["--ids", ids, "--max-new-tokens", &new.to_string()])
        .args([
            "--temperature",
            "0",
            "--print-ids",
            "--stats",
            "--decoder",
            decoder,
        ])
        .output()
        .context("running ember generate")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("ember generate --decoder {decoder} failed: {stderr}");
    }
    let line = stderr
        .lines()
        .find(|l| l.starts_with("decoder "))
        .with_context(|| format!("no --stats line in: {stderr}"))?;
    Ok(Stats {
        ids: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ttft_ms: number_after(line, "first token after", "ms").unwrap_or(f64::NAN),
        tokens_per_s: number_after(line, "tokens,", "tokens/s").unwrap_or(f64::NAN),
        peak_rss_mb: number_after(line, "peak RSS", "MB").unwrap_or(f64::NAN),
    })
}

/// Median over `repeats` runs of each field.
fn median_of(runs: &[Stats]) -> (f64, f64, f64) {
    let median = |f: &dyn Fn(&Stats) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (
        median(&|s| s.ttft_ms),
        median(&|s| s.tokens_per_s),
        median(&|s| s.peak_rss_mb),
    )
}

fn repeat(
    ember: &Path,
    model: &Path,
    ids: &str,
    new: usize,
    decoder: &str,
    repeats: usize,
) -> Result<(Vec<Stats>, (f64, f64, f64))> {
    let runs: Vec<Stats> = (0..repeats)
        .map(|_| generate(ember, model, ids, new, decoder))
        .collect::<Result<_>>()?;
    let medians = median_of(&runs);
    Ok((runs, medians))
}

fn reference(
    model: &Path,
    new: usize,
    prompt_len: usize,
    repeats: usize,
    out: &Path,
) -> Result<Option<Value>> {
    let Some(python) = python_with_torch() else {
        println!("xtask: no python3 with torch; skipping the PyTorch reference");
        return Ok(None);
    };
    run(Command::new(python)
        .arg(root().join("benches/reference/decode_torch.py"))
        .arg("--model")
        .arg(model)
        .args([
            "--new-tokens",
            &new.to_string(),
            "--prompt-len",
            &prompt_len.to_string(),
        ])
        .args(["--repeats", &repeats.to_string()])
        .arg("--out")
        .arg(out))?;
    Ok(Some(serde_json::from_str(&std::fs::read_to_string(out)?)?))
}

fn finish(summary: &mut Value, reference: &Option<Value>, ref_key: &str) {
    if let Some(r) = reference {
        let ref_tps = r[ref_key].as_f64().unwrap_or(f64::NAN);
        summary["ref_tokens_per_s"] = ref_tps.into();
        summary["ref_peak_rss_mb"] = r["peak_rss_mb"].clone();
        summary["ratio"] = (summary["tokens_per_s"].as_f64().unwrap_or(f64::NAN) / ref_tps).into();
    }
}

fn write(summaries: &[Value]) -> Result<()> {
    for summary in summaries {
        println!("{}", summary_line(summary));
        let name = summary["bench"].as_str().unwrap_or("decode");
        let path = root().join(format!("target/bench/{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(summary)?)?;
    }
    Ok(())
}

pub fn bench(data: &Path, steps: usize) -> Result<()> {
    let root = root();
    let ember = build_ember()?;
    let bench_dir = root.join("target/bench");
    std::fs::create_dir_all(&bench_dir)?;
    let repeats = 3;

    // stories15M shape, random weights.
    let stories = bench_dir.join("stories15m-hf");
    run(Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "ember-examples",
            "--example",
            "random_hf_model",
            "--",
            "stories15m",
        ])
        .arg(&stories))?;
    let new = 255;
    let (_, int8) = repeat(&ember, &stories, "1", new, "host-int8", repeats)?;
    let (_, f32_host) = repeat(&ember, &stories, "1", new, "host", repeats)?;
    let (_, burn) = repeat(&ember, &stories, "1", new, "burn", repeats)?;
    let prompt: Vec<String> = (0..256).map(|i| (i * 7 % 1000 + 1).to_string()).collect();
    let (_, prefill) = repeat(&ember, &stories, &prompt.join(","), 1, "host", repeats)?;
    let reference_stories = reference(
        &stories,
        new,
        256,
        repeats,
        &bench_dir.join("decode-stories15m-reference.json"),
    )?;
    let mut decode = json!({
        "bench": "decode-stories15m",
        "decoder": "host-int8",
        "new_tokens": new,
        "tokens_per_s": int8.1,
        "f32_tokens_per_s": f32_host.1,
        "burn_tokens_per_s": burn.1,
        "peak_rss_mb": int8.2,
    });
    finish(&mut decode, &reference_stories, "tokens_per_s");
    let mut prefill_summary = json!({
        "bench": "prefill-stories15m",
        "prompt_tokens": 256,
        "ttft_ms": prefill.0,
        "tokens_per_s": 256.0 / (prefill.0 / 1e3),
        "peak_rss_mb": prefill.2,
    });
    if let Some(r) = &reference_stories {
        prefill_summary["ref_ttft_ms"] = r["prefill_ms"].clone();
    }
    finish(
        &mut prefill_summary,
        &reference_stories,
        "prefill_tokens_per_s",
    );

    // The trained nanogpt-cpu model.
    let run_dir = bench_dir.join("nanogpt-cpu-run");
    if !run_dir.join("checkpoint/ember.json").exists() {
        if !data.exists() {
            write(&[decode, prefill_summary])?;
            bail!(
                "{}: no trained nanogpt-cpu run and no data to train one (pass --data FILE or run `cargo xtask bench` first)",
                run_dir.display()
            );
        }
        println!("xtask: training nanogpt-cpu for the decode benchmark");
        run(Command::new(&ember)
            .args(["train", "--preset", "nanogpt-cpu", "--quiet", "--data"])
            .arg(data)
            .arg("--out")
            .arg(&run_dir)
            .args(["--set", &format!("train.steps={steps}")]))?;
    }
    let hf = bench_dir.join("nanogpt-cpu-hf");
    run(Command::new(&ember)
        .arg("export")
        .arg("--model")
        .arg(&run_dir)
        .arg("--out")
        .arg(&hf))?;
    let new = 63;
    let (runs, host) = repeat(&ember, &run_dir, "1", new, "host", 5)?;
    let (_, burn) = repeat(&ember, &run_dir, "1", new, "burn", 5)?;
    let reference_nanogpt = reference(
        &hf,
        new,
        0,
        5,
        &bench_dir.join("decode-nanogpt-reference.json"),
    )?;
    let mut nanogpt = json!({
        "bench": "decode-nanogpt",
        "decoder": "host",
        "new_tokens": new,
        "tokens_per_s": host.1,
        "burn_tokens_per_s": burn.1,
        "peak_rss_mb": host.2,
    });
    finish(&mut nanogpt, &reference_nanogpt, "tokens_per_s");
    if let Some(r) = &reference_nanogpt {
        let ref_ids: Vec<String> = r["ids"]
            .as_array()
            .map(|a| a.iter().map(|v| v.to_string()).collect())
            .unwrap_or_default();
        nanogpt["ids_match"] = (ref_ids.join(",") == runs[0].ids).into();
    }
    write(&[decode, prefill_summary, nanogpt])
}
