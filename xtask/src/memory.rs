//! `cargo xtask bench --suite memory`: peak memory and time per step of training with each
//! activation-checkpointing setting, on nanoGPT's GPU shape (6 layers, d 384, block 256,
//! batch 16) and a 24-layer variant, each run in a fresh process; the largest batch that
//! fits a memory budget with and without checkpointing; then each `train.precision`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::{build_ember, median_step_ms, read_metrics, root, run_peak_rss_mb, summary_line};

/// The budget of the largest-batch search, MiB.
const BUDGET_MB: f64 = 2048.0;

/// nanoGPT's `train_shakespeare_char` GPU model, without dropout.
fn shape_sets(n_layers: usize, batch: usize) -> Vec<String> {
    [
        format!("model.n_layers={n_layers}"),
        "model.d_model=384".into(),
        "model.n_heads=6".into(),
        "model.n_kv_heads=6".into(),
        "model.d_ff=1536".into(),
        "model.max_seq_len=256".into(),
        "model.dropout=0.0".into(),
        format!("train.batch_size={batch}"),
        // One shard: two running at once make the peak depend on their timing.
        "train.batch_shards=1".into(),
        "train.eval_every=0".into(),
        "train.log_every=1".into(),
    ]
    .into()
}

struct Measured {
    peak_rss_mb: f64,
    ms_per_step: f64,
}

/// One training run of `steps` steps from scratch; its peak RSS and median step time.
fn measure(
    ember: &Path,
    data: &Path,
    out: &Path,
    sets: &[String],
    steps: usize,
) -> Result<Measured> {
    let _ = std::fs::remove_dir_all(out);
    let mut cmd = Command::new(ember);
    cmd.args(["train", "--preset", "nanogpt-cpu", "--quiet", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--set", &format!("train.steps={steps}")]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let peak_rss_mb = run_peak_rss_mb(&mut cmd)?;
    let metrics = read_metrics(&out.join("metrics.jsonl"))?;
    let ms_per_step = median_step_ms(&metrics);
    let _ = std::fs::remove_dir_all(out);
    Ok(Measured {
        peak_rss_mb,
        ms_per_step,
    })
}

fn with(mut sets: Vec<String>, extra: &[String]) -> Vec<String> {
    sets.extend(extra.iter().cloned());
    sets
}

pub fn bench(data: &Path, steps: usize) -> Result<()> {
    if !data.exists() {
        bail!(
            "{}: benchmark data not found (pass --data FILE)",
            data.display()
        );
    }
    let root = root();
    let ember = build_ember()?;
    let dir = root.join("target/bench/memory");
    std::fs::create_dir_all(&dir)?;
    let out: PathBuf = dir.join("run");
    let settings = ["none", "blocks", "every:2", "selective"];
    let mut table = Vec::new();
    let mut checkpointing = json!({ "bench": "memory-checkpointing", "steps": steps });
    for (label, n_layers) in [("6l", 6), ("24l", 24)] {
        for setting in settings {
            let sets = with(
                shape_sets(n_layers, 16),
                &[format!("train.activation_checkpointing={setting}")],
            );
            let m = measure(&ember, data, &out, &sets, steps)?;
            println!(
                "xtask: {n_layers} layers, batch 16, {setting}: peak RSS {:.0} MiB, {:.0} ms/step",
                m.peak_rss_mb, m.ms_per_step
            );
            table.push(json!({
                "n_layers": n_layers, "batch": 16, "activation_checkpointing": setting,
                "precision": "f32", "peak_rss_mb": m.peak_rss_mb, "ms_per_step": m.ms_per_step,
            }));
            let key = setting.replace(':', "");
            if label == "6l" {
                checkpointing[format!("{key}_peak_rss_mb")] = m.peak_rss_mb.into();
                checkpointing[format!("{key}_ms_per_step")] = m.ms_per_step.into();
            } else {
                checkpointing[format!("{label}_{key}_peak_rss_mb")] = m.peak_rss_mb.into();
                checkpointing[format!("{label}_{key}_ms_per_step")] = m.ms_per_step.into();
            }
        }
    }
    let ratio = |summary: &Value, a: &str, b: &str| -> Value {
        (summary[a].as_f64().unwrap_or(f64::NAN) / summary[b].as_f64().unwrap_or(f64::NAN)).into()
    };
    for (key, a, b) in [
        ("rss_ratio", "blocks_peak_rss_mb", "none_peak_rss_mb"),
        ("time_ratio", "blocks_ms_per_step", "none_ms_per_step"),
        (
            "24l_rss_ratio",
            "24l_blocks_peak_rss_mb",
            "24l_none_peak_rss_mb",
        ),
        (
            "24l_time_ratio",
            "24l_blocks_ms_per_step",
            "24l_none_ms_per_step",
        ),
        (
            "selective_rss_ratio",
            "selective_peak_rss_mb",
            "none_peak_rss_mb",
        ),
        (
            "selective_time_ratio",
            "selective_ms_per_step",
            "none_ms_per_step",
        ),
    ] {
        checkpointing[key] = ratio(&checkpointing, a, b);
    }

    // The largest batch within the budget: peak RSS is affine in the batch, so two sizes
    // give the line; the predicted batch is then run for one step and stepped down until
    // it fits.
    for setting in ["none", "blocks"] {
        let rss_at = |batch: usize, steps: usize| -> Result<f64> {
            let sets = with(
                shape_sets(6, batch),
                &[format!("train.activation_checkpointing={setting}")],
            );
            Ok(measure(&ember, data, &out, &sets, steps)?.peak_rss_mb)
        };
        let (small, large) = (rss_at(4, 1)?, rss_at(16, 1)?);
        let per_row = (large - small) / 12.0;
        let mut batch = ((BUDGET_MB - small) / per_row + 4.0).floor().max(1.0) as usize;
        let mut fitted = None;
        for _ in 0..4 {
            let rss = rss_at(batch, 1)?;
            println!(
                "xtask: {setting}: batch {batch} peaks at {rss:.0} MiB (budget {BUDGET_MB:.0})"
            );
            if rss <= BUDGET_MB {
                fitted = Some((batch, rss));
                break;
            }
            batch = (batch as f64 * BUDGET_MB / rss * 0.97).floor().max(1.0) as usize;
        }
        let key = setting.replace(':', "");
        checkpointing[format!("{key}_max_batch_2gib")] = fitted.map(|(b, _)| b).into();
        checkpointing[format!("{key}_max_batch_rss_mb")] = fitted.map(|(_, r)| r).into();
    }

    // Mixed precision: peak RSS at batch 16, and the activation memory per row (the
    // slope of peak RSS between batches 4 and 16, which leaves out weights, gradients
    // and optimizer state).
    let mut precision = json!({ "bench": "memory-precision", "steps": steps, "n_layers": 6 });
    for mixed in ["f32", "bf16-mixed", "f16-mixed"] {
        let sets = |batch| with(shape_sets(6, batch), &[format!("train.precision={mixed}")]);
        let m = measure(&ember, data, &out, &sets(16), steps)?;
        // One step at each size: the peaks then differ by the activations alone.
        let small = measure(&ember, data, &out, &sets(4), 1)?.peak_rss_mb;
        let large = measure(&ember, data, &out, &sets(16), 1)?.peak_rss_mb;
        let per_row = (large - small) / 12.0;
        println!(
            "xtask: 6 layers, batch 16, {mixed}: peak RSS {:.0} MiB, {:.0} ms/step, {per_row:.1} MiB of activations per row",
            m.peak_rss_mb, m.ms_per_step
        );
        table.push(json!({
            "n_layers": 6, "batch": 16, "activation_checkpointing": "none",
            "precision": mixed, "peak_rss_mb": m.peak_rss_mb, "ms_per_step": m.ms_per_step,
            "activation_mb_per_row": per_row,
        }));
        let key = mixed.trim_end_matches("-mixed");
        precision[format!("{key}_peak_rss_mb")] = m.peak_rss_mb.into();
        precision[format!("{key}_ms_per_step")] = m.ms_per_step.into();
        precision[format!("{key}_act_mb_per_row")] = per_row.into();
    }
    // The 24-layer model: one layer's transient buffers (the attention backward's f32
    // copies) weigh 1/24 of its per-row slope, so the slope is closer to what the
    // backward pass keeps.
    for mixed in ["f32", "bf16-mixed"] {
        let sets = |batch| with(shape_sets(24, batch), &[format!("train.precision={mixed}")]);
        let small = measure(&ember, data, &out, &sets(4), 1)?.peak_rss_mb;
        let large = measure(&ember, data, &out, &sets(16), 1)?.peak_rss_mb;
        let per_row = (large - small) / 12.0;
        println!("xtask: 24 layers, {mixed}: {per_row:.1} MiB of activations per row");
        let key = mixed.trim_end_matches("-mixed");
        precision[format!("24l_{key}_act_mb_per_row")] = per_row.into();
    }
    for (key, a, b) in [
        (
            "24l_act_ratio",
            "24l_bf16_act_mb_per_row",
            "24l_f32_act_mb_per_row",
        ),
        ("rss_ratio", "bf16_peak_rss_mb", "f32_peak_rss_mb"),
        ("act_ratio", "bf16_act_mb_per_row", "f32_act_mb_per_row"),
        ("time_ratio", "bf16_ms_per_step", "f32_ms_per_step"),
        ("f16_rss_ratio", "f16_peak_rss_mb", "f32_peak_rss_mb"),
        ("f16_act_ratio", "f16_act_mb_per_row", "f32_act_mb_per_row"),
        ("f16_time_ratio", "f16_ms_per_step", "f32_ms_per_step"),
    ] {
        precision[key] = ratio(&precision, a, b);
    }

    let dir = root.join("target/bench");
    for (summary, name) in [
        (&checkpointing, "memory-checkpointing"),
        (&precision, "memory-precision"),
    ] {
        println!("{}", summary_line(summary));
        let mut full = summary.clone();
        full["table"] = Value::Array(table.clone());
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&full)?)?;
        println!("xtask: wrote {}", path.display());
    }
    Ok(())
}
