//! `cargo xtask bench --suite recipes`: every training recipe on a real run. Tiny
//! Shakespeare at the `llama` preset's size, the same seed (so the same batches) in every
//! run; each row a final validation loss:
//!
//! - label smoothing and z-loss against plain cross-entropy;
//! - each learning-rate schedule (their curves in one PNG);
//! - adaptive gradient clipping against norm clipping at a learning rate where norm
//!   clipping is pushed to diverge;
//! - the EMA of the weights against the raw weights;
//! - a greedy soup of three fine-tunes (from the base run, seeds 1–3) against its best
//!   member;
//! - a distilled small student against the same student alone (teacher: the base run);
//! - 50% magnitude pruning of the base run, before and after a short recovery run that
//!   keeps the masks;
//! - structured pruning of a quarter of the base run's attention heads, before and after
//!   a short recovery run (`heads.rs`);
//! - contrastive training on overlapping windows (near-duplicate retrieval), its
//!   held-out retrieval accuracy (`contrastive.rs`).
//!
//! `--only heads,contrastive` runs the base run and the named sections (`losses`,
//! `schedules`, `clipping`, `soup`, `distill`, `prune`, `heads`, `contrastive`).
//!
//! Soups and pruning are scored with `ember perplexity` (mean next-token loss) on the last
//! 20 000 characters of the corpus, which lie in the runs' held-out split.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

mod contrastive;
mod heads;

use crate::arch::plot_curves;
use crate::{build_ember, read_metrics, root, summary_line};

/// One training run's outcome.
pub(super) struct Trained {
    /// The last evaluation's validation loss (`None`: the run diverged).
    pub(super) val_loss: Option<f64>,
    /// `(step, val_loss)` at every evaluation.
    curve: Vec<(f64, f64)>,
    /// The EMA's last validation loss, when the run kept one.
    ema_val_loss: Option<f64>,
}

pub(super) struct Bench {
    ember: PathBuf,
    data: PathBuf,
    pub(super) out: PathBuf,
    pub(super) steps: usize,
}

impl Bench {
    /// `ember train` (or `distill`) with the llama preset and `sets`; a run that stops
    /// with "diverged" is an outcome, not an error.
    pub(super) fn train(&self, name: &str, command: &[&str], sets: &[String]) -> Result<Trained> {
        self.train_on(&self.data, name, command, sets)
    }

    /// [`Self::train`] on another data file.
    pub(super) fn train_on(
        &self,
        data: &Path,
        name: &str,
        command: &[&str],
        sets: &[String],
    ) -> Result<Trained> {
        let out = self.out.join(name);
        let _ = std::fs::remove_dir_all(&out);
        let mut cmd = Command::new(&self.ember);
        cmd.args(command)
            .args(["--preset", "llama", "--quiet", "--data"])
            .arg(data)
            .arg("--out")
            .arg(&out);
        let every = (self.steps / 8).max(1);
        for set in [
            format!("train.steps={}", self.steps),
            format!("optim.decay_steps={}", self.steps),
            format!("optim.warmup_steps={}", self.steps / 20),
            format!("train.eval_every={every}"),
            "train.eval_batches=20".into(),
        ]
        .iter()
        .chain(sets)
        {
            cmd.args(["--set", set]);
        }
        let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            if stderr.contains("diverged") {
                println!("xtask: recipes {name}: diverged");
                return Ok(Trained {
                    val_loss: None,
                    curve: Vec::new(),
                    ema_val_loss: None,
                });
            }
            bail!("{cmd:?} failed: {stderr}");
        }
        let metrics = read_metrics(&out.join("metrics.jsonl"))?;
        let evaluated: Vec<&Value> = metrics.iter().filter(|m| m["val_loss"].is_f64()).collect();
        let last = evaluated.last().context("the run evaluated")?;
        let trained = Trained {
            val_loss: last["val_loss"].as_f64(),
            curve: evaluated
                .iter()
                .filter_map(|m| Some((m["step"].as_f64()?, m["val_loss"].as_f64()?)))
                .collect(),
            ema_val_loss: last["hook_val_loss"]["ema"].as_f64(),
        };
        println!(
            "xtask: recipes {name}: val loss {}",
            trained
                .val_loss
                .map_or("diverged".into(), |v| format!("{v:.4}"))
        );
        Ok(trained)
    }

    /// `ember ARGS…`, its stdout.
    pub(super) fn ember(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(&self.ember).args(args).output()?;
        if !output.status.success() {
            bail!(
                "ember {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A short recovery run from the model in `from` (a quarter of the steps at a
    /// constant 3e-4, plus `extra` settings), scored by `ember perplexity` on `heldout`.
    pub(super) fn recover(
        &self,
        name: &str,
        from: &str,
        extra: &[String],
        heldout: &str,
    ) -> Result<Option<f64>> {
        let steps = (self.steps / 4).max(1);
        let mut sets: Vec<String> = vec![
            "optim.schedule=\"constant\"".into(),
            "optim.lr=3e-4".into(),
            "optim.warmup_steps=0".into(),
            format!("train.steps={steps}"),
            format!("train.eval_every={steps}"),
        ];
        sets.extend_from_slice(extra);
        self.train(name, &["train", "--init-from", from], &sets)?;
        let measured =
            self.ember(&["perplexity", "--model", &self.path(name), "--data", heldout])?;
        Ok(number_after(&measured, "mean nll:"))
    }

    pub(super) fn path(&self, name: &str) -> String {
        self.out.join(name).display().to_string()
    }
}

/// The number after `key` on the first line of `text` that holds it.
pub(super) fn number_after(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = &line[line.find(key)? + key.len()..];
        let token: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-' || *c == 'e')
            .collect();
        token.parse().ok()
    })
}

pub fn bench(data: &Path, steps: usize, only: Option<&str>) -> Result<()> {
    const SECTIONS: &[&str] = &[
        "losses",
        "schedules",
        "clipping",
        "soup",
        "distill",
        "prune",
        "heads",
        "contrastive",
    ];
    let only: Option<Vec<&str>> = only.map(|o| o.split(',').map(str::trim).collect());
    if let Some(bad) = only.iter().flatten().find(|s| !SECTIONS.contains(s)) {
        bail!(
            "--only {bad}: unknown section (known: {})",
            SECTIONS.join(", ")
        );
    }
    let wants = |section: &str| only.as_ref().is_none_or(|o| o.contains(&section));
    if !data.exists() {
        bail!(
            "{}: benchmark data not found (pass --data FILE)",
            data.display()
        );
    }
    let root = root();
    let out = root.join("target/bench/recipes");
    std::fs::create_dir_all(&out)?;
    let text = std::fs::read_to_string(data)?;
    let cut = text.char_indices().rev().nth(20_000).map_or(0, |(i, _)| i);
    let heldout = out.join("heldout.txt");
    std::fs::write(&heldout, &text[cut..])?;
    let heldout = heldout.display().to_string();
    let b = Bench {
        ember: build_ember()?,
        data: data.to_path_buf(),
        out: out.clone(),
        steps,
    };
    let sets = |items: &[&str]| -> Vec<String> { items.iter().map(|s| s.to_string()).collect() };
    let mut rows = serde_json::Map::new();
    let mut row = |key: &str, value: Option<f64>| {
        rows.insert(key.to_string(), value.map_or(Value::Null, |v| json!(v)));
    };

    // The base run (cosine, norm clipping, plain cross-entropy) keeps an EMA too.
    let base = b.train("base", &["train"], &sets(&["train.ema_decay=0.99"]))?;
    let base_dir = b.path("base");
    let png = out.join("schedules.png");
    row("base_val_loss", base.val_loss);
    row("ema_val_loss", base.ema_val_loss);
    if wants("losses") {
        let smooth = b.train(
            "label-smoothing",
            &["train"],
            &sets(&["train.label_smoothing=0.1"]),
        )?;
        row("label_smoothing_val_loss", smooth.val_loss);
        let z = b.train("z-loss", &["train"], &sets(&["train.z_loss=1e-4"]))?;
        row("z_loss_val_loss", z.val_loss);
    }

    if wants("schedules") {
        // Every schedule; the curves in one plot.
        let third = (steps / 3).max(1);
        let schedules: Vec<(&str, Vec<String>)> = vec![
            ("cosine", Vec::new()),
            ("linear", sets(&["optim.schedule=\"linear\""])),
            ("constant", sets(&["optim.schedule=\"constant\""])),
            ("inverse_sqrt", sets(&["optim.schedule=\"inverse_sqrt\""])),
            ("wsd", sets(&["optim.schedule=\"wsd\""])),
            (
                "one_cycle",
                sets(&["optim.schedule=\"one_cycle\"", "optim.warmup_steps=0"]),
            ),
            (
                "cosine_restarts",
                vec![
                    "optim.schedule=\"cosine_restarts\"".into(),
                    format!("optim.cosine_restarts={{T_0={third}}}"),
                ],
            ),
        ];
        let mut curves = Vec::new();
        for (name, extra) in &schedules {
            let run = if *name == "cosine" {
                Trained {
                    val_loss: base.val_loss,
                    curve: base.curve.clone(),
                    ema_val_loss: None,
                }
            } else {
                b.train(&format!("schedule-{name}"), &["train"], extra)?
            };
            row(&format!("schedule_{name}_val_loss"), run.val_loss);
            curves.push((name.to_string(), run.curve));
        }
        plot_curves(
            &curves,
            "Validation loss by schedule, Tiny Shakespeare, llama preset size",
            "val loss",
            &png,
        )?;
    }

    if wants("clipping") {
        // Clipping at a learning rate 30× the preset's.
        let hot = ["optim.lr=3e-2", "optim.min_lr=3e-3"];
        let norm = b.train("clip-norm-hot", &["train"], &sets(&hot))?;
        let mut agc_sets = sets(&hot);
        agc_sets.extend(sets(&["optim.clip=\"agc\"", "optim.grad_clip=0.01"]));
        let agc = b.train("clip-agc-hot", &["train"], &agc_sets)?;
        row("hot_lr_norm_clip_val_loss", norm.val_loss);
        row("hot_lr_agc_val_loss", agc.val_loss);
    }

    if wants("soup") {
        // Soup: three short fine-tunes of the base run, different data orders.
        let mut members = Vec::new();
        for seed in 1..=3 {
            let name = format!("soup-seed{seed}");
            let fine = vec![
                format!("train.seed={seed}"),
                "optim.schedule=\"constant\"".into(),
                "optim.lr=3e-4".into(),
                "optim.warmup_steps=0".into(),
                format!("train.steps={}", (steps / 4).max(1)),
                format!("train.eval_every={}", (steps / 4).max(1)),
            ];
            b.train(&name, &["train", "--init-from", &base_dir], &fine)?;
            members.push(b.path(&name));
        }
        let mut args = vec!["soup", "--greedy", "--data", &heldout, "--out"];
        let soup_out = b.path("soup");
        args.push(&soup_out);
        args.push("--force");
        args.push("--models");
        args.extend(members.iter().map(String::as_str));
        let soup = b.ember(&args)?;
        let best = soup
            .lines()
            .filter(|l| l.starts_with("ingredient "))
            .filter_map(|l| number_after(l, "val loss"))
            .fold(f64::MAX, f64::min);
        row("soup_best_member_loss", Some(best));
        row("greedy_soup_loss", number_after(&soup, "soup: val loss"));
        row("greedy_soup_members", number_after(&soup, "greedy soup of"));
    }

    if wants("distill") {
        // Distillation: a student a quarter the width, alone and with the base run as teacher.
        let student = sets(&[
            "model.d_model=64",
            "model.n_layers=2",
            "model.n_heads=2",
            "model.n_kv_heads=2",
            "model.d_ff=172",
        ]);
        let alone = b.train("student-alone", &["train"], &student)?;
        let distilled = b.train(
            "student-distilled",
            &[
                "distill",
                "--teacher",
                &base_dir,
                "--alpha",
                "0.5",
                "--temperature",
                "2.0",
            ],
            &student,
        )?;
        row("student_alone_val_loss", alone.val_loss);
        row("student_distilled_val_loss", distilled.val_loss);
    }

    if wants("prune") {
        // 50% magnitude pruning, then a recovery run keeping the masks.
        let pruned = b.path("pruned");
        let report = b.ember(&[
            "prune",
            "--model",
            &base_dir,
            "--sparsity",
            "0.5",
            "--data",
            &heldout,
            "--out",
            &pruned,
            "--force",
        ])?;
        let nll = |text: &str, key: &str| number_after(text, key);
        row("prune_sparsity_pct", number_after(&report, "sparsity:"));
        let before = nll(&report, "(mean nll");
        let after = report
            .lines()
            .find(|l| l.starts_with("perplexity:"))
            .and_then(|l| number_after(&l[l.find("after").unwrap_or(0)..], "(mean nll"));
        row("prune_before_loss", before);
        row("prune_after_loss", after);
        let recovered = b.recover(
            "pruned-recovered",
            &pruned,
            &sets(&["train.prune={sparsity=0.5, start=0, end=1, every=1}"]),
            &heldout,
        )?;
        row("prune_recovered_loss", recovered);
    }

    if wants("heads") {
        heads::rows(&b, &base_dir, &heldout, &mut row)?;
    }
    if wants("contrastive") {
        contrastive::rows(&b, &base_dir, &text, &mut row)?;
    }

    let mut summary = json!({ "bench": "recipes", "steps": steps });
    if let Some(only) = &only {
        summary["only"] = json!(only.join(","));
    }
    summary.as_object_mut().expect("an object").extend(rows);
    println!("{}", summary_line(&summary));
    let json_path = root.join("target/bench/recipes.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&summary)?)?;
    println!("xtask: wrote {} and {}", json_path.display(), png.display());
    Ok(())
}
