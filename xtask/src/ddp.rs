//! `cargo xtask bench --suite ddp`: data-parallel training over MPI on loopback (2 ranks
//! on this machine), for nanoGPT's CPU shape and the gpt-wide shape (6 layers, d_model
//! 384, block 256, batch 8).
//!
//! Per shape, in one invocation: a single-process run, then `ember train --nproc 2` with
//! 25 MiB buckets and with one all-reduce per tensor (`train.ddp_bucket_mb = 0`). Each
//! prints the median `step_ms`, and the ranked runs the median `allreduce_ms` (the
//! gradient all-reduce on rank 0, flattening included, after the ranks have met at the
//! loss all-reduce, so waiting for a slower rank is not counted). The scaling efficiency
//! a step of the shape implies is `compute / (compute + all-reduce)`, compute being the
//! ranked step without its all-reduce; the measured throughput ratio (2 ranks of one
//! thread against one process of two) is printed beside it.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};
use serde_json::json;

use crate::{read_metrics, root, run, summary_line};

/// A shape: its name and the `--set`s over the `nanogpt-cpu` preset.
const SHAPES: [(&str, &[&str]); 2] = [
    ("nanogpt-cpu", &[]),
    (
        "gpt-wide",
        &[
            "model.d_model=384",
            "model.n_layers=6",
            "model.n_heads=6",
            "model.n_kv_heads=6",
            "model.d_ff=1536",
            "model.max_seq_len=256",
            "train.batch_size=8",
        ],
    ),
];

pub fn bench(data: &Path, steps: usize) -> Result<()> {
    let root = root();
    if !data.exists() {
        bail!(
            "{}: benchmark data not found (pass --data FILE)",
            data.display()
        );
    }
    if Command::new("mpirun").arg("--version").output().is_err() {
        bail!(
            "--suite ddp: needs mpirun on PATH (Debian: apt install openmpi-bin libopenmpi-dev libclang-dev)"
        );
    }
    run(Command::new(env!("CARGO")).current_dir(&root).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "ember-cli",
        "--features",
        "mpi",
    ]))?;
    let ember = root.join("target/release/ember");
    let mut rows = Vec::new();
    for (shape, sets) in SHAPES {
        let mut medians = Vec::new();
        for (label, nproc, bucket_mb) in [
            ("single", 1, 25.0),
            ("bucketed", 2, 25.0),
            ("per_tensor", 2, 0.0),
        ] {
            let out = root.join(format!("target/bench/ddp-{shape}-{label}"));
            let _ = std::fs::remove_dir_all(&out);
            let mut cmd = Command::new(&ember);
            cmd.args(["train", "--preset", "nanogpt-cpu", "--data"])
                .arg(data)
                .arg("--out")
                .arg(&out)
                .args(["--nproc", &nproc.to_string()]);
            let mut all_sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            all_sets.extend([
                format!("train.steps={steps}"),
                format!("train.eval_every={steps}"),
                "train.eval_batches=1".into(),
                "train.log_every=1".into(),
                format!("train.ddp_bucket_mb={bucket_mb}"),
            ]);
            for set in &all_sets {
                cmd.args(["--set", set]);
            }
            let output = cmd.output()?;
            if !output.status.success() {
                bail!(
                    "{shape} {label}: ember train failed\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let stdout = String::from_utf8_lossy(&output.stdout);
            let params: u64 = stdout
                .split("ember train: ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            // The first steps warm the allocator and the MPI connections.
            let metrics = read_metrics(&out.join("metrics.jsonl"))?;
            let skip = (metrics.len() / 5).max(1);
            let field =
                |name: &str| median(metrics.iter().skip(skip).filter_map(|m| m[name].as_f64()));
            medians.push((params, field("step_ms"), field("allreduce_ms")));
        }
        let (params, single_ms, _) = medians[0];
        let (_, bucketed_ms, bucketed_ar) = medians[1];
        let (_, per_tensor_ms, per_tensor_ar) = medians[2];
        let compute = bucketed_ms - bucketed_ar;
        let row = json!({
            "bench": "ddp",
            "shape": shape,
            "ranks": 2,
            "params": params,
            "grad_mb": params as f64 * 4.0 / (1024.0 * 1024.0),
            "step_ms_single": single_ms,
            "step_ms_bucketed": bucketed_ms,
            "allreduce_ms_bucketed": bucketed_ar,
            "step_ms_per_tensor": per_tensor_ms,
            "allreduce_ms_per_tensor": per_tensor_ar,
            "per_tensor_over_bucketed": per_tensor_ar / bucketed_ar,
            "implied_efficiency": compute / (compute + bucketed_ar),
            "throughput_2ranks_over_single": single_ms / bucketed_ms,
            "steps": steps,
        });
        println!("{}", summary_line(&row));
        rows.push(row);
    }
    let json_path = root.join("target/bench/ddp.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&rows)?)?;
    println!("xtask: wrote {}", json_path.display());
    Ok(())
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
