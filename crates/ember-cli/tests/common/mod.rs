//! Helpers shared by the evaluation and interactive tests: the binary, the GPT-2 fixture,
//! a tiny corpus and model settings, and the failure check.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `ember` with `args` to completion.
pub fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .unwrap()
}

/// The GPT-2 fixture (byte-level BPE, a chat-template-free Hugging Face directory).
pub fn gpt2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ember-hf/tests/fixtures/gpt2")
}

/// A small text file in `dir`.
pub fn tiny_corpus(dir: &Path) -> PathBuf {
    let text: String = (0..300)
        .map(|i| format!("line {i}: all the world's a stage {}.\n", i % 7))
        .collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// `--set` flags for a model and run that train in milliseconds.
pub const TINY: &[&str] = &[
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
];

/// `out` exited 0 (its stderr shown when not).
pub fn assert_succeeds(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `out` exited with `code`, saying `needle` on stderr, without a panic.
pub fn assert_fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
