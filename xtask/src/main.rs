//! `cargo xtask train | bench | test`: Ember's project tasks.
//!
//! xtask builds and runs the `ember` binary (release profile) with the backend features
//! this xtask was built with (`flex` when none), so `cargo xtask` needs no arguments.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

mod arch;
mod attention_memory;
mod ddp;
mod decode;
mod finetune;
mod gpt_wide;
mod memory;
mod micro;
mod recipes;
mod serve;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("train") => train(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("test") => test(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <train|bench|test> [-- ARGS for `ember train`]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Backend features forwarded to `ember-cli`.
fn features() -> String {
    let mut f = Vec::new();
    for (on, name) in [
        (cfg!(feature = "flex"), "flex"),
        (cfg!(feature = "wgpu"), "wgpu"),
        (cfg!(feature = "cuda"), "cuda"),
    ] {
        if on {
            f.push(name);
        }
    }
    if f.is_empty() {
        f.push("flex");
    }
    f.join(",")
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Builds `ember` and returns its path.
fn build_ember() -> Result<PathBuf> {
    run(Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "ember-cli",
            "--no-default-features",
            "--features",
        ])
        .arg(features()))?;
    Ok(root().join("target/release/ember"))
}

/// Gathers the embedded default corpus: the repository's own docs and Rust sources.
fn default_corpus() -> Result<PathBuf> {
    let root = root();
    let mut files = vec![root.join("README.md")];
    let mut stack = vec![
        root.join("docs"),
        root.join("crates"),
        root.join("examples"),
        root.join("xtask/src"),
    ];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut text = String::new();
    for file in files.iter().filter(|f| f.exists()) {
        text.push_str(
            &std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?,
        );
        text.push('\n');
    }
    let out = root.join("target/xtask/default-corpus.txt");
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(&out, text)?;
    Ok(out)
}

fn train(extra: &[String]) -> Result<()> {
    let ember = build_ember()?;
    let extra: Vec<&String> = extra.iter().filter(|a| *a != "--").collect();
    let out = root().join("runs/tiny");
    let has = |flag: &str| extra.iter().any(|a| *a == flag);
    let mut cmd = Command::new(&ember);
    cmd.arg("train");
    if !has("--data") {
        let corpus = default_corpus()?;
        println!(
            "xtask: training on the embedded default corpus ({})",
            corpus.display()
        );
        cmd.arg("--data").arg(corpus);
    }
    if !has("--preset") && !has("--config") {
        cmd.args(["--preset", "tiny"]);
    }
    if !has("--out") {
        // runs/tiny is xtask's own: each `cargo xtask train` starts it over (or continues
        // it with `-- --resume runs/tiny`).
        cmd.arg("--out").arg(&out);
        if !has("--resume") {
            cmd.arg("--force");
        }
    }
    cmd.args(&extra);
    run(&mut cmd)?;
    let out = extra
        .iter()
        .position(|a| *a == "--out")
        .and_then(|i| extra.get(i + 1))
        .map_or(out, |o| PathBuf::from(o.as_str()));
    println!("\nxtask: a sample from the trained model:\n");
    run(Command::new(&ember)
        .args(["generate", "--model"])
        .arg(&out)
        .args(["--max-new-tokens", "300"]))?;
    println!("\ncheckpoint: {}", out.join("checkpoint").display());
    println!(
        "sample again: target/release/ember generate --model {} --prompt \"fn main\" --max-new-tokens 300",
        out.display()
    );
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    let root = root();
    let cargo = env!("CARGO");
    // One feature set for everything built here, so that no crate is compiled twice:
    // what the environment asks for on top of the defaults.
    let mut features = Vec::new();
    if std::env::var_os("EMBER_TEST_MPI").is_some() {
        // The data-parallel tests over `mpirun` (ember-cli's `data_parallel`).
        features.push("ember-cli/mpi");
    }
    if std::env::var_os("EMBER_TEST_WGPU").is_some() {
        // ember-nn's model tests run on wgpu too (lavapipe in CI).
        features.push("ember-nn/test-wgpu");
    }
    if std::env::var_os("EMBER_CHECK_CUDA").is_some() {
        features.push("ember-cli/cuda");
    }
    let feature_args: Vec<String> = match features.is_empty() {
        true => Vec::new(),
        false => vec!["--features".into(), features.join(",")],
    };
    if !features.is_empty() {
        println!("xtask: features {}", features.join(","));
    }
    let (passed, failed) = run_counting_tests(
        Command::new(cargo)
            .current_dir(&root)
            .args(["test", "--release", "--workspace"])
            .args(&feature_args)
            .args(extra),
    )?;
    // The examples, with the same packages and features (nothing rebuilt).
    run(Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "--workspace", "--examples"])
        .args(&feature_args))?;
    if std::env::var_os("EMBER_CHECK_CUDA").is_some() {
        // The test build's `ember` has the CUDA backend in it.
        let out = Command::new(root.join("target/release/ember"))
            .args(["--backend", "cuda", "info", "--model", "/nonexistent"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!(
            "xtask: ember --backend cuda without a GPU: {}",
            stderr.trim()
        );
        if out.status.code() != Some(1) || stderr.contains("panicked") {
            bail!("the CUDA backend did not fail cleanly without a GPU");
        }
    }
    // One closing line for the whole suite.
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up its `test result:` lines.
fn run_counting_tests(cmd: &mut Command) -> Result<(usize, usize)> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim().strip_suffix(word).map(|n| {
                            n.trim()
                                .trim_start_matches("ok.")
                                .trim_start_matches("FAILED.")
                                .trim()
                                .parse::<usize>()
                                .unwrap_or(0)
                        })
                    })
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!("tests: {passed} passed, {failed} failed");
        bail!("{cmd:?} failed with {status}");
    }
    Ok((passed, failed))
}

/// The first Python that can `import torch`: `$EMBER_PYTHON`, then `python3` on the
/// PATH, then the system's `/usr/bin/python3` (where Debian's python3-torch installs).
fn python_with_torch() -> Option<String> {
    let candidates = std::env::var("EMBER_PYTHON")
        .ok()
        .into_iter()
        .chain(["python3".to_string(), "/usr/bin/python3".to_string()]);
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Runs `cmd` to success and returns that process's peak resident memory in MB (its own,
/// not that of earlier children such as the build).
fn run_peak_rss_mb(cmd: &mut Command) -> Result<f64> {
    let child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 writes into the zeroed struct and the status we pass; it reaps the
    // child, which `Child`'s drop leaves alone.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if reaped != pid {
        bail!("waiting for {cmd:?}: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{cmd:?} failed (wait status {status})");
    }
    Ok(usage.ru_maxrss as f64 / 1024.0)
}

fn bench(args: &[String]) -> Result<()> {
    let root = root();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let number = |name: &str, default: usize| {
        flag(name)
            .map_or(Ok(default), str::parse::<usize>)
            .context(name.to_string())
    };
    if args.iter().any(|a| a == "--micro") {
        return micro::bench(flag("--filter"));
    }
    if flag("--suite") == Some("attention-memory") {
        return attention_memory::bench(number("--seq", 4096)?);
    }
    let data = flag("--data")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data/tinyshakespeare.txt"));
    let steps = number("--steps", 2000)?;
    let precision = flag("--matmul-precision").unwrap_or("f32");
    if !matches!(precision, "f32" | "bf16") {
        bail!("--matmul-precision {precision}: expected f32 or bf16");
    }
    let shards = number("--batch-shards", 0)?;
    if flag("--suite") == Some("finetune") {
        return finetune::bench(number("--steps", 30)?);
    }
    if flag("--suite") == Some("decode") {
        return decode::bench(&data, steps);
    }
    if flag("--suite") == Some("serve") {
        return serve::bench(&data);
    }
    if flag("--suite") == Some("memory") {
        return memory::bench(&data, number("--steps", 6)?);
    }
    if flag("--suite") == Some("ddp") {
        return ddp::bench(&data, number("--steps", 30)?);
    }
    if flag("--suite") == Some("recipes") {
        return recipes::bench(&data, number("--steps", 400)?, flag("--only"));
    }
    if !data.exists() {
        bail!(
            "{}: benchmark data not found (pass --data FILE)",
            data.display()
        );
    }
    match flag("--suite") {
        None | Some("nanogpt") => {}
        Some("gpt-wide") => {
            return gpt_wide::bench(&data, number("--steps", 50)?, precision, shards);
        }
        Some("arch") => {
            return arch::bench_arch(
                &data,
                steps,
                flag("--only"),
                args.iter().any(|a| a == "--write-docs"),
            );
        }
        Some(other) => {
            bail!(
                "--suite {other}: unknown suite (known: nanogpt, arch, attention-memory, ddp, decode, finetune, gpt-wide, memory, recipes, serve)"
            )
        }
    }
    let ember = build_ember()?;
    // Both sides start from the same weights: Ember's initial model (a zero-step run),
    // exported for the PyTorch reference; the timed run resumes from it.
    let init = root.join("target/bench/nanogpt-cpu-init");
    let init_hf = root.join("target/bench/nanogpt-cpu-init-hf");
    let _ = std::fs::remove_dir_all(&init);
    let _ = std::fs::remove_dir_all(&init_hf);
    run(Command::new(&ember)
        .args(["train", "--preset", "nanogpt-cpu", "--quiet", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&init)
        .args(["--set", "train.steps=0"]))?;
    run(Command::new(&ember)
        .args(["export", "--model"])
        .arg(&init)
        .arg("--out")
        .arg(&init_hf))?;
    let out = root.join("target/bench/nanogpt-cpu-run");
    let _ = std::fs::remove_dir_all(&out);
    let peak_rss_mb = run_peak_rss_mb(
        Command::new(&ember)
            .args(["train", "--preset", "nanogpt-cpu", "--quiet", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .arg("--resume")
            .arg(&init)
            .arg("--set")
            .arg(format!("train.steps={steps}"))
            .arg("--set")
            .arg(format!("train.matmul_precision={precision}"))
            .arg("--set")
            .arg(format!("train.batch_shards={shards}")),
    )?;
    let metrics = read_metrics(&out.join("metrics.jsonl"))?;
    let ms_per_step = median_step_ms(&metrics);
    let tokens_per_s = 12.0 * 64.0 / (ms_per_step / 1e3);
    let val_at = |step: u64| {
        metrics
            .iter()
            .find(|m| m["step"].as_u64() == Some(step))
            .and_then(|m| m["val_loss"].as_f64())
    };
    let mut summary = serde_json::json!({
        "bench": "nanogpt-cpu",
        "backend": features(),
        "matmul_precision": precision,
        "batch_shards": last_batch_shards(&metrics),
        "steps": steps,
        "val_loss": val_at(steps as u64),
        "val_loss_250": val_at(250),
        "val_loss_500": val_at(500),
        "val_loss_1000": val_at(1000),
        "val_loss_2000": val_at(2000),
        "ms_per_step": ms_per_step,
        "tokens_per_s": tokens_per_s,
        "peak_rss_mb": peak_rss_mb,
    });
    if let Some(python) = python_with_torch() {
        let ref_out = root.join("target/bench/reference.json");
        println!("xtask: PyTorch reference with {python}");
        run(Command::new(&python)
            .arg(root.join("benches/reference/nanogpt_cpu.py"))
            .arg("--data")
            .arg(&data)
            .arg("--steps")
            .arg(steps.to_string())
            .arg("--out")
            .arg(&ref_out)
            .arg("--init")
            .arg(&init_hf))?;
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&ref_out)?)?;
        let ref_tps = reference["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        summary["ref_tokens_per_s"] = ref_tps.into();
        summary["ref_val_loss"] = reference["val_loss"].clone();
        if let (Some(ours), Some(theirs)) = (val_at(steps as u64), reference["val_loss"].as_f64()) {
            summary["val_loss_delta"] = (ours - theirs).into();
        }
        for at in [250, 500, 1000, 2000] {
            summary[format!("ref_val_loss_{at}")] = reference["val_losses"][at.to_string()].clone();
        }
        summary["ref_torch"] = reference["torch_version"].clone();
        summary["ratio"] = (tokens_per_s / ref_tps).into();
    } else {
        println!(
            "xtask: no python3 with torch found (tried $EMBER_PYTHON, python3, /usr/bin/python3); skipping the PyTorch reference"
        );
    }
    println!("{}", summary_line(&summary));
    let json_path = root.join("target/bench/nanogpt-cpu.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&summary)?)?;
    println!("xtask: wrote {}", json_path.display());
    Ok(())
}

/// `bench=NAME key=value …`, `bench=` first, nulls left out, fractions to 4 places.
fn summary_line(summary: &serde_json::Value) -> String {
    let mut line: Vec<String> = summary
        .as_object()
        .expect("a summary object")
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            serde_json::Value::Number(n) if n.as_f64().is_some_and(|x| x.fract() != 0.0) => {
                format!("{k}={:.4}", n.as_f64().unwrap())
            }
            serde_json::Value::String(s) => format!("{k}={s}"),
            v => format!("{k}={v}"),
        })
        .collect();
    line.sort_by_key(|s| !s.starts_with("bench="));
    line.join(" ")
}

/// The shard count the run reports in its last metrics record.
fn last_batch_shards(metrics: &[serde_json::Value]) -> Option<u64> {
    metrics.last().and_then(|m| m["batch_shards"].as_u64())
}

/// Median of the logged step times.
fn median_step_ms(metrics: &[serde_json::Value]) -> f64 {
    let mut step_ms: Vec<f64> = metrics
        .iter()
        .filter_map(|m| m["step_ms"].as_f64())
        .collect();
    step_ms.sort_by(f64::total_cmp);
    step_ms.get(step_ms.len() / 2).copied().unwrap_or(f64::NAN)
}

fn read_metrics(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("parsing {}", path.display())))
        .collect()
}
