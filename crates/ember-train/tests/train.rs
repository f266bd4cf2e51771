use std::path::{Path, PathBuf};

mod common;
mod data_parallel;
use common::{exclusive, quiet_options, weights};

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use ember_nn::{ForwardOptions, Transformer, TransformerConfig, param_infos};
use ember_optim::{AdamWGroups, AdamWSettings, decay_matrices};
use ember_train::{Checkpoint, CrossEntropy, LmLoss, TrainConfig, TrainOptions, train};

type B = Autodiff<Flex>;

/// A small corpus built by the test: a few thousand characters of varied text.
fn corpus(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for i in 0..400 {
        text.push_str(&format!(
            "line {i}: the quick brown fox {} jumps over the lazy dog.\n",
            i * 7 % 13
        ));
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn small_config(steps: usize) -> TrainConfig {
    let overrides: Vec<String> = [
        "model.d_model=32",
        "model.n_layers=2",
        "model.n_heads=4",
        "model.n_kv_heads=2",
        "model.d_ff=64",
        "model.max_seq_len=16",
        "model.dropout=0.1",
        "train.batch_size=4",
        "train.grad_accum=2",
        "train.eval_every=5",
        "train.eval_batches=2",
        "train.log_every=1",
        "train.checkpoint_every=0",
        "optim.warmup_steps=3",
        "optim.decay_steps=20",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("train.steps={steps}")])
    .collect();
    TrainConfig::resolve(Some("tiny"), None, &overrides).unwrap()
}

#[test]
fn ten_steps_then_resume_ten_equals_twenty_straight() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let device = Default::default();
    let run = |out: &str, steps: usize, resume: Option<PathBuf>| {
        let options = quiet_options(tmp.path().join(out), &data, resume);
        train::<B>(small_config(steps), &options, &device).unwrap()
    };
    let straight = run("straight", 20, None);
    run("split", 10, None);
    let resumed = run("split", 20, Some(tmp.path().join("split")));
    assert_eq!(straight.step, 20);
    assert_eq!(resumed.step, 20);
    assert!(
        weights(&tmp.path().join("straight")) == weights(&tmp.path().join("split")),
        "weights after 20 steps differ from 10 + resume + 10"
    );
    // The sampler position and losses match too.
    let a = Checkpoint::open(&tmp.path().join("straight")).unwrap();
    let b = Checkpoint::open(&tmp.path().join("split")).unwrap();
    assert_eq!(a.state.sampler, b.state.sampler);
    assert_eq!(a.state.last_train_loss, b.state.last_train_loss);
    // Metrics accumulate across the resume: 20 step records.
    let metrics = std::fs::read_to_string(tmp.path().join("split/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 20);
    // `batch_shards = 0` (the preset's) with dropout keeps each micro-batch whole, so the
    // run stays reproducible.
    for line in metrics.lines() {
        let record: ember_train::StepMetrics = serde_json::from_str(line).unwrap();
        assert_eq!(record.batch_shards, 1, "{line}");
    }
    // A different run (no resume) diverges from these weights: the check can fail.
    run("other", 12, None);
    assert!(weights(&tmp.path().join("other")) != weights(&tmp.path().join("straight")));
}

/// `(train_loss, grad_norm)` of every step in a run's metrics.
fn loss_and_grad_norm(dir: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let record: ember_train::StepMetrics = serde_json::from_str(line).unwrap();
            (record.train_loss, record.grad_norm)
        })
        .collect()
}

#[test]
fn sharded_micro_batches_train_like_whole_ones() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let run = |out: &str, shards: usize, moe: bool| {
        let options = quiet_options(tmp.path().join(out), &data, None);
        let mut config = small_config(4);
        config.model.dropout = 0.0;
        // 5 rows: 2 shards hold 3 and 2 rows, 3 shards 2, 2 and 1.
        config.train.batch_size = 5;
        config.train.batch_shards = shards;
        if moe {
            config.model.moe = Some(ember_nn::MoeConfig {
                n_experts: 4,
                top_k: 2,
                renormalize: true,
                capacity_factor: None,
                aux_loss_coef: 0.01,
                z_loss_coef: 0.001,
            });
        }
        train::<B>(config, &options, &Default::default()).unwrap();
        tmp.path().join(out)
    };
    let whole = run("whole", 1, false);
    for shards in [2, 3] {
        let sharded = run(&format!("sharded-{shards}"), shards, false);
        let metrics = std::fs::read_to_string(sharded.join("metrics.jsonl")).unwrap();
        for line in metrics.lines() {
            let record: ember_train::StepMetrics = serde_json::from_str(line).unwrap();
            assert_eq!(record.batch_shards, shards, "{line}");
        }
        // Per step: the mean loss and the gradient norm before clipping (a shard weighted
        // wrongly changes the norm even where AdamW's update would hide it).
        for (step, (a, b)) in loss_and_grad_norm(&whole)
            .iter()
            .zip(loss_and_grad_norm(&sharded))
            .enumerate()
        {
            assert!(
                (a.0 - b.0).abs() < 1e-5 * a.0,
                "step {step}: loss {} vs {}",
                a.0,
                b.0
            );
            assert!(
                (a.1 - b.1).abs() < 1e-4 * a.1,
                "step {step}: grad norm {} vs {}",
                a.1,
                b.1
            );
        }
        for ((name, a), (_, b)) in weights(&whole).iter().zip(weights(&sharded)) {
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (f32::from_bits(*x) - f32::from_bits(*y)).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-5, "{name}: weights differ by {worst}");
        }
    }
    // MoE: the routing statistics of the shards add up, and the first step (before any
    // update) sees the same language-model loss.
    let whole = loss_and_grad_norm(&run("moe-whole", 1, true));
    let sharded = loss_and_grad_norm(&run("moe-sharded", 2, true));
    assert!((whole[0].0 - sharded[0].0).abs() < 1e-5 * whole[0].0);
    let metrics = std::fs::read_to_string(tmp.path().join("moe-sharded/metrics.jsonl")).unwrap();
    let record: ember_train::StepMetrics =
        serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let shares = record.expert_load.unwrap();
    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
}

/// The largest absolute difference between the weights of two checkpoints, by parameter
/// (the parameter names must agree).
fn worst_weight_diff(a: &Path, b: &Path) -> (String, f32) {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(
        a.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        b.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let mut worst = (String::new(), 0f32);
    for ((name, a), (_, b)) in a.iter().zip(&b) {
        assert_eq!(a.len(), b.len(), "{name}");
        for (x, y) in a.iter().zip(b) {
            let d = (f32::from_bits(*x) - f32::from_bits(*y)).abs();
            if d.is_nan() || d > worst.1 {
                worst = (name.clone(), d);
            }
        }
    }
    worst
}

/// `batch_size = B·k, grad_accum = 1` and `batch_size = B, grad_accum = k` draw the same
/// rows (the sampler draws one window per row, in order, so k micro-batches of B rows are
/// the B·k rows of one batch) and weight them alike: the same loss and gradient norm at
/// every step and the same weights after, sharded or not. Without dropout, so the only
/// differences are the order of float sums.
#[test]
fn gradient_accumulation_equals_one_large_batch() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let run = |batch_size: usize, grad_accum: usize, shards: usize| {
        let out = tmp
            .path()
            .join(format!("b{batch_size}-k{grad_accum}-s{shards}"));
        let options = quiet_options(out.clone(), &data, None);
        let mut config = small_config(3);
        config.model.dropout = 0.0;
        config.train.batch_size = batch_size;
        config.train.grad_accum = grad_accum;
        config.train.batch_shards = shards;
        // Evaluation draws `batch_size` rows, which differ here; it changes nothing else.
        config.train.eval_every = 0;
        let summary = train::<B>(config, &options, &Default::default()).unwrap();
        assert_eq!(summary.tokens_per_step, batch_size * grad_accum * 16);
        out
    };
    for shards in [1, 2] {
        let whole = run(8, 1, shards);
        let whole_metrics = loss_and_grad_norm(&whole);
        assert_eq!(whole_metrics.len(), 3);
        for (batch_size, grad_accum) in [(4, 2), (2, 4)] {
            let accumulated = run(batch_size, grad_accum, shards);
            let what = format!("batch {batch_size} × accum {grad_accum}, {shards} shard(s)");
            let metrics = loss_and_grad_norm(&accumulated);
            assert_eq!(metrics.len(), whole_metrics.len(), "{what}");
            for (step, (a, b)) in whole_metrics.iter().zip(&metrics).enumerate() {
                assert!(
                    (a.0 - b.0).abs() <= 1e-6 * a.0,
                    "{what}, step {step}: loss {} vs {}",
                    a.0,
                    b.0
                );
                assert!(
                    (a.1 - b.1).abs() <= 1e-6 * a.1,
                    "{what}, step {step}: grad norm {} vs {}",
                    a.1,
                    b.1
                );
            }
            let (name, worst) = worst_weight_diff(&whole, &accumulated);
            let (a, b) = (whole_metrics[0], metrics[0]);
            println!(
                "{what}: step-1 loss {} vs {}, grad norm {} vs {}; weights differ by at most {worst} ({name})",
                a.0, b.0, a.1, b.1
            );
            assert!(worst <= 1e-6, "{what}: {name} differs by {worst}");
            // The same rows were drawn: the samplers stand at the same place.
            let a = Checkpoint::open(&whole).unwrap();
            let b = Checkpoint::open(&accumulated).unwrap();
            assert_eq!(a.state.sampler, b.state.sampler, "{what}");
            assert_eq!(a.state.tokens_seen, b.state.tokens_seen, "{what}");
        }
    }
    // The comparison can fail: 8 rows in one step are not 4 rows in each of two steps.
    let half = loss_and_grad_norm(&run(4, 1, 1))[0].0;
    let whole = loss_and_grad_norm(&tmp.path().join("b8-k1-s1"))[0].0;
    assert!((half - whole).abs() > 1e-4, "{half} vs {whole}");
}

/// A sharded run (`train.batch_shards = 2`) stopped at step 6 with its checkpoint and
/// resumed to step 12 repeats the uninterrupted sharded run bit for bit: losses, gradient
/// norms, weights and sampler.
#[test]
fn sharded_run_resumes_exactly() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let run = |out: &str, steps: usize, resume: Option<PathBuf>| {
        let options = quiet_options(tmp.path().join(out), &data, resume);
        let mut config = small_config(steps);
        // Dropout masks drawn by concurrent shards would depend on thread timing.
        config.model.dropout = 0.0;
        config.train.batch_shards = 2;
        config.train.checkpoint_every = 3;
        train::<B>(config, &options, &Default::default()).unwrap()
    };
    let straight = run("straight", 12, None);
    let stopped = run("split", 6, None);
    assert_eq!(stopped.step, 6);
    assert!(
        weights(&tmp.path().join("split")) != weights(&tmp.path().join("straight")),
        "the interrupted run holds step-6 weights"
    );
    let resumed = run("split", 12, Some(tmp.path().join("split")));
    assert_eq!((straight.step, resumed.step), (12, 12));
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("split"));
    let (name, worst) = worst_weight_diff(&a, &b);
    assert!(
        worst == 0.0,
        "{name}: weights differ by {worst} after the resume"
    );
    let straight_metrics = loss_and_grad_norm(&a);
    let resumed_metrics = loss_and_grad_norm(&b);
    assert_eq!(straight_metrics.len(), 12);
    assert_eq!(resumed_metrics, straight_metrics, "losses and grad norms");
    for line in std::fs::read_to_string(b.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let record: ember_train::StepMetrics = serde_json::from_str(line).unwrap();
        assert_eq!(record.batch_shards, 2, "{line}");
    }
    let (a, b) = (Checkpoint::open(&a).unwrap(), Checkpoint::open(&b).unwrap());
    assert_eq!(a.state.sampler, b.state.sampler);
    assert_eq!(a.state.tokens_seen, b.state.tokens_seen);
    assert_eq!(a.state.last_train_loss, b.state.last_train_loss);
    assert_eq!(a.state.last_val_loss, b.state.last_val_loss);
}

#[test]
fn batch_shards_beyond_the_batch_are_refused() {
    let mut config = small_config(2);
    config.train.batch_shards = 5;
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("train.batch_shards") && err.contains("train.batch_size = 4"),
        "{err}"
    );
}

#[test]
fn zero_steps_write_the_initial_model_that_training_starts_from() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let run = |out: &str, steps: usize, resume: Option<PathBuf>| {
        let options = quiet_options(tmp.path().join(out), &data, resume);
        train::<B>(small_config(steps), &options, &Default::default()).unwrap()
    };
    let init = run("init", 0, None);
    assert_eq!(init.step, 0);
    assert!(init.last_train_loss.is_none());
    // The benchmark's PyTorch reference starts from this checkpoint's weights, and Ember's
    // timed run resumes from it: the same as training from scratch.
    run("from-init", 6, Some(tmp.path().join("init")));
    run("straight", 6, None);
    assert!(weights(&tmp.path().join("from-init")) == weights(&tmp.path().join("straight")));
    let fresh = run("other-init", 0, None);
    assert_eq!(fresh.step, 0);
    assert!(weights(&tmp.path().join("init")) == weights(&tmp.path().join("other-init")));
    assert!(weights(&tmp.path().join("init")) != weights(&tmp.path().join("straight")));
}

#[test]
fn moe_training_logs_its_losses_and_expert_load() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let options = TrainOptions {
        out_dir: tmp.path().join("moe"),
        data: vec![corpus(tmp.path())],
        resume: None,
        force: false,
        verbose: false,
        cpu_backend: true,
    };
    let mut config = small_config(4);
    config.model.moe = Some(ember_nn::MoeConfig {
        n_experts: 4,
        top_k: 2,
        renormalize: true,
        capacity_factor: Some(0.5),
        aux_loss_coef: 0.01,
        z_loss_coef: 0.001,
    });
    let summary = train::<B>(config, &options, &Default::default()).unwrap();
    let load = summary
        .expert_load
        .expect("an MoE run reports its expert load");
    assert_eq!(load.len(), 4);
    assert!((load.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    let metrics = std::fs::read_to_string(tmp.path().join("moe/metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        let record: ember_train::StepMetrics = serde_json::from_str(line).unwrap();
        // About 1 per layer (2 layers) near balance.
        let balance = record.moe_balance_loss.unwrap();
        assert!(balance > 1.0 && balance < 4.0, "{line}");
        assert!(record.moe_z_loss.unwrap() > 0.0);
        // A capacity of half the even share drops assignments.
        assert!(record.moe_dropped.unwrap() > 0, "{line}");
        let shares = record.expert_load.unwrap();
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
    // Dense models log none of it.
    let dense = TrainOptions {
        out_dir: tmp.path().join("dense"),
        ..options
    };
    let summary = train::<B>(small_config(2), &dense, &Default::default()).unwrap();
    assert!(summary.expert_load.is_none());
    let metrics = std::fs::read_to_string(tmp.path().join("dense/metrics.jsonl")).unwrap();
    assert!(!metrics.contains("expert_load"));
}

#[test]
fn resume_with_a_different_model_is_refused() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let options = TrainOptions {
        out_dir: tmp.path().join("run"),
        data: data.clone(),
        resume: None,
        force: false,
        verbose: false,
        cpu_backend: true,
    };
    train::<B>(small_config(2), &options, &Default::default()).unwrap();
    let mut config = small_config(4);
    config.model.n_layers = 3;
    let options = TrainOptions {
        resume: Some(tmp.path().join("run")),
        force: false,
        ..options
    };
    let err = train::<B>(config, &options, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.n_layers: checkpoint 2, now 3"), "{err}");
}

#[test]
fn overfits_one_batch() {
    let _turn = exclusive();
    let device = Default::default();
    let config = TransformerConfig::gpt2(20, 32, 2, 4, 16);
    let mut model = Transformer::<B>::new(&config, &device).unwrap();
    let inputs: Vec<i64> = (0..32).map(|i| (i * 7 % 20) as i64).collect();
    let targets: Vec<i64> = (0..32).map(|i| ((i * 7 + 3) % 20) as i64).collect();
    let inputs = Tensor::<B, 2, Int>::from_data(TensorData::new(inputs, [2, 16]), &device);
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [2, 16]), &device);
    let settings = AdamWSettings {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let params = param_infos::<B, _>(&model)
        .into_iter()
        .map(|p| (p.id, p.path, p.shape));
    let mut optim = AdamWGroups::new(&settings, params, decay_matrices);
    let loss_fn = CrossEntropy::<B>::new(None, &device);
    let mut loss = f64::MAX;
    for _ in 0..200 {
        let logits = model.forward(inputs.clone(), ForwardOptions::default());
        let l = loss_fn.loss(logits, targets.clone());
        loss = l.clone().into_scalar().elem();
        if loss < 0.05 {
            break;
        }
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    assert!(loss < 0.05, "loss after 200 steps: {loss}");
    assert!(model.num_params() > 0);
}

#[test]
fn config_errors_name_the_key_or_flag() {
    let err = |preset: Option<&str>, sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        TrainConfig::resolve(preset, None, &sets)
            .unwrap_err()
            .to_string()
    };
    assert!(err(Some("gpt5"), &[]).contains(
        "--preset gpt5: unknown preset (known: tiny, nanogpt-cpu, gpt2, llama, mistral, mixtral)"
    ));
    // Architecture values: serde names unknown variants, validation names bad values.
    let msg = err(
        Some("llama"),
        &["model.rope_scaling={type=\"cubic\", factor=2.0}"],
    );
    assert!(msg.contains("unknown variant `cubic`"), "{msg}");
    let msg = err(Some("llama"), &["model.sliding_window=0"]);
    assert!(
        msg.contains("model.sliding_window: must be at least 1"),
        "{msg}"
    );
    let msg = err(Some("mixtral"), &["model.moe={n_experts=4, top_k=6}"]);
    assert!(
        msg.contains("model.moe.top_k: must be between 1 and n_experts = 4, got 6"),
        "{msg}"
    );
    let msg = err(None, &["train.matmul_precision=fp8"]);
    assert!(
        msg.contains("train.matmul_precision = \"fp8\": expected \"f32\" or \"bf16\""),
        "{msg}"
    );
    let msg = err(Some("llama"), &["model.position=\"spiral\""]);
    assert!(msg.contains("unknown variant `spiral`"), "{msg}");
    let msg = err(
        Some("llama"),
        &["model.n_heads=8", "model.n_kv_heads=8", "model.d_model=120"],
    );
    assert!(msg.contains("even rotary dimension"), "{msg}");
    // Optional architecture keys can be added to any preset.
    let c = TrainConfig::resolve(
        Some("llama"),
        None,
        &[
            "model.sliding_window=32".to_string(),
            "model.rope_scaling={type=\"llama3\", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq=32}".to_string(),
        ],
    )
    .unwrap();
    assert_eq!(c.model.sliding_window, Some(32));
    for preset in ["gpt2", "llama", "mistral", "mixtral"] {
        TrainConfig::preset(preset).unwrap();
    }
    assert!(err(None, &["train.stepz=3"]).contains("unknown key `train.stepz`"));
    assert!(err(None, &["trian.steps=3"]).contains("unknown section `trian`"));
    assert!(err(None, &["steps=3"]).contains("expected section.key=value"));
    assert!(err(None, &["optim.lr=0"]).contains("optim.lr: must be positive"));
    assert!(err(None, &["optim.lr=-1e-3"]).contains("optim.lr: must be positive"));
    assert!(
        err(None, &["model.d_model=130"])
            .contains("model.d_model: 130 is not divisible by n_heads = 4")
    );
    assert!(err(None, &["model.n_kv_heads=3"]).contains("model.n_kv_heads"));
    assert!(err(None, &["train.steps=many"]).contains("train.steps"));
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[train\nsteps = 3").unwrap();
    let msg = TrainConfig::resolve(None, Some(&bad), &[])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("bad.toml: malformed TOML"), "{msg}");
    std::fs::write(&bad, "[train]\nstepz = 3").unwrap();
    let msg = TrainConfig::resolve(None, Some(&bad), &[])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("unknown key `train.stepz`"), "{msg}");
    // The nanoGPT preset is exactly nanoGPT's CPU configuration.
    let c = TrainConfig::preset("nanogpt-cpu").unwrap();
    assert_eq!(
        (
            c.model.n_layers,
            c.model.n_heads,
            c.model.d_model,
            c.model.max_seq_len
        ),
        (4, 4, 128, 64)
    );
    assert_eq!(
        (
            c.train.batch_size,
            c.train.steps,
            c.optim.warmup_steps,
            c.optim.decay_steps
        ),
        (12, 2000, 100, 2000)
    );
    assert_eq!(
        (
            c.optim.lr,
            c.optim.min_lr,
            c.optim.beta2,
            c.optim.weight_decay
        ),
        (1e-3, 1e-4, 0.99, 0.1)
    );
    assert_eq!(
        (
            c.optim.grad_clip,
            c.model.dropout,
            c.train.eval_every,
            c.train.eval_batches
        ),
        (1.0, 0.0, 250, 20)
    );
}

/// Two runs logged the same losses and gradient norms at every step (to 1e-6 relative)
/// and ended with the same weights (to 1e-6).
fn assert_trained_alike(what: &str, a: &Path, b: &Path) {
    let (a_metrics, b_metrics) = (loss_and_grad_norm(a), loss_and_grad_norm(b));
    assert_eq!(a_metrics.len(), b_metrics.len(), "{what}");
    for (step, (x, y)) in a_metrics.iter().zip(&b_metrics).enumerate() {
        assert!(
            (x.0 - y.0).abs() <= 1e-6 * x.0 && (x.1 - y.1).abs() <= 1e-6 * x.1,
            "{what}, step {step}: loss {} vs {}, grad norm {} vs {}",
            x.0,
            y.0,
            x.1,
            y.1
        );
    }
    let (param, worst) = worst_weight_diff(a, b);
    assert!(worst <= 1e-6, "{what}: {param} differs by {worst}");
}

/// `train.activation_checkpointing` changes what the backward pass keeps, not what it
/// computes: every setting trains like `"none"` (losses, gradient norms and weights), with
/// dropout (the same masks), gradient accumulation, batch shards and MoE.
#[test]
fn activation_checkpointing_trains_like_none() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let run = |name: &str, setting: &str, dropout: f64, shards: usize, moe: bool| {
        let out = tmp
            .path()
            .join(format!("{name}-{}", setting.replace(':', "")));
        let options = quiet_options(out.clone(), &data, None);
        let mut config = small_config(3);
        config.model.n_layers = 4;
        config.model.dropout = dropout;
        config.train.batch_shards = shards;
        config.train.eval_every = 0;
        config.train.activation_checkpointing = setting.parse().unwrap();
        if moe {
            config.model.moe = Some(ember_nn::MoeConfig {
                n_experts: 4,
                top_k: 2,
                renormalize: true,
                capacity_factor: None,
                aux_loss_coef: 0.01,
                z_loss_coef: 0.001,
            });
        }
        if setting == "selective" {
            train::<Autodiff<Flex, BalancedCheckpointing>>(config, &options, &Default::default())
                .unwrap();
        } else {
            train::<B>(config, &options, &Default::default()).unwrap();
        }
        out
    };
    for (name, dropout, shards, moe) in [
        ("dropout", 0.1, 1, false),
        ("sharded", 0.0, 2, false),
        ("moe", 0.0, 1, true),
    ] {
        let plain = run(name, "none", dropout, shards, moe);
        for setting in ["blocks", "every:2", "selective"] {
            let what = format!("{name}, {setting}");
            let checkpointed = run(name, setting, dropout, shards, moe);
            assert_eq!(loss_and_grad_norm(&checkpointed).len(), 3, "{what}");
            assert_trained_alike(&what, &plain, &checkpointed);
        }
    }
}

#[test]
fn activation_checkpointing_settings_are_checked() {
    let resolve = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        TrainConfig::resolve(Some("tiny"), None, &sets)
    };
    let err = resolve(&["train.activation_checkpointing=every:0"]).unwrap_err();
    assert!(
        err.0.contains("train.activation_checkpointing") && err.0.contains("every:N"),
        "{err}"
    );
    let err = resolve(&[
        "train.activation_checkpointing=blocks",
        "model.dropout=0.1",
        "train.batch_size=4",
        "train.batch_shards=2",
    ])
    .unwrap_err();
    assert!(
        err.0.starts_with("train.activation_checkpointing") && err.0.contains("batch_shards"),
        "{err}"
    );
    // "selective" is a property of the autodiff backend: one that keeps every output
    // refuses it.
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let options = quiet_options(tmp.path().join("out"), &data, None);
    let mut config = small_config(1);
    config.train.activation_checkpointing = ember_nn::ActivationCheckpointing::Selective;
    let err = train::<B>(config, &options, &Default::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("train.activation_checkpointing = \"selective\""),
        "{err}"
    );
    let ok = resolve(&["train.activation_checkpointing=every:3"]).unwrap();
    assert_eq!(
        ok.train.activation_checkpointing,
        ember_nn::ActivationCheckpointing::Every(3)
    );
}

#[test]
fn precision_settings_are_checked() {
    let resolve = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        TrainConfig::resolve(Some("tiny"), None, &sets)
    };
    let err = resolve(&["train.precision=bf16"]).unwrap_err();
    assert!(
        err.0.contains("train.precision = \"bf16\"") && err.0.contains("\"bf16-mixed\""),
        "{err}"
    );
    let err = resolve(&["train.precision=f16-mixed", "train.matmul_precision=bf16"]).unwrap_err();
    assert!(
        err.0.starts_with("train.matmul_precision") && err.0.contains("f16-mixed"),
        "{err}"
    );
    let ok = resolve(&["train.precision=bf16-mixed"]).unwrap();
    assert_eq!(ok.train.precision, ember_train::Precision::Bf16Mixed);
}

/// `data.packing = true` on JSONL documents of varied lengths: windows carry document
/// masks and restarting positions, boundary targets are ignored, and accumulation weighs
/// micro-batches by the targets they train (which differ between micro-batches here), so
/// `batch_size = 8` equals `4 × grad_accum 2` and `2 × grad_accum 4`, sharded or not.
#[test]
fn packed_documents_accumulate_by_tokens() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for i in 0..300 {
        let words = 1 + (i * 7) % 9;
        let text: Vec<String> = (0..words).map(|w| format!("w{}", (i + w) % 13)).collect();
        lines.push_str(&format!("{{\"text\": \"{}\"}}\n", text.join(" ")));
    }
    let data = vec![tmp.path().join("docs.jsonl")];
    std::fs::write(&data[0], lines).unwrap();
    let run = |batch_size: usize, grad_accum: usize, shards: usize| {
        let out = tmp
            .path()
            .join(format!("b{batch_size}-k{grad_accum}-s{shards}"));
        let options = quiet_options(out.clone(), &data, None);
        let mut config = small_config(3);
        config.data.packing = true;
        config.model.dropout = 0.0;
        config.train.batch_size = batch_size;
        config.train.grad_accum = grad_accum;
        config.train.batch_shards = shards;
        config.train.eval_every = 3;
        let summary = train::<B>(config, &options, &Default::default()).unwrap();
        assert!(summary.last_val_loss.unwrap().is_finite());
        out
    };
    for shards in [1, 2] {
        let whole = run(8, 1, shards);
        for (batch_size, grad_accum) in [(4, 2), (2, 4)] {
            let accumulated = run(batch_size, grad_accum, shards);
            let what =
                format!("packed, batch {batch_size} × accum {grad_accum}, {shards} shard(s)");
            assert_trained_alike(&what, &whole, &accumulated);
        }
    }
    // Packing changes the run: the same windows without document masks train otherwise.
    let unpacked = {
        let out = tmp.path().join("unpacked");
        let options = quiet_options(out.clone(), &data, None);
        let mut config = small_config(3);
        config.model.dropout = 0.0;
        config.train.batch_size = 8;
        config.train.grad_accum = 1;
        config.train.batch_shards = 1;
        config.train.eval_every = 3;
        train::<B>(config, &options, &Default::default()).unwrap();
        loss_and_grad_norm(&out)
    };
    let packed = loss_and_grad_norm(&tmp.path().join("b8-k1-s1"));
    assert!((unpacked[0].0 - packed[0].0).abs() > 1e-4);
}
