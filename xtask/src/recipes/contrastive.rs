//! The recipes bench's contrastive run: near-duplicate retrieval on Tiny Shakespeare.
//! Each pair is a 64-character window (anchor) and the window 16 characters further on
//! (positive: 48 characters shared, 16 new on each side), from consecutive 80-character
//! stretches; InfoNCE from the base run's weights for half the bench's steps. The rows:
//! held-out retrieval accuracy (each held-out anchor against every held-out positive)
//! after one step and at the end.
//!
//! (Pairs of a passage's two halves, sharing no text, stayed at chance, about 1%, for
//! this model and budget at learning rates 3e-4 and 3e-3, mean or last pooling.)

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::Bench;
use crate::read_metrics;

/// Characters per side of a pair, and how far the positive starts after the anchor.
const WINDOW: usize = 64;
const SHIFT: usize = 16;

pub(super) fn rows(
    b: &Bench,
    base_dir: &str,
    text: &str,
    row: &mut dyn FnMut(&str, Option<f64>),
) -> Result<()> {
    let chars: Vec<char> = text.chars().collect();
    let mut lines = String::new();
    let mut pairs = 0;
    for stretch in chars.chunks_exact(WINDOW + SHIFT) {
        let anchor: String = stretch[..WINDOW].iter().collect();
        let positive: String = stretch[SHIFT..].iter().collect();
        if anchor.trim().is_empty() || positive.trim().is_empty() {
            continue;
        }
        lines.push_str(&json!({"anchor": anchor, "positive": positive}).to_string());
        lines.push('\n');
        pairs += 1;
    }
    let data = b.out.join("pairs.jsonl");
    std::fs::write(&data, lines)?;
    // 2% held out (a retrieval among ~170 passages); one run of a single step for the
    // starting point, one of the whole budget.
    let run = |name: &str, steps: usize| -> Result<Vec<Value>> {
        let sets: Vec<String> = vec![
            "train.objective=\"contrastive\"".into(),
            "train.contrastive={temperature=0.05, pooling=\"mean\"}".into(),
            "train.batch_size=32".into(),
            "data.val_fraction=0.02".into(),
            "optim.lr=1e-3".into(),
            format!("train.steps={steps}"),
            format!("optim.decay_steps={steps}"),
            format!("optim.warmup_steps={}", steps / 20),
            format!("train.eval_every={}", (steps / 4).max(1)),
        ];
        b.train_on(&data, name, &["train", "--init-from", base_dir], &sets)?;
        read_metrics(&b.out.join(name).join("metrics.jsonl"))
    };
    let accuracy = |metrics: &[Value]| -> Result<(Option<f64>, Option<f64>)> {
        let last = metrics
            .iter()
            .rev()
            .find(|m| m["retrieval_accuracy"].is_f64())
            .context("the contrastive run evaluated")?;
        Ok((
            last["retrieval_accuracy"].as_f64(),
            last["val_loss"].as_f64(),
        ))
    };
    let (acc_first, loss_first) = accuracy(&run("contrastive-step1", 1)?)?;
    let (acc_last, loss_last) = accuracy(&run("contrastive", (b.steps / 2).max(1))?)?;
    row("contrastive_pairs", Some(pairs as f64));
    row("contrastive_retrieval_step1", acc_first);
    row("contrastive_retrieval_final", acc_last);
    row("contrastive_val_loss_step1", loss_first);
    row("contrastive_val_loss_final", loss_last);
    Ok(())
}
