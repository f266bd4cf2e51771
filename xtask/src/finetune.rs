//! `cargo xtask bench --suite finetune`: LoRA r=16 on every linear layer of a 110M-parameter
//! Llama (12 layers, d 768, 12 heads, vocabulary 32000), rows of 256, batch 4, against
//! `transformers` + `peft` on PyTorch (`benches/reference/finetune_peft.py`) from the same
//! base weights, the same initial adapter (Ember's, written by a zero-step run and loaded
//! by `peft`) and the same rows in the same order.
//!
//! Reported: tokens/s of both (f32 matmuls, and Ember with bf16 matmuls), the largest
//! relative difference of the per-step losses, and peak RSS of Ember's LoRA run, its
//! QLoRA run (NF4 base, up to 5 steps), Ember's full fine-tune of the same model (every
//! weight training, 2 steps) and `peft`'s.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    build_ember, median_step_ms, python_with_torch, read_metrics, root, run, run_peak_rss_mb,
    summary_line,
};

const BATCH: usize = 4;
const SEQ: usize = 256;
const VOCAB: u64 = 32000;
const LR: &str = "2e-4";

/// `rows` lines of `{"input_ids": [...]}`, SEQ + 1 ids each, from a fixed generator.
fn write_rows(path: &Path, rows: usize) -> Result<()> {
    let mut state = 0x5eed_f17e_u64;
    let mut next = || {
        // SplitMix64.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % VOCAB
    };
    let mut text = String::new();
    for _ in 0..rows {
        let ids: Vec<u64> = (0..=SEQ).map(|_| next()).collect();
        text.push_str(&json!({ "input_ids": ids }).to_string());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The settings both Ember runs share (`--set` pairs).
fn settings(steps: usize, precision: &str) -> Vec<String> {
    [
        "peft.target_modules=[\"all-linear\"]".to_string(),
        "peft.r=16".into(),
        "peft.lora_alpha=32.0".into(),
        format!("data.seq_len={SEQ}"),
        "data.pack=false".into(),
        "data.shuffle=false".into(),
        "data.val_fraction=0.0".into(),
        format!("train.batch_size={BATCH}"),
        format!("train.steps={steps}"),
        "train.eval_every=0".into(),
        "train.log_every=1".into(),
        "train.checkpoint_every=0".into(),
        format!("train.matmul_precision=\"{precision}\""),
        format!("optim.lr={LR}"),
        "optim.schedule=\"constant\"".into(),
        "optim.warmup_steps=0".into(),
        "optim.weight_decay=0.0".into(),
        "optim.grad_clip=1.0".into(),
    ]
    .to_vec()
}

fn finetune(ember: &Path, base: &Path, rows: &Path, out: &Path, sets: &[String]) -> Command {
    let mut cmd = Command::new(ember);
    cmd.args(["finetune", "--quiet", "--force", "--model"])
        .arg(base)
        .arg("--data")
        .arg(rows)
        .arg("--out")
        .arg(out);
    for set in sets {
        cmd.arg("--set").arg(set);
    }
    cmd
}

/// Per-step training losses of an Ember run.
fn losses(metrics: &[Value]) -> Vec<f64> {
    metrics
        .iter()
        .filter_map(|m| m["train_loss"].as_f64())
        .collect()
}

/// The largest `|a - b| / |b|` over the steps both have.
fn max_relative(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
        .fold(0.0, f64::max)
}

pub fn bench(steps: usize) -> Result<()> {
    let root = root();
    let ember = build_ember()?;
    let dir = root.join("target/bench/finetune");
    std::fs::create_dir_all(&dir)?;
    let base = dir.join("llama110m-hf");
    if !base.join("model.safetensors").exists() {
        run(Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "run",
                "--release",
                "-q",
                "-p",
                "ember-examples",
                "--example",
                "random_hf_model",
                "--",
                "llama110m",
            ])
            .arg(&base))?;
    }
    let rows = dir.join("rows.jsonl");
    write_rows(&rows, steps * BATCH)?;

    // The initial adapter both sides start from: a zero-step run's checkpoint.
    let init = dir.join("init");
    run(&mut finetune(
        &ember,
        &base,
        &rows,
        &init,
        &settings(0, "f32"),
    ))?;
    let mut summary =
        json!({ "bench": "finetune-lora", "steps": steps, "batch": BATCH, "seq": SEQ });
    let ember_run = |precision: &str| -> Result<(f64, Vec<f64>, f64)> {
        let out = dir.join(format!("lora-{precision}"));
        let mut cmd = finetune(&ember, &base, &rows, &out, &settings(steps, precision));
        cmd.arg("--resume").arg(&init);
        let rss = run_peak_rss_mb(&mut cmd)?;
        let metrics = read_metrics(&out.join("metrics.jsonl"))?;
        let tokens_per_s = (BATCH * SEQ) as f64 / (median_step_ms(&metrics) / 1e3);
        Ok((tokens_per_s, losses(&metrics), rss))
    };
    let (tps, f32_losses, rss) = ember_run("f32")?;
    summary["tokens_per_s"] = tps.into();
    summary["peak_rss_mb"] = rss.into();
    let (bf16_tps, bf16_losses, _) = ember_run("bf16")?;
    summary["bf16_tokens_per_s"] = bf16_tps.into();

    // QLoRA: the same adapter on the base held in NF4.
    let qlora = dir.join("qlora");
    let mut cmd = finetune(&ember, &base, &rows, &qlora, &settings(steps.min(5), "f32"));
    cmd.args(["--method", "qlora"]);
    let qlora_rss = run_peak_rss_mb(&mut cmd)?;
    let metrics = read_metrics(&qlora.join("metrics.jsonl"))?;
    summary["qlora_tokens_per_s"] =
        ((BATCH * SEQ) as f64 / (median_step_ms(&metrics) / 1e3)).into();
    summary["qlora_peak_rss_mb"] = qlora_rss.into();
    summary["qlora_rss_vs_lora"] = (qlora_rss / rss).into();

    // Ember's full fine-tune of the same model: every weight and its AdamW state.
    let full = dir.join("full");
    let mut full_sets = settings(2, "f32");
    full_sets.retain(|s| !s.starts_with("peft."));
    let mut cmd = finetune(&ember, &base, &rows, &full, &full_sets);
    cmd.args(["--method", "full"]);
    let full_rss = run_peak_rss_mb(&mut cmd)?;
    summary["full_peak_rss_mb"] = full_rss.into();
    summary["rss_vs_full"] = (rss / full_rss).into();

    if let Some(python) = python_with_torch() {
        let out = dir.join("reference.json");
        println!("xtask: transformers + peft reference with {python}");
        run(Command::new(&python)
            .arg(root.join("benches/reference/finetune_peft.py"))
            .arg("--model")
            .arg(&base)
            .arg("--adapter")
            .arg(init.join("checkpoint"))
            .arg("--data")
            .arg(&rows)
            .args(["--steps", &steps.to_string(), "--batch", &BATCH.to_string()])
            .args(["--lr", LR, "--grad-clip", "1.0", "--weight-decay", "0.0"])
            .arg("--out")
            .arg(&out))
        .context("the peft reference (needs transformers and peft)")?;
        let reference: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
        let ref_losses: Vec<f64> = reference["losses"]
            .as_array()
            .map(|l| l.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        if ref_losses.len() != f32_losses.len() {
            bail!(
                "the reference logged {} losses, Ember {}",
                ref_losses.len(),
                f32_losses.len()
            );
        }
        let ref_tps = reference["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        summary["ref_tokens_per_s"] = ref_tps.into();
        summary["ratio"] = (tps / ref_tps).into();
        summary["bf16_ratio"] = (bf16_tps / ref_tps).into();
        summary["loss_max_rel_diff"] = max_relative(&f32_losses, &ref_losses).into();
        summary["bf16_loss_max_rel_diff"] = max_relative(&bf16_losses, &ref_losses).into();
        summary["ref_peak_rss_mb"] = reference["peak_rss_mb"].clone();
        if let Some(ref_rss) = reference["peak_rss_mb"].as_f64() {
            summary["rss_vs_ref"] = (rss / ref_rss).into();
        }
        summary["first_loss"] = f32_losses.first().copied().into();
        summary["ref_first_loss"] = ref_losses.first().copied().into();
        summary["last_loss"] = f32_losses.last().copied().into();
        summary["ref_last_loss"] = ref_losses.last().copied().into();
        summary["ref_trainable"] = reference["trainable_params"].clone();
        summary["ref_torch"] = reference["torch_version"].clone();
        summary["ref_peft"] = reference["peft_version"].clone();
    } else {
        println!(
            "xtask: no python3 with torch found (tried $EMBER_PYTHON, python3, /usr/bin/python3); skipping the peft reference"
        );
    }
    println!("{}", summary_line(&summary));
    let json_path = root.join("target/bench/finetune.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&summary)?)?;
    println!("xtask: wrote {}", json_path.display());
    Ok(())
}
