//! Causal attention over one long sequence on the Flex CPU backend, by one path, printing
//! the process's peak resident memory. `cargo xtask bench --suite attention-memory` runs
//! it once per path, each in a fresh process.
//!
//! ```text
//! cargo run --release -p ember-examples --example long_attention -- --path chunked --seq 4096
//! ```
//! Paths: `naive` (explicit `[seq, seq]` scores, the test reference), `fused-op` (burn's
//! fused attention op with a materialised mask, as sliding windows take at short lengths),
//! `chunked` (128 x 128 tiles, online softmax, skipped tiles), `kernel` (Ember's fused
//! causal kernel).

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use ember_ops::reference::explicit_flex_attention;
use ember_ops::{AttentionPath, FlexOptions, MaskMod, ScoreMod, flex_attention};

type B = Flex;

/// Peak resident set size of this process in MiB (`VmHWM`).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let path = arg("--path", "chunked");
    let seq: usize = match arg("--seq", "4096").parse() {
        Ok(s) if s > 0 => s,
        _ => {
            eprintln!("error: --seq must be a positive integer");
            std::process::exit(2);
        }
    };
    let (heads, kv_heads, head_dim) = (8, 2, 64);
    let device = Default::default();
    // The same inputs in every process, so the checksums of the paths agree.
    <B as burn::tensor::backend::Backend>::seed(&device, 42);
    let normal = Distribution::Normal(0.0, 1.0);
    let q = Tensor::<B, 4>::random([1, heads, seq, head_dim], normal, &device);
    let k = Tensor::<B, 4>::random([1, kv_heads, seq, head_dim], normal, &device);
    let v = Tensor::<B, 4>::random([1, kv_heads, seq, head_dim], normal, &device);
    let inputs_mb = peak_rss_mb();
    let started = Instant::now();
    let none = ScoreMod::none();
    let out = match path.as_str() {
        "naive" => explicit_flex_attention(q, k, v, &none, &MaskMod::Causal, 0.125),
        "fused-op" | "chunked" => {
            let options = FlexOptions {
                path: if path == "chunked" {
                    AttentionPath::Chunked
                } else {
                    AttentionPath::Fused
                },
                ..Default::default()
            };
            // A window as long as the sequence: the causal mask, but through the mask path.
            flex_attention(q, k, v, &none, &MaskMod::SlidingWindow(seq), &options)
        }
        "kernel" => ember_ops::fused::attention(q, k, v, true),
        other => {
            eprintln!("error: --path {other}: unknown path (naive, fused-op, chunked, kernel)");
            std::process::exit(2);
        }
    };
    let checksum: f32 = out.sum().into_scalar();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    println!(
        "path={path} seq={seq} heads={heads} kv_heads={kv_heads} head_dim={head_dim} ms={ms:.1} inputs_rss_mb={inputs_mb:.1} peak_rss_mb={:.1} checksum={checksum:.4}",
        peak_rss_mb()
    );
}
