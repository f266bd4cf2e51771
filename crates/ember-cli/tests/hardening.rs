//! What Ember promises on bad input, class by class (README, "What Ember promises on bad
//! input"): special files, sizes a file asks for, tensor types, corrupt optimizer state,
//! resuming into another run, overwriting what is not ours, and crash windows during
//! checkpoint saves. Each test asserts the message, the exit code, and that nothing was
//! changed or lost.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `ember` with a deadline: a hang is a failure, not a stuck test.
fn ember_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("ember {args:?} hung (killed after 120 s)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ember(args: &[&str]) -> Output {
    ember_env(args, &[])
}

fn corpus(dir: &Path) -> PathBuf {
    let text: String = (0..300)
        .map(|i| {
            format!(
                "line {i}: the quality of mercy is not strained {}.\n",
                i % 5
            )
        })
        .collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// `ember train` arguments for a small, fast, deterministic run into `out`.
fn train_args(data: &Path, out: &Path, steps: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for set in [
        "model.d_model=32",
        "model.n_layers=1",
        "model.d_ff=64",
        "model.max_seq_len=16",
        "train.batch_size=4",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.log_every=1",
        "train.checkpoint_every=1",
        &format!("train.steps={steps}"),
    ] {
        args.push("--set".into());
        args.push(set.to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn train(data: &Path, out: &Path, steps: usize, extra: &[&str]) -> Output {
    let args = train_args(data, out, steps, extra);
    ember(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Every file under `dir` with its bytes, for "nothing changed" checks.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// `(step, train_loss, val_loss, lr, grad_norm)` of every line of a metrics file, as bits.
fn losses(run: &Path) -> Vec<(u64, u64, Option<u64>, u64, u64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let f = |k: &str| v[k].as_f64().unwrap().to_bits();
            (
                v["step"].as_u64().unwrap(),
                f("train_loss"),
                v["val_loss"].as_f64().map(f64::to_bits),
                f("lr"),
                f("grad_norm"),
            )
        })
        .collect()
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn special_files_are_refused_without_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo.txt");
    mkfifo(&fifo);
    let out = tmp.path().join("run");
    for (data, kind) in [
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/zero"), "character device"),
    ] {
        let result = train(data, &out, 1, &[]);
        assert_fails(&result, 2, &["--data", data.to_str().unwrap(), kind]);
    }
    // Inside a directory too.
    let dir = tmp.path().join("corpus");
    std::fs::create_dir(&dir).unwrap();
    corpus(&dir);
    mkfifo(&dir.join("pipe.txt"));
    assert_fails(&train(&dir, &out, 1, &[]), 2, &["pipe.txt", "a FIFO"]);
    // A TOML config and a perplexity input.
    let data = corpus(tmp.path());
    let result = train(&data, &out, 1, &["--config", fifo.to_str().unwrap()]);
    assert_fails(&result, 2, &["--config", "a FIFO"]);
    assert!(!out.join("checkpoint").exists(), "nothing was trained");
    assert_ok(&train(&data, &out, 1, &[]));
    let result = ember(&[
        "perplexity",
        "--model",
        out.to_str().unwrap(),
        "--data",
        fifo.to_str().unwrap(),
    ]);
    assert_fails(&result, 2, &["--data", "a FIFO"]);
    // `perplexity` and `train` agree on a missing file: exit 2, naming the flag.
    let missing = tmp.path().join("missing.txt");
    let result = ember(&[
        "perplexity",
        "--model",
        out.to_str().unwrap(),
        "--data",
        missing.to_str().unwrap(),
    ]);
    assert_fails(&result, 2, &["--data", "missing.txt", "no such file"]);
    let fresh = tmp.path().join("fresh");
    assert_fails(
        &train(&missing, &fresh, 1, &[]),
        2,
        &["--data", "missing.txt", "no such file"],
    );
}

/// A small Llama directory in Hugging Face's layout, from an Ember run.
fn hf_dir(tmp: &Path) -> PathBuf {
    let run = tmp.join("hf-src");
    assert_ok(&train(&corpus(tmp), &run, 1, &[]));
    let hf = tmp.join("hf");
    assert_ok(&ember(&[
        "export",
        "--model",
        run.to_str().unwrap(),
        "--out",
        hf.to_str().unwrap(),
    ]));
    hf
}

fn set_json(path: &Path, key: &str, value: serde_json::Value) {
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config[key] = value;
    std::fs::write(path, config.to_string()).unwrap();
}

#[test]
fn sizes_a_file_asks_for_are_checked_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = hf_dir(tmp.path());
    let config = hf.join("config.json");
    let original = std::fs::read_to_string(&config).unwrap();
    // Beyond any model: refused by the bound, naming the key.
    for (key, value, needle) in [
        ("vocab_size", 1u64 << 40, "vocab_size"),
        ("intermediate_size", 1 << 40, "d_ff"),
        ("num_hidden_layers", 1 << 40, "n_layers"),
        ("max_position_embeddings", 1 << 40, "max_seq_len"),
    ] {
        std::fs::write(&config, &original).unwrap();
        set_json(&config, key, value.into());
        let out = ember(&["info", "--model", hf.to_str().unwrap()]);
        assert_fails(&out, 1, &["config.json", needle]);
    }
    // Plausible numbers that the weights on disk cannot back: refused before the model is
    // built (16M × 32 floats would be 2 GiB), naming the config.json key.
    for (key, value) in [
        ("vocab_size", 16_000_000u64),
        ("intermediate_size", 1_000_000),
    ] {
        std::fs::write(&config, &original).unwrap();
        set_json(&config, key, value.into());
        let out = ember(&["generate", "--model", hf.to_str().unwrap(), "--ids", "1,2"]);
        assert_fails(&out, 1, &["config.json", key, "hold only"]);
    }
}

/// A trained run in `tmp/name`, 3 steps.
fn trained(tmp: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let run = tmp.join(name);
    assert_ok(&train(&corpus(tmp), &run, 3, extra));
    run
}

/// Rewrites the safetensors header of `file` through `edit`, keeping the data.
fn edit_header(file: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut text = header.to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    std::fs::write(file, out).unwrap();
}

/// Drops the manifest of sizes and checksums from a checkpoint's marker (a checkpoint
/// written before it existed, or edited by hand), so the per-tensor checks are what
/// stands between a bad file and the loader.
fn drop_manifest(checkpoint: &Path) {
    let marker = checkpoint.join("ember.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&marker).unwrap()).unwrap();
    value.as_object_mut().unwrap().remove("files");
    std::fs::write(&marker, value.to_string()).unwrap();
}

#[test]
fn tensor_types_are_checked_before_use() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained(tmp.path(), "run", &[]);
    let ckpt = run.join("checkpoint");
    let weights = ckpt.join("model.safetensors");
    let name = "final_norm.gamma";
    // The checksum notices any change first.
    edit_header(&weights, |h| h[name]["dtype"] = "I32".into());
    let out = ember(&["generate", "--model", run.to_str().unwrap(), "--ids", "1"]);
    assert_fails(&out, 1, &["model.safetensors", "damaged"]);
    // Without it, the dtype check (same byte length: only the type is wrong).
    drop_manifest(&ckpt);
    let out = ember(&["generate", "--model", run.to_str().unwrap(), "--ids", "1"]);
    assert_fails(&out, 1, &["model.safetensors", name, "I32", "f32"]);
    // A shape that does not fit, and a byte length that does not match the shape.
    edit_header(&weights, |h| {
        h[name]["dtype"] = "F32".into();
        h[name]["shape"] = serde_json::json!([16, 2]);
    });
    let out = ember(&["generate", "--model", run.to_str().unwrap(), "--ids", "1"]);
    assert_fails(&out, 1, &["model.safetensors", name, "[16, 2]"]);
    edit_header(&weights, |h| h[name]["shape"] = serde_json::json!([31]));
    let out = ember(&["generate", "--model", run.to_str().unwrap(), "--ids", "1"]);
    assert_fails(&out, 1, &["model.safetensors"]);
    // An overflowing shape product.
    edit_header(&weights, |h| {
        h[name]["shape"] = serde_json::json!([u64::MAX, u64::MAX, 2])
    });
    let out = ember(&["generate", "--model", run.to_str().unwrap(), "--ids", "1"]);
    assert_fails(&out, 1, &["model.safetensors"]);
}

#[test]
fn corrupt_optimizer_state_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    for manifest in [true, false] {
        let run = trained(tmp.path(), &format!("run-{manifest}"), &[]);
        let ckpt = run.join("checkpoint");
        let optim = ckpt.join("optim-decay.bin");
        let mut bytes = std::fs::read(&optim).unwrap();
        let len = bytes.len();
        for b in &mut bytes[len / 3..len / 3 + 64] {
            *b = !*b;
        }
        bytes.truncate(len * 2 / 3);
        std::fs::write(&optim, &bytes).unwrap();
        if !manifest {
            drop_manifest(&ckpt);
        }
        let before = snapshot(&run);
        let run_s = run.to_str().unwrap();
        let out = train(&data, &run, 5, &["--resume", run_s]);
        let needles: &[&str] = if manifest {
            &["optim-decay.bin", "damaged"]
        } else {
            &["optim-decay.bin", "optimizer state"]
        };
        assert_fails(&out, 1, needles);
        assert!(snapshot(&run) == before, "a failed resume changed the run");
    }
}

#[test]
fn resuming_into_another_run_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let a = trained(tmp.path(), "a", &[]);
    let b = trained(tmp.path(), "b", &["--set", "train.seed=7"]);
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let before = snapshot(&b);
    let out = train(&data, &b, 5, &["--resume", a_s]);
    assert_fails(&out, 2, &["--out", b_s, "another run", "--force"]);
    // A fresh run into a directory holding one.
    let out = train(&data, &b, 5, &[]);
    assert_fails(&out, 2, &["--out", "already holds a run", "--resume"]);
    assert!(snapshot(&b) == before, "a refused run changed --out");

    // Into an empty directory: the new run's metrics start with the source's lines.
    let c = tmp.path().join("c");
    assert_ok(&train(&data, &c, 5, &["--resume", a_s]));
    let (a_lines, c_lines) = (losses(&a), losses(&c));
    assert_eq!(c_lines[..a_lines.len()], a_lines[..]);
    assert_eq!(
        c_lines.iter().map(|l| l.0).collect::<Vec<_>>(),
        (1..=5).collect::<Vec<_>>()
    );
    // Forced: b now holds a's continuation, with a's history and no trace of b's.
    assert_ok(&train(&data, &b, 5, &["--resume", a_s, "--force"]));
    assert_eq!(losses(&b), c_lines);

    // After a crash past the checkpoint, a resume drops the lines it will recompute.
    let mut text = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    text.push_str(
        &text
            .lines()
            .last()
            .unwrap()
            .replace("\"step\":3", "\"step\":4"),
    );
    text.push_str("\n{\"step\":5,\"train_lo");
    std::fs::write(a.join("metrics.jsonl"), text).unwrap();
    assert_ok(&train(&data, &a, 5, &["--resume", a_s]));
    assert_eq!(losses(&a), c_lines);
}

#[test]
fn export_does_not_overwrite_what_is_not_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained(tmp.path(), "run", &[]);
    let run_s = run.to_str().unwrap();
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, "my notes").unwrap();
    let file_s = file.to_str().unwrap();
    let out = ember(&["export", "--model", run_s, "--out", file_s]);
    assert_fails(
        &out,
        2,
        &["--out", "notes.txt", "not a directory", "--force"],
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "my notes");
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("cat.jpg"), "meow").unwrap();
    let out = ember(&["export", "--model", run_s, "--out", dir.to_str().unwrap()]);
    assert_fails(&out, 2, &["photos", "not a Hugging Face model directory"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("cat.jpg")).unwrap(),
        "meow"
    );
    // An Ember checkpoint, and the --model directory itself.
    let other = trained(tmp.path(), "other", &[]);
    let before = snapshot(&other);
    let out = ember(&["export", "--model", run_s, "--out", other.to_str().unwrap()]);
    assert_fails(&out, 2, &["Ember checkpoint"]);
    let out = ember(&["export", "--model", run_s, "--out", run_s]);
    assert_fails(&out, 2, &["is an input model's directory"]);
    assert!(snapshot(&other) == before);
    // An earlier export is replaced; --force replaces anything.
    let hf = tmp.path().join("hf");
    let hf_s = hf.to_str().unwrap();
    assert_ok(&ember(&["export", "--model", run_s, "--out", hf_s]));
    assert_ok(&ember(&[
        "export", "--model", run_s, "--out", hf_s, "--dtype", "bf16",
    ]));
    assert_ok(&ember(&[
        "export", "--model", run_s, "--out", file_s, "--force",
    ]));
    assert!(file.join("config.json").exists());
}

/// The checkpoint `ember info` reports for `run`, or its error.
fn info_step(run: &Path) -> Result<u64, String> {
    let out = ember(&["info", "--model", run.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(stdout
        .lines()
        .find_map(|l| l.strip_prefix("step: "))
        .and_then(|s| s.trim().parse().ok())
        .expect("info prints the step"))
}

#[test]
fn killed_checkpoint_saves_always_leave_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    const STEPS: usize = 6;
    let reference = tmp.path().join("reference");
    assert_ok(&train(&data, &reference, STEPS, &[]));
    let expected = losses(&reference);
    assert_eq!(expected.len(), STEPS);

    // Killed (SIGKILL) at each stage of the save of step 3: a complete checkpoint is
    // always under the name users pass, and resuming reproduces the uninterrupted run.
    // Both ways of putting a save in place: the atomic exchange, and the two renames of
    // file systems without it (a kill between them leaves no `checkpoint/`, and loading
    // falls back to the newest complete sibling).
    let stages = ["files", "marker", "swap", "cleanup"];
    for (stage, exchange) in stages.iter().flat_map(|s| [(*s, true), (*s, false)]) {
        let run = tmp.path().join(format!("kill-{stage}-{exchange}"));
        let args = train_args(&data, &run, STEPS, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let spec = format!("{stage}@3");
        let mut env = vec![("EMBER_FAULT_KILL_IN_SAVE", spec.as_str())];
        if !exchange {
            env.push(("EMBER_FAULT_NO_EXCHANGE", "1"));
        }
        let out = ember_env(&args, &env);
        assert_eq!(out.status.code(), None, "{stage}: killed by a signal");
        let step = info_step(&run).unwrap_or_else(|e| panic!("{stage}: {e}"));
        let want = if matches!(stage, "swap" | "cleanup") {
            3
        } else {
            2
        };
        assert_eq!(step, want, "{stage}");
        let ckpt = run.join("checkpoint");
        assert_eq!(info_step(&ckpt).unwrap(), want, "{stage}: by its own name");
        if stage == "swap" {
            // Only the fallback path can leave the name empty for a moment.
            assert_eq!(ckpt.exists(), exchange, "{stage}");
        }
        let run_s = run.to_str().unwrap();
        assert_ok(&train(&data, &run, STEPS, &["--resume", run_s]));
        assert_eq!(losses(&run), expected, "{stage}");
    }
}

#[test]
fn killed_at_random_moments_a_run_resumes_to_the_uninterrupted_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    // About 20 ms a step here, nearly all of it the checkpoint save (flushed to disk), so
    // most kills land inside a save.
    const STEPS: usize = 300;
    let reference = tmp.path().join("reference");
    let started = Instant::now();
    assert_ok(&train(&data, &reference, STEPS, &[]));
    // Kills land between 2% and 15% of a whole run's time after each start, so about
    // eight land before the run completes, however fast this machine saves.
    let whole_run = started.elapsed();
    let expected = losses(&reference);

    // Killed (SIGKILL) at arbitrary moments (seeded, so the test repeats), resumed after
    // each kill, until the run completes.
    let run = tmp.path().join("random");
    let run_s = run.to_str().unwrap().to_string();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = 0;
    let mut finished = false;
    for _ in 0..8 {
        let resume: Vec<&str> = if info_step(&run).is_ok() {
            vec!["--resume", &run_s]
        } else {
            vec!["--force"]
        };
        let args = train_args(&data, &run, STEPS, &resume);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let fraction = 0.02 + 0.13 * (seed % 1000) as f64 / 1000.0;
        std::thread::sleep(whole_run.mul_f64(fraction));
        if child.try_wait().unwrap().is_some() {
            finished = true;
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        if let Err(e) = info_step(&run) {
            // Only before the first save may there be no checkpoint at all.
            assert!(
                e.contains("neither an Ember checkpoint") || e.contains("no such directory"),
                "after kill {kills}: {e}"
            );
        }
    }
    eprintln!("{kills} kills over a run of {whole_run:?}");
    assert!(kills >= 3, "only {kills} kills landed");
    if !finished {
        assert_ok(&train(&data, &run, STEPS, &["--resume", &run_s]));
    }
    assert_eq!(losses(&run), expected, "after {kills} kills");
}

/// Settings that used to be accepted and ignored: `model.dtype` other than f32 is refused
/// naming the key; `train.label_smoothing` reaches the loss (the same first batch on the
/// same initial weights gives another training loss) and is range-checked.
#[test]
fn settings_either_work_or_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    for dtype in ["bf16", "f16"] {
        let set = format!("model.dtype=\"{dtype}\"");
        let out = train(&data, &tmp.path().join(dtype), 1, &["--set", &set]);
        assert_fails(&out, 2, &["model.dtype", dtype, "train.matmul_precision"]);
    }
    let out = train(
        &data,
        &tmp.path().join("bad"),
        1,
        &["--set", "train.label_smoothing=1.5"],
    );
    assert_fails(&out, 2, &["train.label_smoothing", "[0, 1)"]);
    let plain = tmp.path().join("plain");
    let smooth = tmp.path().join("smooth");
    assert_ok(&train(&data, &plain, 1, &[]));
    assert_ok(&train(
        &data,
        &smooth,
        1,
        &["--set", "train.label_smoothing=0.2"],
    ));
    let (a, b) = (losses(&plain)[0], losses(&smooth)[0]);
    assert_eq!(a.0, 1);
    assert_ne!(a.1, b.1, "label smoothing changed nothing");

    // The learning-rate schedule is a setting: a straight line from lr to min_lr after
    // the warmup (lr 2e-3, min 2e-4, warmup 1, decay at step 3).
    let out = train(
        &data,
        &tmp.path().join("bad-schedule"),
        1,
        &["--set", "optim.schedule=\"step\""],
    );
    assert_fails(&out, 2, &["optim.schedule", "\"linear\""]);
    let linear = tmp.path().join("linear");
    let schedule = [
        "optim.schedule=\"linear\"",
        "optim.lr=2e-3",
        "optim.min_lr=2e-4",
        "optim.warmup_steps=1",
        "optim.decay_steps=3",
    ];
    let sets: Vec<&str> = schedule.iter().flat_map(|s| ["--set", s]).collect();
    assert_ok(&train(&data, &linear, 4, &sets));
    let lrs: Vec<f64> = losses(&linear)
        .iter()
        .map(|l| f64::from_bits(l.3))
        .collect();
    let want = [2e-3 / 2.0, 2e-3, 2e-3 + 0.5 * (2e-4 - 2e-3), 2e-4];
    for (got, want) in lrs.iter().zip(want) {
        assert!((got - want).abs() < 1e-15, "{lrs:?} vs {want}");
    }
    assert_eq!(lrs.len(), 4);
}

/// A training run's memory is estimated (from below) before anything is built: an absurd
/// micro-batch is refused naming the key, not a failed allocation.
#[test]
fn an_absurd_batch_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let out = tmp.path().join("run");
    // Within the key's bound, beyond this machine (16M rows of 16 tokens: over 200 GiB).
    let result = train(&data, &out, 1, &["--set", "train.batch_size=16000000"]);
    assert_fails(&result, 2, &["train.batch_size", "training would need"]);
    let result = train(&data, &out, 1, &["--set", "train.batch_size=100000000000"]);
    assert_fails(&result, 2, &["train.batch_size", "at most"]);
    assert!(!out.join("checkpoint").exists());
}

/// The run-directory guard beyond resuming: a `checkpoint/` that is not Ember's is not
/// replaced; a forced start deletes the other run's checkpoints at once (a crash before
/// its first save then leaves nothing of the other run to resume into the new history);
/// a second `ember train` in a directory in use is refused.
#[test]
fn run_directories_are_guarded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(foreign.join("checkpoint")).unwrap();
    std::fs::write(foreign.join("checkpoint/model.pt"), "torch").unwrap();
    let out = train(&data, &foreign, 2, &[]);
    assert_fails(&out, 2, &["--out", "not an Ember checkpoint", "--force"]);
    assert!(foreign.join("checkpoint/model.pt").exists());

    let run = trained(tmp.path(), "run", &[]);
    let args = train_args(&data, &run, 3, &["--force"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ember_env(&args, &[("EMBER_FAULT_KILL_IN_SAVE", "files@1")]);
    assert_eq!(out.status.code(), None, "killed by a signal");
    let err = info_step(&run).unwrap_err();
    assert!(err.contains("neither an Ember checkpoint"), "{err}");
    assert_eq!(
        losses(&run).iter().map(|l| l.0).collect::<Vec<_>>(),
        vec![1]
    );

    // Two runs at once in one directory.
    let busy = tmp.path().join("busy");
    let args = train_args(&data, &busy, 100_000, &[]);
    let mut first = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !busy.join("metrics.jsonl").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = train(&data, &busy, 3, &["--force"]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_fails(
        &second,
        2,
        &["another `ember train` or `ember finetune` is running"],
    );
}

/// Loading falls back to the previous save however the checkpoint is named, and the
/// next save puts that complete copy back under the name before reusing the siblings.
#[test]
fn a_damaged_checkpoint_falls_back_and_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let run = tmp.path().join("run");
    let args = train_args(&data, &run, 3, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Killed after the swap of step 2: `.checkpoint.tmp` still holds step 1.
    let out = ember_env(&args, &[("EMBER_FAULT_KILL_IN_SAVE", "swap@2")]);
    assert_eq!(out.status.code(), None);
    let ckpt = run.join("checkpoint");
    assert!(run.join(".checkpoint.tmp/ember.json").exists());
    std::fs::remove_file(ckpt.join("ember.json")).unwrap();
    for path in [&run, &ckpt] {
        let out = ember(&["info", "--model", path.to_str().unwrap()]);
        assert_ok(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("warning:") && stderr.contains("step 1"),
            "{stderr}"
        );
    }
    let run_s = run.to_str().unwrap();
    assert_ok(&train(&data, &run, 3, &["--resume", run_s]));
    assert_eq!(info_step(&run).unwrap(), 3);
    assert!(run.join(".checkpoint.damaged").exists());
    // The export guard knows a checkpoint by any of its names.
    let out = ember(&["export", "--model", run_s, "--out", ckpt.to_str().unwrap()]);
    assert_fails(&out, 2, &["Ember checkpoint"]);
}

/// Special files inside a Hugging Face directory are refused as well (each would block
/// `open` or never end).
#[test]
fn special_files_in_a_model_directory_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = hf_dir(tmp.path());
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    ] {
        let dir = tmp.path().join(format!("copy-{name}"));
        std::fs::create_dir(&dir).unwrap();
        for entry in std::fs::read_dir(&hf).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        std::fs::remove_file(dir.join(name)).unwrap();
        mkfifo(&dir.join(name));
        let out = ember(&["info", "--model", dir.to_str().unwrap()]);
        assert_fails(&out, 1, &[name, "a FIFO"]);
    }
}
