//! `cargo xtask bench --suite gpt-wide`: nanoGPT's GPU shape (6 layers, 6 heads,
//! d_model 384, block 256) at batch 8 for 50 steps, where matrix multiplies dominate;
//! Ember against the PyTorch reference (`benches/reference/nanogpt_cpu.py` with the same
//! shape), and the GFLOP/s each reaches.
//!
//! FLOPs per step follow nanoGPT's `estimate_mfu`: `6 N + 12 L H Q T` per token, with `N`
//! the parameters without the position table, `L` layers, `H` heads, `Q` head size and
//! `T` the block.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use serde_json::json;

use crate::{
    build_ember, last_batch_shards, median_step_ms, python_with_torch, read_metrics, root, run,
    run_peak_rss_mb, summary_line,
};

const D: usize = 384;
const LAYERS: usize = 6;
const HEADS: usize = 6;
const BLOCK: usize = 256;
const BATCH: usize = 8;

/// `precision`: the `train.matmul_precision` of the Ember run (`f32` or `bf16`); the
/// reference is always PyTorch fp32. `shards`: the run's `train.batch_shards` (0 = auto).
pub fn bench(data: &Path, steps: usize, precision: &str, shards: usize) -> Result<()> {
    let root = root();
    let ember = build_ember()?;
    let out = root.join("target/bench/gpt-wide-run");
    let _ = std::fs::remove_dir_all(&out);
    let sets = [
        format!("model.d_model={D}"),
        format!("model.n_layers={LAYERS}"),
        format!("model.n_heads={HEADS}"),
        format!("model.n_kv_heads={HEADS}"),
        format!("model.d_ff={}", 4 * D),
        format!("model.max_seq_len={BLOCK}"),
        format!("train.batch_size={BATCH}"),
        format!("train.steps={steps}"),
        format!("train.eval_every={steps}"),
        format!("train.matmul_precision={precision}"),
        format!("train.batch_shards={shards}"),
    ];
    let mut cmd = Command::new(&ember);
    cmd.args(["train", "--preset", "nanogpt-cpu", "--quiet", "--data"])
        .arg(data)
        .arg("--out")
        .arg(&out);
    for set in &sets {
        cmd.args(["--set", set]);
    }
    let peak_rss_mb = run_peak_rss_mb(&mut cmd)?;
    let metrics = read_metrics(&out.join("metrics.jsonl"))?;
    let ms = median_step_ms(&metrics);
    let tokens = (BATCH * BLOCK) as f64;
    // 65 characters in Tiny Shakespeare; any corpus's vocabulary barely moves N here.
    let vocab = 65.0;
    let per_layer = 12.0 * (D * D) as f64;
    let n = LAYERS as f64 * per_layer + vocab * D as f64;
    let flops_per_token = 6.0 * n + 12.0 * (LAYERS * HEADS * (D / HEADS) * BLOCK) as f64;
    let flops_per_step = flops_per_token * tokens;
    let gflops = |ms: f64| flops_per_step / (ms / 1e3) / 1e9;
    let mut summary = json!({
        "bench": "gpt-wide",
        "matmul_precision": precision,
        "batch_shards": last_batch_shards(&metrics),
        "steps": steps,
        "ms_per_step": ms,
        "tokens_per_s": tokens / (ms / 1e3),
        "gflops": gflops(ms),
        "gflop_per_step": flops_per_step / 1e9,
        "peak_rss_mb": peak_rss_mb,
    });
    if let Some(python) = python_with_torch() {
        let ref_out = root.join("target/bench/gpt-wide-reference.json");
        run(Command::new(&python)
            .arg(root.join("benches/reference/nanogpt_cpu.py"))
            .arg("--data")
            .arg(data)
            .args([
                "--steps",
                &steps.to_string(),
                "--eval-every",
                &steps.to_string(),
            ])
            .args(["--d", &D.to_string(), "--layers", &LAYERS.to_string()])
            .args(["--heads", &HEADS.to_string(), "--block", &BLOCK.to_string()])
            .args(["--batch", &BATCH.to_string()])
            .arg("--out")
            .arg(&ref_out))?;
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&ref_out)?)?;
        let ref_ms = reference["ms_per_step"].as_f64().unwrap_or(f64::NAN);
        summary["ref_ms_per_step"] = ref_ms.into();
        summary["ref_tokens_per_s"] = (tokens / (ref_ms / 1e3)).into();
        summary["ref_gflops"] = gflops(ref_ms).into();
        summary["ratio"] = (ref_ms / ms).into();
    }
    println!("{}", summary_line(&summary));
    let path = root.join("target/bench/gpt-wide.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    println!("xtask: wrote {}", path.display());
    Ok(())
}
