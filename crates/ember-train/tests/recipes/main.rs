//! Training recipes end to end: schedules, clipping, losses, freezing, EMA and gradual
//! pruning as configuration settings, resumed exactly; their configuration errors; the
//! contrastive objective (`contrastive.rs`) and head importance (`head_pruning.rs`).

use std::path::{Path, PathBuf};

#[path = "../common/mod.rs"]
mod common;
mod contrastive;
mod head_pruning;
use common::{exclusive, quiet_options, weights};

use burn::backend::{Autodiff, Flex};
use ember_train::{Checkpoint, StepMetrics, TrainConfig, train};

type B = Autodiff<Flex>;

fn corpus(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for i in 0..300 {
        text.push_str(&format!(
            "entry {i}: a small corpus {} with repeated words and numbers.\n",
            i * 11 % 17
        ));
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn config(sets: &[&str]) -> TrainConfig {
    let sets: Vec<String> = [
        "model.d_model=32",
        "model.n_layers=2",
        "model.n_heads=4",
        "model.n_kv_heads=2",
        "model.d_ff=64",
        "model.max_seq_len=16",
        "model.dropout=0.0",
        "train.batch_size=4",
        "train.grad_accum=1",
        "train.eval_every=4",
        "train.eval_batches=2",
        "train.log_every=1",
        "train.checkpoint_every=0",
        "train.batch_shards=1",
    ]
    .iter()
    .chain(sets)
    .map(|s| s.to_string())
    .collect();
    TrainConfig::resolve(Some("tiny"), None, &sets).unwrap()
}

pub(crate) fn metrics(dir: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Every recipe setting at once, so one pair of runs checks they all resume exactly.
const RECIPE: &[&str] = &[
    "optim.schedule=\"one_cycle\"",
    "optim.warmup_steps=0",
    "optim.one_cycle={pct_start=0.25, div_factor=10.0, total_steps=8}",
    "optim.clip=\"agc\"",
    "optim.grad_clip=0.05",
    "train.loss=\"focal\"",
    "train.focal_gamma=1.5",
    "train.z_loss=1e-4",
    "train.ema_decay=0.9",
    "train.prune={sparsity=0.5, start=2, end=6, every=2}",
    "train.freeze=[\"layers.1.mlp.*\"]",
    "train.unfreeze={\"layers.0.attn.*\"=4}",
];

fn param<'a>(w: &'a [(String, Vec<u32>)], name: &str) -> &'a [u32] {
    &w.iter()
        .find(|(path, _)| path.contains(name))
        .unwrap_or_else(|| panic!("no parameter {name}"))
        .1
}

#[test]
fn every_recipe_setting_trains_and_resumes_exactly() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let device = Default::default();
    let run = |out: &str, steps: usize, resume: bool| {
        let mut sets = RECIPE.to_vec();
        let steps = format!("train.steps={steps}");
        sets.push(&steps);
        let options = quiet_options(
            tmp.path().join(out),
            &data,
            resume.then(|| tmp.path().join(out)),
        );
        // One-cycle spans 8 steps whichever invocation runs them.
        train::<B>(config(&sets), &options, &device).unwrap()
    };
    run("initial", 0, false);
    run("straight", 8, false);
    run("split", 4, false);
    let at_four = weights(&tmp.path().join("split/checkpoint"));
    run("split", 8, true);
    let (straight, split) = (
        weights(&tmp.path().join("straight")),
        weights(&tmp.path().join("split")),
    );
    assert!(straight == split, "8 steps differ from 4 + resume + 4");
    for hook in ["ema", "prune"] {
        let file = format!("checkpoint/hook-{hook}.safetensors");
        assert_eq!(
            std::fs::read(tmp.path().join("straight").join(&file)).unwrap(),
            std::fs::read(tmp.path().join("split").join(&file)).unwrap(),
            "{hook}'s state differs after the resume"
        );
    }

    // Frozen weights never move (pruning zeroes some of them, nothing else changes
    // them); the unfrozen ones move only from step 4 on.
    let initial = weights(&tmp.path().join("initial"));
    let untouched = |name: &str, at: &[(String, Vec<u32>)]| {
        param(&initial, name)
            .iter()
            .zip(param(at, name))
            .all(|(a, b)| a == b || f32::from_bits(*b) == 0.0)
    };
    let up = "layers.1.mlp.up_proj.weight";
    assert!(untouched(up, &straight), "frozen {up} trained");
    let q = "layers.0.attn.q_proj.weight";
    let zeros = |w: &[u32]| w.iter().filter(|v| f32::from_bits(**v) == 0.0).count();
    assert!(untouched(q, &at_four), "{q} trained before step 4");
    assert!(!untouched("layers.0.mlp.up_proj.weight", &at_four));
    assert_ne!(param(&at_four, q), param(&straight, q), "{q} never trained");

    // Half of the block weights are zero at the end, and stayed so through the updates.
    let ckpt = Checkpoint::open(&tmp.path().join("straight")).unwrap();
    let model = ckpt.load_model::<Flex>(&device).unwrap();
    let (zero, total) = ember_train::prune::sparsity_of(&model);
    assert!(
        zero * 2 >= total && zero < total * 52 / 100,
        "{zero} of {total} zero"
    );
    let layer = param(&straight, "layers.0.mlp.down_proj.weight");
    assert!(zeros(layer) > 0);

    // The logged rate and the objective's terms.
    let schedule = ckpt.config.optim.schedule(8).unwrap();
    let logged = metrics(&tmp.path().join("straight"));
    assert_eq!(logged.len(), 8);
    for (step, m) in logged.iter().enumerate() {
        assert!((m.lr - schedule.lr_at(step)).abs() < 1e-15, "step {step}");
        assert!(m.objective["z_loss"] > 0.0, "step {step}: z-loss logged");
        assert!(m.train_loss.is_finite());
    }
    assert!(schedule.beta1_at(0).is_some(), "one-cycle cycles β1");
    for m in logged.iter().filter(|m| m.val_loss.is_some()) {
        assert!(m.hook_val_loss["ema"].is_finite(), "step {}", m.step);
        assert_ne!(m.hook_val_loss["ema"], m.val_loss.unwrap());
    }
}

#[test]
fn frozen_parameters_keep_no_optimizer_state() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let device = Default::default();
    let size = |out: &str, sets: &[&str]| {
        let mut sets = sets.to_vec();
        sets.push("train.steps=2");
        let options = quiet_options(tmp.path().join(out), &data, None);
        train::<B>(config(&sets), &options, &device).unwrap();
        ["optim-decay.bin", "optim-no-decay.bin"]
            .iter()
            .map(|f| {
                std::fs::metadata(tmp.path().join(out).join("checkpoint").join(f))
                    .unwrap()
                    .len()
            })
            .sum::<u64>()
    };
    let all = size("all", &[]);
    let frozen = size("frozen", &["train.freeze=[\"layers.*\"]"]);
    // The blocks hold most of the parameters: their moments are gone.
    assert!(frozen * 3 < all, "optimizer state {frozen} vs {all} bytes");
}

#[test]
fn recipe_settings_that_cannot_work_name_their_key() {
    let err = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        TrainConfig::resolve(None, None, &sets)
            .unwrap_err()
            .to_string()
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &["optim.schedule=\"triangle\""],
            "optim.schedule = \"triangle\": expected \"cosine\"",
        ),
        (
            &["optim.clip=\"hard\""],
            "optim.clip = \"hard\": expected \"norm\", \"value\" or \"agc\"",
        ),
        (
            &["optim.one_cycle={pct_start=0.3}"],
            "optim.one_cycle: is set but optim.schedule = \"cosine\"",
        ),
        (&["optim.schedule=\"one_cycle\""], "optim.warmup_steps"),
        (
            &[
                "optim.schedule=\"one_cycle\"",
                "optim.warmup_steps=0",
                "optim.one_cycle={pct_start=1.5}",
            ],
            "optim.one_cycle.pct_start: must be in (0, 1)",
        ),
        (
            &["optim.schedule=\"cosine_restarts\""],
            "optim.cosine_restarts.T_0",
        ),
        (
            &[
                "optim.schedule=\"cosine_restarts\"",
                "optim.cosine_restarts={T_0=0}",
            ],
            "optim.cosine_restarts.T_0: must be at least 1",
        ),
        (
            &["optim.one_cycle={pct_start=0.3, bogus=1}"],
            "optim.one_cycle: unknown field `bogus`",
        ),
        (
            &["optim.wsd={decay_type=\"cubic\"}"],
            "optim.wsd: unknown variant `cubic`",
        ),
        (&["train.unfreeze={\"layers.0.*\"=-3}"], "train.unfreeze:"),
        (
            &["train.prune={sparsity=0.5, start=1, end=4, scope=\"row\"}"],
            "train.prune: unknown variant `row`",
        ),
        (
            &["train.loss=\"hinge\""],
            "train.loss = \"hinge\": expected \"cross_entropy\" or \"focal\"",
        ),
        (
            &["train.loss=\"focal\"", "train.label_smoothing=0.1"],
            "train.label_smoothing: applies to",
        ),
        (
            &["train.focal_alpha=[1.0]"],
            "train.focal_alpha: is set but train.loss is not \"focal\"",
        ),
        (
            &["train.z_loss=-1.0"],
            "train.z_loss: must be a finite number",
        ),
        (
            &["train.ema_decay=1.0"],
            "train.ema_decay: must be in [0, 1)",
        ),
        (
            &["train.prune={sparsity=1.5, start=1, end=2}"],
            "train.prune.sparsity",
        ),
        (
            &["train.prune={sparsity=0.5, start=5, end=2}"],
            "train.prune: start = 5 must come before end = 2",
        ),
    ];
    for (sets, want) in cases {
        let msg = err(sets);
        assert!(msg.contains(want), "{sets:?}: {msg}");
    }
    // Run-time checks: globs that match nothing, α of the wrong length.
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let device = Default::default();
    let fails = |sets: &[&str]| {
        let mut sets = sets.to_vec();
        sets.push("train.steps=1");
        let options = quiet_options(tmp.path().join("run"), &data, None);
        train::<B>(config(&sets), &options, &device)
            .unwrap_err()
            .to_string()
    };
    let msg = fails(&["train.freeze=[\"encoder.*\"]"]);
    assert!(
        msg.contains("train.freeze: `encoder.*` matches no parameter"),
        "{msg}"
    );
    let msg = fails(&["train.unfreeze={\"layers.9.*\"=3}"]);
    assert!(msg.contains("train.unfreeze.\"layers.9.*\""), "{msg}");
    let msg = fails(&["train.freeze=[\"*\"]"]);
    assert!(msg.contains("freezes every parameter"), "{msg}");
    let msg = fails(&["train.loss=\"focal\"", "train.focal_alpha=[1.0, 2.0]"]);
    assert!(
        msg.contains("train.focal_alpha: 2 weights, but the vocabulary has"),
        "{msg}"
    );
}

#[test]
fn captured_modules_are_logged_on_their_steps() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let options = quiet_options(tmp.path().join("run"), &data, None);
    let c = config(&[
        "train.steps=4",
        "train.capture=[\"layers.*.mlp\", \"layers.1\"]",
        "train.capture_every=2",
        "train.freeze=[\"layers.0.mlp.*\"]",
    ]);
    train::<B>(c, &options, &Default::default()).unwrap();
    for m in metrics(&tmp.path().join("run")) {
        if m.step % 2 == 1 {
            assert!(m.capture.is_empty(), "step {}", m.step);
            continue;
        }
        let names: Vec<&str> = m.capture.keys().map(String::as_str).collect();
        assert_eq!(names, ["layers.0.mlp", "layers.1", "layers.1.mlp"]);
        for (name, c) in &m.capture {
            assert!(
                c.stats.rms > 0.0 && c.stats.max_abs >= c.stats.rms,
                "{name}"
            );
            assert!((0.0..=1.0).contains(&c.stats.dead_fraction), "{name}");
        }
        // Gradients reach every captured output, frozen or not (layer 0 still trains its
        // attention).
        for (name, c) in &m.capture {
            let (rms, max) = (
                c.activation_grad_rms.unwrap(),
                c.activation_grad_max_abs.unwrap(),
            );
            assert!(rms > 0.0 && max >= rms, "{name}: {rms} {max}");
        }
        // The frozen module has no gradient; the others do.
        assert_eq!(m.capture["layers.0.mlp"].grad_norm, None);
        assert!(m.capture["layers.1.mlp"].grad_norm.unwrap() > 0.0);
        assert!(m.capture["layers.1"].grad_norm.unwrap() > 0.0);
    }
    let msg = TrainConfig::resolve(None, None, &["train.capture=[\"encoder\"]".to_string()])
        .map(|c| {
            let options = quiet_options(tmp.path().join("bad"), &data, None);
            train::<B>(c, &options, &Default::default())
                .unwrap_err()
                .to_string()
        })
        .unwrap();
    assert!(
        msg.contains("train.capture: `encoder` matches no module"),
        "{msg}"
    );
}
