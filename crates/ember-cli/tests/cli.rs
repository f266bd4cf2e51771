//! The `ember` binary end to end: a short training run, generation, info, and every bad
//! input the CLI must reject with a clear message, exit code 2 (usage/config) or 1
//! (runtime), and no panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .unwrap()
}

fn corpus(dir: &Path) -> PathBuf {
    let text: String = (0..300)
        .map(|i| format!("line {i}: all the world's a stage {}.\n", i % 7))
        .collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

const SMALL: &[&str] = &[
    "--set",
    "model.d_model=32",
    "--set",
    "model.n_layers=1",
    "--set",
    "model.d_ff=64",
    "--set",
    "model.max_seq_len=16",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.eval_every=2",
    "--set",
    "train.eval_batches=1",
    "--quiet",
];

fn train(dir: &Path, out: &str, steps: usize, extra: &[&str]) -> Output {
    let data = corpus(dir);
    let out = dir.join(out);
    let steps = format!("train.steps={steps}");
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        &steps,
    ];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    ember(&args)
}

fn assert_fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn train_generate_info_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let out = train(tmp.path(), "run", 4, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = tmp.path().join("run");
    let model = run.to_str().unwrap();
    let generated = ember(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "line",
        "--max-new-tokens",
        "20",
        "--seed",
        "3",
    ]);
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let text = String::from_utf8(generated.stdout).unwrap();
    assert!(
        text.starts_with("line") && text.chars().count() >= 24,
        "{text:?}"
    );
    let greedy = |cache: bool| {
        let mut args = vec![
            "generate",
            "--model",
            model,
            "--prompt",
            "line 1",
            "--temperature",
            "0",
            "--max-new-tokens",
            "12",
        ];
        if !cache {
            args.push("--no-cache");
        }
        String::from_utf8(ember(&args).stdout).unwrap()
    };
    assert_eq!(greedy(true), greedy(false));
    let info = String::from_utf8(ember(&["info", "--model", model]).stdout).unwrap();
    assert!(
        info.contains("step: 4") && info.contains("last val loss:"),
        "{info}"
    );
    assert!(run.join("metrics.jsonl").exists());
}

#[test]
fn bad_data_files() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.txt");
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let binary = tmp.path().join("binary.dat");
    std::fs::write(&binary, [0u8, 159, 146, 150, 0, 1]).unwrap();
    for (path, needle) in [
        (&missing, "no such file"),
        (&empty, "empty"),
        (&binary, "not a text file"),
    ] {
        let out = ember(&[
            "train",
            "--data",
            path.to_str().unwrap(),
            "--out",
            tmp.path().join("o").to_str().unwrap(),
            "--quiet",
        ]);
        assert_fails(&out, 1, needle);
        assert_fails(&out, 1, path.to_str().unwrap());
    }
}

#[test]
fn bad_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let bad_toml = tmp.path().join("bad.toml");
    std::fs::write(&bad_toml, "[model\nd_model = ").unwrap();
    assert_fails(
        &train(
            tmp.path(),
            "a",
            1,
            &["--config", bad_toml.to_str().unwrap()],
        ),
        2,
        "malformed TOML",
    );
    assert_fails(
        &train(tmp.path(), "a", 1, &["--preset", "gpt9"]),
        2,
        "--preset gpt9: unknown preset",
    );
    assert_fails(
        &train(tmp.path(), "a", 1, &["--set", "train.nope=1"]),
        2,
        "unknown key `train.nope`",
    );
    assert_fails(
        &train(tmp.path(), "a", 1, &["--set", "model.d_model=30"]),
        2,
        "not divisible by n_heads",
    );
    assert_fails(
        &train(tmp.path(), "a", 1, &["--set", "model.n_kv_heads=3"]),
        2,
        "n_kv_heads",
    );
    assert_fails(
        &train(tmp.path(), "a", 1, &["--set", "optim.lr=0"]),
        2,
        "optim.lr: must be positive",
    );
    assert_fails(&ember(&["train"]), 2, "--data");
}

#[test]
fn bad_checkpoints_and_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(train(tmp.path(), "run", 2, &[]).status.success());
    let run = tmp.path().join("run");
    let model = run.to_str().unwrap();
    assert_fails(
        &ember(&["generate", "--model", model, "--prompt", "☃ snow"]),
        2,
        "--prompt: character '☃'",
    );
    assert_fails(
        &ember(&["info", "--model", tmp.path().join("nope").to_str().unwrap()]),
        1,
        "no such directory",
    );
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "hello").unwrap();
    assert_fails(
        &ember(&["info", "--model", foreign.to_str().unwrap()]),
        1,
        "neither an Ember checkpoint",
    );
    // A config.json makes it a Hugging Face directory, which this one is not.
    std::fs::write(foreign.join("config.json"), "{}").unwrap();
    assert_fails(
        &ember(&["info", "--model", foreign.to_str().unwrap()]),
        1,
        "config.json: `model_type` is missing",
    );
    // A truncated weights file.
    let weights = run.join("checkpoint/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &ember(&[
            "generate",
            "--model",
            model,
            "--prompt",
            "line",
            "--max-new-tokens",
            "2",
        ]),
        1,
        "model.safetensors",
    );
    // Resuming with a different model.
    assert!(train(tmp.path(), "run2", 2, &[]).status.success());
    let resume = tmp.path().join("run2");
    assert_fails(
        &train(
            tmp.path(),
            "run3",
            4,
            &[
                "--resume",
                resume.to_str().unwrap(),
                "--set",
                "model.n_layers=2",
            ],
        ),
        2,
        "model.n_layers: checkpoint 1, now 2",
    );
}
