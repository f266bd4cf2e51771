//! `cargo xtask bench --suite attention-memory`: peak memory of causal attention over one
//! long sequence by each path, each measured in a fresh process.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{root, summary_line};

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

pub fn bench(seq: usize) -> Result<()> {
    let root = root();
    crate::run(Command::new(env!("CARGO")).current_dir(&root).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "ember-examples",
        "--example",
        "long_attention",
    ]))?;
    let exe = root.join("target/release/examples/long_attention");
    let mut summary = serde_json::json!({ "bench": "attention-memory", "seq": seq });
    for path in ["naive", "fused-op", "chunked", "kernel"] {
        let out = Command::new(&exe)
            .args(["--path", path, "--seq", &seq.to_string()])
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "long_attention --path {path} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("{line}");
        let key = path.replace('-', "_");
        summary[format!("{key}_peak_mb")] = field(&line, "peak_rss_mb").into();
        summary[format!("{key}_ms")] = field(&line, "ms").into();
        if path == "naive" {
            summary["inputs_mb"] = field(&line, "inputs_rss_mb").into();
        }
    }
    let ratio = summary["naive_peak_mb"].as_f64().unwrap_or(f64::NAN)
        / summary["chunked_peak_mb"].as_f64().unwrap_or(f64::NAN);
    summary["ratio"] = ratio.into();
    println!("{}", summary_line(&summary));
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("attention-memory.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(())
}
