//! `train.precision = "bf16-mixed" | "f16-mixed"` end to end, and f16's dynamic loss
//! scaling. A binary of its own: autocast is a process-wide setting, and the other
//! training tests compare f32 runs bit for bit.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;
use common::weights;

use burn::backend::{Autodiff, Flex};
use ember_nn::Transformer;
use ember_ops::fused::autocast;
use ember_train::{
    CausalLm, Checkpoint, Objective, ObjectiveBatch, ObjectiveOutput, StepMetrics, TrainConfig,
    TrainExtras, TrainOptions, train, train_with,
};

type B = Autodiff<Flex>;

/// The tests of this binary set a process-wide setting: one at a time.
static TURN: Mutex<()> = Mutex::new(());

fn corpus(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for i in 0..400 {
        text.push_str(&format!("line {i}: a cat {} sat on the mat.\n", i * 5 % 11));
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn config(precision: &str, steps: usize) -> TrainConfig {
    let sets: Vec<String> = [
        "model.d_model=64",
        "model.n_layers=2",
        "model.d_ff=128",
        "model.max_seq_len=32",
        "train.batch_size=8",
        "train.batch_shards=1",
        "train.eval_batches=4",
        "train.log_every=1",
        "train.checkpoint_every=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("train.precision={precision}"),
        format!("train.steps={steps}"),
        format!("train.eval_every={steps}"),
    ])
    .collect();
    TrainConfig::resolve(Some("tiny"), None, &sets).unwrap()
}

fn options(out: PathBuf, corpus: &Path) -> TrainOptions {
    TrainOptions {
        out_dir: out,
        data: vec![corpus.to_path_buf()],
        resume: None,
        force: false,
        verbose: false,
        cpu_backend: true,
    }
}

fn metrics(dir: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn mixed_precision_trains_like_f32_and_the_setting_ends_with_the_run() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path());
    let (mut val, mut first_loss) = (Vec::new(), Vec::new());
    for precision in ["f32", "bf16-mixed", "f16-mixed"] {
        let out = tmp.path().join(precision);
        let summary = train::<B>(
            config(precision, 30),
            &options(out.clone(), &corpus),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(autocast(), None, "{precision}: autocast not restored");
        let records = metrics(&out);
        let scales: Vec<Option<f64>> = records.iter().map(|m| m.loss_scale).collect();
        if precision == "f16-mixed" {
            assert!(scales.iter().all(|s| *s == Some(65536.0)), "{scales:?}");
            let state = Checkpoint::open(&out).unwrap().state;
            assert_eq!(state.loss_scale.unwrap().growth_tracker, 30);
        } else {
            assert!(
                scales.iter().all(Option::is_none),
                "{precision}: {scales:?}"
            );
        }
        assert!(records.iter().all(|m| !m.skipped_step));
        first_loss.push(records[0].train_loss);
        val.push(summary.last_val_loss.unwrap());
    }
    let (f32_loss, bf16_loss, f16_loss) = (val[0], val[1], val[2]);
    println!(
        "val loss after 30 steps: f32 {f32_loss}, bf16-mixed {bf16_loss}, f16-mixed {f16_loss}"
    );
    // The first step's training loss comes from the low-precision forward pass itself.
    for (name, loss, tolerance) in [
        ("bf16-mixed", first_loss[1], 1e-2),
        ("f16-mixed", first_loss[2], 2e-3),
    ] {
        let relative = (loss - first_loss[0]).abs() / first_loss[0];
        println!(
            "{name}: step-1 loss {loss} vs f32 {} ({relative:.1e})",
            first_loss[0]
        );
        assert!(
            relative > 1e-7 && relative < tolerance,
            "{name}: {relative}"
        );
    }
    for (name, loss) in [("bf16-mixed", bf16_loss), ("f16-mixed", f16_loss)] {
        assert!(
            loss != f32_loss,
            "{name}: identical to f32, nothing ran low"
        );
        assert!(
            (loss - f32_loss).abs() < 0.05 * f32_loss,
            "{name}: {loss} vs f32 {f32_loss}"
        );
    }
}

/// CausalLm whose loss is multiplied by `factor` on its `at`-th call (counting from 1).
struct Overflowing {
    inner: CausalLm,
    calls: AtomicUsize,
    at: usize,
    factor: f64,
}

impl Objective<B> for Overflowing {
    fn loss(&self, model: &Transformer<B>, batch: ObjectiveBatch<'_, B>) -> ObjectiveOutput<B> {
        let mut out = self.inner.loss(model, batch);
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            out.loss = out.loss.mul_scalar(self.factor);
        }
        out
    }
}

/// An overflow injected into step 2's backward pass: the step is skipped (the weights and
/// optimizer state stay those of step 1), the scale halves, and the run goes on.
#[test]
fn an_overflow_skips_the_step_and_halves_the_scale() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path());
    let run = |name: &str, steps: usize, at: usize| {
        let out = tmp.path().join(name);
        let config = config("f16-mixed", steps);
        let objective = Overflowing {
            inner: CausalLm::new(&config),
            calls: AtomicUsize::new(0),
            at,
            factor: 1e36,
        };
        let extras = TrainExtras {
            objective: Some(Box::new(objective)),
            ..Default::default()
        };
        train_with::<B>(
            config,
            &options(out.clone(), &corpus),
            extras,
            &Default::default(),
        )
        .unwrap();
        out
    };
    let one = run("one-step", 1, 0);
    let skipped = run("overflow-at-2", 2, 2);
    let records = metrics(&skipped);
    assert_eq!(records.len(), 2);
    assert!(!records[0].skipped_step && records[1].skipped_step);
    assert_eq!(records[0].loss_scale, Some(65536.0));
    assert_eq!(
        records[1].loss_scale,
        Some(65536.0),
        "the scale step 2 ran with"
    );
    assert!(!records[1].grad_norm.is_finite());
    let state = Checkpoint::open(&skipped).unwrap().state;
    let scale = state.loss_scale.unwrap();
    assert_eq!((scale.scale, scale.growth_tracker), (32768.0, 0));
    assert_eq!(state.step, 2);
    // The skipped step changed no weight.
    let (a, b) = (weights(&one), weights(&skipped));
    assert_eq!(a, b, "weights after the skipped step differ from step 1's");

    // Three steps with the overflow at 2: step 3 runs at the halved scale and updates.
    let three = run("overflow-then-on", 3, 2);
    let records = metrics(&three);
    assert_eq!(records[2].loss_scale, Some(32768.0));
    assert!(!records[2].skipped_step && records[2].grad_norm.is_finite());
    assert_ne!(weights(&three), a);
}
