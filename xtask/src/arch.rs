//! `cargo xtask bench --suite arch`: architecture variants trained side by side on Tiny
//! Shakespeare at nanoGPT's CPU size and step budget; a table and a PNG of the
//! validation curves.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::{build_ember, median_step_ms, read_metrics, root, run, summary_line};

/// `(name, what it is, preset, overrides)`.
const VARIANTS: &[(&str, &str, &str, &[&str])] = &[
    (
        "gpt2",
        "GPT-2 block: learned positions, LayerNorm, GELU",
        "gpt2",
        &[],
    ),
    (
        "llama",
        "Llama block: RoPE, RMSNorm, SwiGLU, MHA",
        "llama",
        &[],
    ),
    (
        "gqa-4to2",
        "Llama, GQA 4 query heads over 2 K/V heads",
        "llama",
        &["model.n_kv_heads=2"],
    ),
    (
        "gqa-4to1",
        "Llama, MQA 4 query heads over 1 K/V head",
        "llama",
        &["model.n_kv_heads=1"],
    ),
    (
        "alibi",
        "Llama with ALiBi instead of RoPE",
        "llama",
        &["model.position=\"alibi\""],
    ),
    (
        "sliding-32",
        "Llama with a 32-token sliding window",
        "llama",
        &["model.sliding_window=32"],
    ),
    (
        "moe-4x2",
        "Mixtral: GQA 4→2, MoE 4 SwiGLU experts top-2",
        "mixtral",
        &[],
    ),
];

struct Outcome {
    name: &'static str,
    about: &'static str,
    val_loss: Option<f64>,
    ms_per_step: f64,
    tokens_per_s: f64,
    curve: Vec<(f64, f64)>,
    expert_load: Option<Vec<f64>>,
}

pub fn bench_arch(data: &Path, steps: usize, only: Option<&str>, write_docs: bool) -> Result<()> {
    let root = root();
    let ember = build_ember()?;
    let out_root = root.join("target/bench/arch");
    let mut outcomes = Vec::new();
    for &(name, about, preset, overrides) in VARIANTS {
        if only.is_some_and(|o| !o.split(',').any(|n| n == name)) {
            continue;
        }
        println!("xtask: arch variant {name} ({about})");
        let out = out_root.join(name);
        let _ = std::fs::remove_dir_all(&out);
        let mut cmd = Command::new(&ember);
        cmd.args(["train", "--preset", preset, "--quiet", "--data"])
            .arg(data)
            .arg("--out")
            .arg(&out)
            .arg("--set")
            .arg(format!("train.steps={steps}"))
            .arg("--set")
            .arg(format!("optim.decay_steps={steps}"));
        for o in overrides {
            cmd.arg("--set").arg(o);
        }
        run(&mut cmd)?;
        let metrics = read_metrics(&out.join("metrics.jsonl"))?;
        let ms_per_step = median_step_ms(&metrics);
        let curve: Vec<(f64, f64)> = metrics
            .iter()
            .filter_map(|m| Some((m["step"].as_f64()?, m["val_loss"].as_f64()?)))
            .collect();
        // Expert shares over the whole run, from the per-record shares weighted equally.
        let loads: Vec<Vec<f64>> = metrics
            .iter()
            .filter_map(|m| {
                m["expert_load"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            })
            .collect();
        let expert_load = (!loads.is_empty()).then(|| {
            let n = loads[0].len();
            (0..n)
                .map(|e| loads.iter().map(|l| l[e]).sum::<f64>() / loads.len() as f64)
                .collect()
        });
        let outcome = Outcome {
            name,
            about,
            val_loss: curve.last().map(|c| c.1),
            ms_per_step,
            tokens_per_s: 12.0 * 64.0 / (ms_per_step / 1e3),
            curve,
            expert_load,
        };
        let mut summary = serde_json::json!({
            "bench": format!("arch-{name}"),
            "steps": steps,
            "val_loss": outcome.val_loss,
            "ms_per_step": outcome.ms_per_step,
            "tokens_per_s": outcome.tokens_per_s,
        });
        if let Some(load) = &outcome.expert_load {
            summary["expert_load"] = load
                .iter()
                .map(|s| format!("{:.3}", s))
                .collect::<Vec<_>>()
                .join("/")
                .into();
        }
        println!("{}", summary_line(&summary));
        outcomes.push(outcome);
    }
    let table = markdown_table(&outcomes, steps);
    println!("{table}");
    let json: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "name": o.name, "about": o.about, "val_loss": o.val_loss,
                "ms_per_step": o.ms_per_step, "tokens_per_s": o.tokens_per_s,
                "val_curve": o.curve, "expert_load": o.expert_load,
            })
        })
        .collect();
    let bench_dir = root.join("target/bench");
    std::fs::create_dir_all(&bench_dir)?;
    std::fs::write(
        bench_dir.join("arch.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(bench_dir.join("arch.md"), &table)?;
    let png = bench_dir.join("arch-val-loss.png");
    plot_arch_curves(&outcomes, &png)?;
    println!("xtask: wrote target/bench/arch.json, arch.md, arch-val-loss.png");
    if write_docs {
        let docs = root.join("docs");
        copy_atomic(
            &bench_dir.join("arch.md"),
            &docs.join("arch-bench-table.md"),
        )?;
        copy_atomic(&png, &docs.join("arch-val-loss.png"))?;
        println!("xtask: copied the table and plot into docs/");
    }
    let best = outcomes
        .iter()
        .filter_map(|o| o.val_loss.map(|v| (v, o.name)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    println!(
        "{}",
        summary_line(&serde_json::json!({
            "bench": "arch",
            "variants": outcomes.len(),
            "steps": steps,
            "best": best.map(|b| b.1),
            "best_val_loss": best.map(|b| b.0),
        }))
    );
    Ok(())
}

fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("writing {}", to.display()))?;
    Ok(())
}

fn markdown_table(outcomes: &[Outcome], steps: usize) -> String {
    let mut t = format!(
        "| variant | what | val loss @ {steps} | ms/step | tokens/s | expert load |\n|---|---|---|---|---|---|\n"
    );
    for o in outcomes {
        let load = o.expert_load.as_ref().map_or("—".to_string(), |l| {
            l.iter()
                .map(|s| format!("{:.0}%", s * 100.0))
                .collect::<Vec<_>>()
                .join(" / ")
        });
        t += &format!(
            "| {} | {} | {} | {:.1} | {:.0} | {} |\n",
            o.name,
            o.about,
            o.val_loss.map_or("—".into(), |v| format!("{v:.4}")),
            o.ms_per_step,
            o.tokens_per_s,
            load
        );
    }
    t
}

fn plot_arch_curves(outcomes: &[Outcome], path: &Path) -> Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = outcomes
        .iter()
        .map(|o| (o.name.to_string(), o.curve.clone()))
        .collect();
    plot_curves(
        &series,
        "Validation loss, Tiny Shakespeare (char), nanoGPT CPU size",
        "val loss",
        path,
    )
}

/// Line plot of named `(step, value)` series, one colour each, to a PNG at `path`
/// (`ember-plot`'s chart, with its embedded font).
pub fn plot_curves(
    series: &[(String, Vec<(f64, f64)>)],
    caption: &str,
    y_desc: &str,
    path: &Path,
) -> Result<()> {
    let series: Vec<ember_plot::Series> = series
        .iter()
        .enumerate()
        .map(|(i, (name, points))| ember_plot::Series {
            name: name.clone(),
            points: points.clone(),
            dashed: false,
            color: i,
        })
        .collect();
    let chart = ember_plot::Chart {
        caption,
        x_desc: "step",
        y_desc,
        log_y: false,
        series: &series,
    };
    ember_plot::write_chart(path, &chart, (1000, 640))?;
    Ok(())
}
