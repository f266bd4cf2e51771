//! Data-parallel training with the ranks as threads ([`LocalGroup`]): the same run as one
//! process with the same global batch, rank 0 alone writing, exact resumes. (The MPI
//! path over processes is tested in ember-cli's `data_parallel` tests.)

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::common::{exclusive, quiet_options, weights};
use super::{B, corpus, loss_and_grad_norm, small_config, worst_weight_diff};
use ember_train::ddp::{Collective as _, DataParallel, LocalGroup, SharedCollective};
use ember_train::{Checkpoint, TrainConfig, TrainError, TrainExtras, train, train_with};

/// Without dropout (the ranks' masks would differ from one process's), sharded by rank
/// only.
fn dp_config(steps: usize, overrides: &[&str]) -> TrainConfig {
    let mut config = small_config(steps);
    config.model.dropout = 0.0;
    config.train.batch_shards = 1;
    config.train.eval_every = 3;
    for o in overrides {
        let (key, value) = o.split_once('=').unwrap();
        match key {
            "batch_size" => config.train.batch_size = value.parse().unwrap(),
            "grad_accum" => config.train.grad_accum = value.parse().unwrap(),
            "batch_shards" => config.train.batch_shards = value.parse().unwrap(),
            _ => panic!("{key}"),
        }
    }
    config
}

/// The weights a fresh run of `config` starts from (a run of 0 steps writes them).
fn initial_weights(config: &TrainConfig, data: &[PathBuf], dir: &Path) -> PathBuf {
    let mut zero = config.clone();
    zero.train.steps = 0;
    train::<B>(
        zero,
        &quiet_options(dir.to_path_buf(), data, None),
        &Default::default(),
    )
    .unwrap();
    dir.join("checkpoint")
}

/// Runs `config` as `world` ranks (threads); rank 0 writes in `out`. A fresh run starts
/// every rank from `init`'s weights (the threads would otherwise draw their random
/// initializations from the device's one generator at once; rank 0's is broadcast).
fn run_ranks(
    world: usize,
    config: &TrainConfig,
    data: &[PathBuf],
    out: &Path,
    init: Option<&Path>,
    resume: Option<&Path>,
) -> Vec<Result<ember_train::TrainSummary, TrainError>> {
    let groups = LocalGroup::new(world, Duration::from_secs(60));
    std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|group| {
                let config = config.clone();
                // Ranks above 0 are given a directory they must not write to.
                let out = match group.rank() {
                    0 => out.to_path_buf(),
                    r => out.with_extension(format!("rank{r}-unused")),
                };
                let options = quiet_options(out, data, resume.map(Path::to_path_buf));
                s.spawn(move || {
                    let collective: SharedCollective = Arc::new(Mutex::new(group));
                    let mut extras = TrainExtras::<B> {
                        data_parallel: Some(DataParallel::new(collective)),
                        ..Default::default()
                    };
                    if let Some(init) = init {
                        let model = Checkpoint::open(init)
                            .unwrap()
                            .load_model::<B>(&Default::default())
                            .unwrap();
                        extras.initial_model = Some(model);
                    }
                    train_with::<B>(config, &options, extras, &Default::default())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn val_losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|line| {
            serde_json::from_str::<ember_train::StepMetrics>(line)
                .unwrap()
                .val_loss
        })
        .collect()
}

/// Every step's loss and gradient norm, the validation losses and the final weights of
/// the rank-0 run in `b` equal the single-process run in `a` to `tol`.
fn assert_same_run(a: &Path, b: &Path, tol: f64) {
    let (sa, sb) = (loss_and_grad_norm(a), loss_and_grad_norm(b));
    assert_eq!(sa.len(), sb.len());
    for (step, ((la, ga), (lb, gb))) in sa.iter().zip(&sb).enumerate() {
        assert!(
            (la - lb).abs() <= tol,
            "step {}: loss {la} vs {lb}",
            step + 1
        );
        assert!(
            (ga - gb).abs() <= tol,
            "step {}: grad norm {ga} vs {gb}",
            step + 1
        );
    }
    let (va, vb) = (val_losses(a), val_losses(b));
    assert_eq!(va.len(), vb.len());
    for (x, y) in va.iter().zip(&vb) {
        assert!((x - y).abs() <= tol, "val loss {x} vs {y}");
    }
    let (name, worst) = worst_weight_diff(&a.join("checkpoint"), &b.join("checkpoint"));
    assert!(f64::from(worst) <= tol, "{name}: weights differ by {worst}");
}

fn ddp_equals_one_process(world: usize, overrides: &[&str]) {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let config = dp_config(6, overrides);
    let init = initial_weights(&config, &data, &tmp.path().join("init"));
    let single = tmp.path().join("single");
    train::<B>(
        config.clone(),
        &quiet_options(single.clone(), &data, None),
        &Default::default(),
    )
    .unwrap();
    let ddp = tmp.path().join("ddp");
    for result in run_ranks(world, &config, &data, &ddp, Some(&init), None) {
        result.unwrap();
    }
    assert_same_run(&single, &ddp, 1e-5);
    // Rank 0 alone wrote: the others' directories were never made.
    for r in 1..world {
        assert!(!ddp.with_extension(format!("rank{r}-unused")).exists());
    }
}

#[test]
fn two_ranks_train_like_one_process_with_the_same_global_batch() {
    ddp_equals_one_process(2, &["batch_size=4", "grad_accum=2"]);
}

#[test]
fn three_ranks_with_uneven_shares_train_like_one_process() {
    // 5 rows: shares of 2, 2 and 1.
    ddp_equals_one_process(3, &["batch_size=5", "grad_accum=1"]);
}

#[test]
fn ranks_with_batch_shards_inside_train_like_one_process() {
    ddp_equals_one_process(2, &["batch_size=8", "grad_accum=1", "batch_shards=2"]);
}

#[test]
fn a_data_parallel_run_resumes_exactly_with_the_same_ranks_and_closely_with_others() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let config = dp_config(6, &["batch_size=4", "grad_accum=1"]);
    let init = initial_weights(&config, &data, &tmp.path().join("init"));
    let straight = tmp.path().join("straight");
    for result in run_ranks(2, &config, &data, &straight, Some(&init), None) {
        result.unwrap();
    }
    let half = tmp.path().join("half");
    for result in run_ranks(
        2,
        &config_with_steps(&config, 3),
        &data,
        &half,
        Some(&init),
        None,
    ) {
        result.unwrap();
    }
    // Same world size: bit-exact.
    let same = tmp.path().join("same");
    for result in run_ranks(2, &config, &data, &same, None, Some(&half)) {
        result.unwrap();
    }
    assert_eq!(
        weights(&same.join("checkpoint")),
        weights(&straight.join("checkpoint"))
    );
    // Another world size (1 and 3): the same global batches, sums in another order.
    let one = tmp.path().join("one");
    train::<B>(
        config.clone(),
        &quiet_options(one.clone(), &data, Some(half.clone())),
        &Default::default(),
    )
    .unwrap();
    let three = tmp.path().join("three");
    for result in run_ranks(3, &config, &data, &three, None, Some(&half)) {
        result.unwrap();
    }
    for other in [&one, &three] {
        let (name, worst) =
            worst_weight_diff(&other.join("checkpoint"), &straight.join("checkpoint"));
        assert!(
            worst <= 1e-5,
            "{}: {name} differs by {worst}",
            other.display()
        );
    }
}

/// `config` stopping after `steps` (its schedule is set by `optim.decay_steps`, not by
/// `train.steps`, so the two halves follow the straight run's learning rates).
fn config_with_steps(config: &TrainConfig, steps: usize) -> TrainConfig {
    let mut c = config.clone();
    c.train.steps = steps;
    c
}

#[test]
fn ranks_given_different_runs_are_refused_naming_the_difference() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let config = dp_config(2, &[]);
    let groups = LocalGroup::new(2, Duration::from_secs(60));
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|group| {
                let mut config = config.clone();
                if group.rank() == 1 {
                    config.optim.lr *= 2.0;
                }
                let options =
                    quiet_options(tmp.path().join(format!("out{}", group.rank())), &data, None);
                s.spawn(move || {
                    let extras = TrainExtras::<B> {
                        data_parallel: Some(DataParallel::new(Arc::new(Mutex::new(group)))),
                        ..Default::default()
                    };
                    train_with::<B>(config, &options, extras, &Default::default())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for result in results {
        let message = result.unwrap_err().to_string();
        assert!(message.contains("rank 1: optim.lr = "), "{message}");
        assert!(message.contains("(rank 0: "), "{message}");
    }
    assert!(!tmp.path().join("out0/checkpoint").exists());
}

#[test]
fn a_batch_smaller_than_the_world_is_refused() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![corpus(tmp.path())];
    let config = dp_config(2, &["batch_size=2"]);
    for result in run_ranks(3, &config, &data, &tmp.path().join("out"), None, None) {
        let message = result.unwrap_err().to_string();
        assert!(message.contains("train.batch_size = 2"), "{message}");
        assert!(message.contains("3 ranks"), "{message}");
    }
}
