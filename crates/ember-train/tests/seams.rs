//! The trainer's seams: the objective (`train.objective`, or the caller's through
//! `train_with`) and post-step hooks whose state travels in the checkpoint.

use std::path::{Path, PathBuf};

mod common;
use common::{exclusive, quiet_options, weights};

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use ember_nn::{ForwardOptions, Transformer};
use ember_train::{
    Checkpoint, CrossEntropy, HookState, HookTensor, LmLoss, Objective, ObjectiveBatch,
    ObjectiveKind, ObjectiveOutput, StepHook, StepInfo, StepMetrics, TrainConfig, TrainExtras,
    TrainOptions, train, train_with,
};

type B = Autodiff<Flex>;

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

fn config(steps: usize, extra: &[&str]) -> TrainConfig {
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
        "train.eval_every=3",
        "train.eval_batches=2",
        "train.log_every=1",
        "train.checkpoint_every=0",
        "optim.warmup_steps=2",
        "optim.decay_steps=20",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .chain([format!("train.steps={steps}")])
    .collect();
    TrainConfig::resolve(Some("tiny"), None, &overrides).unwrap()
}

fn options(out_dir: PathBuf, data: &Path, resume: Option<PathBuf>) -> TrainOptions {
    quiet_options(out_dir, &[data.to_path_buf()], resume)
}

fn metrics(dir: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// `(train_loss, val_loss, lr, grad_norm)` of every step, as bits.
fn losses(dir: &Path) -> Vec<(u64, Option<u64>, u64, u64)> {
    metrics(dir)
        .iter()
        .map(|m| {
            (
                m.train_loss.to_bits(),
                m.val_loss.map(f64::to_bits),
                m.lr.to_bits(),
                m.grad_norm.to_bits(),
            )
        })
        .collect()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn causal_lm_by_name_is_the_default_and_a_bad_name_is_refused() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let default = config(4, &["train.label_smoothing=0.1"]);
    let named = config(
        4,
        &["train.label_smoothing=0.1", "train.objective=\"causal_lm\""],
    );
    assert_eq!(default.train.objective, ObjectiveKind::CausalLm);
    assert_eq!(named, default);
    let (a, b) = (tmp.path().join("default"), tmp.path().join("named"));
    train::<B>(
        default,
        &options(a.clone(), &data, None),
        &Default::default(),
    )
    .unwrap();
    train::<B>(named, &options(b.clone(), &data, None), &Default::default()).unwrap();
    assert_eq!(losses(&a).len(), 4);
    assert_eq!(losses(&a), losses(&b), "losses, lr and grad norms");
    assert!(weights(&a) == weights(&b));
    // The default objective logs no metrics of its own, and a run without hooks writes
    // the same files as before hooks existed.
    assert!(
        !std::fs::read_to_string(a.join("metrics.jsonl"))
            .unwrap()
            .contains("objective")
    );
    assert_eq!(
        file_names(&a.join("checkpoint")),
        [
            "char_vocab.json",
            "config.toml",
            "ember.json",
            "model.safetensors",
            "optim-decay.bin",
            "optim-no-decay.bin",
            "train_state.json"
        ]
    );
    // The key is recorded, and a configuration written before it existed still reads.
    let text = std::fs::read_to_string(a.join("checkpoint/config.toml")).unwrap();
    assert!(text.contains("objective = \"causal_lm\""), "{text}");
    let old: TrainConfig =
        toml::from_str(&text.replace("objective = \"causal_lm\"\n", "")).unwrap();
    assert_eq!(old.train.objective, ObjectiveKind::CausalLm);

    let err = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        TrainConfig::resolve(None, None, &sets)
            .unwrap_err()
            .to_string()
    };
    let msg = err(&["train.objective=\"triplet\""]);
    assert!(
        msg.contains("train.objective = \"triplet\": expected \"causal_lm\" or \"contrastive\""),
        "{msg}"
    );
    let msg = err(&["train.objective=3"]);
    assert!(msg.contains("train.objective"), "{msg}");
    let file = tmp.path().join("bad.toml");
    std::fs::write(&file, "[train]\nobjective = \"CausalLM\"\n").unwrap();
    let msg = TrainConfig::resolve(None, Some(&file), &[])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bad.toml") && msg.contains("train.objective = \"CausalLM\""),
        "{msg}"
    );
}

/// Twice the cross-entropy: the same logged loss, twice the gradient.
struct Doubled;

impl Objective<B> for Doubled {
    fn loss(&self, model: &Transformer<B>, batch: ObjectiveBatch<'_, B>) -> ObjectiveOutput<B> {
        let logits = model.forward(batch.inputs, ForwardOptions::default());
        let ce = CrossEntropy::<B>::new(None, batch.device).loss(logits, batch.targets);
        ObjectiveOutput {
            loss: ce.clone().mul_scalar(2.0),
            train_loss: ce.clone(),
            moe: None,
            metrics: vec![("doubled".into(), ce.mul_scalar(2.0))],
        }
    }
}

#[test]
fn a_custom_objective_is_the_one_trained_on() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    // No dropout (the default shards each micro-batch over the cores) and no clipping.
    let sets = ["model.dropout=0.0", "optim.grad_clip=0.0"];
    let (a, b) = (tmp.path().join("default"), tmp.path().join("doubled"));
    train::<B>(
        config(2, &sets),
        &options(a.clone(), &data, None),
        &Default::default(),
    )
    .unwrap();
    train_with::<B>(
        config(2, &sets),
        &options(b.clone(), &data, None),
        TrainExtras::new().objective(Doubled),
        &Default::default(),
    )
    .unwrap();
    let (plain, doubled) = (metrics(&a), metrics(&b));
    assert_eq!((plain.len(), doubled.len()), (2, 2));
    // Step 1: the same weights and batch, so the same cross-entropy; every gradient
    // doubled (exactly: a power of two), so the norm doubles.
    assert_eq!(plain[0].train_loss, doubled[0].train_loss);
    let ratio = doubled[0].grad_norm / plain[0].grad_norm;
    assert!((ratio - 2.0).abs() < 1e-9, "grad norm ratio {ratio}");
    // The objective's own metric is logged, as the row-weighted mean over the step.
    for m in &doubled {
        let logged = m.objective["doubled"];
        assert!(
            (logged - 2.0 * m.train_loss).abs() < 1e-9 * logged,
            "{logged} vs 2 × {}",
            m.train_loss
        );
    }
    assert!(plain.iter().all(|m| m.objective.is_empty()));
}

/// A test hook with state: an exponential moving average of the model's first parameter
/// and a count of its calls; it also scales that parameter by 0.999 after every step.
struct Ema {
    decay: f32,
    calls: u64,
    last_step: usize,
    ema: Option<HookTensor>,
    /// Refuses any saved state (for the error path).
    refuse: bool,
}

impl Ema {
    fn new() -> Self {
        Self {
            decay: 0.9,
            calls: 0,
            last_step: 0,
            ema: None,
            refuse: false,
        }
    }
}

/// Scales the first float parameter by 0.999, as a new leaf.
struct ScaleFirst(bool);

impl<Bk: AutodiffBackend> ModuleMapper<Bk> for ScaleFirst {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<Bk, D>>) -> Param<Tensor<Bk, D>> {
        if std::mem::replace(&mut self.0, true) {
            return param;
        }
        param.map(|t| Tensor::from_inner(t.inner().mul_scalar(0.999)).require_grad())
    }
}

/// The first float parameter's shape and values.
struct First(Option<(Vec<usize>, Vec<f32>)>);

impl<Bk: Backend> ModuleVisitor<Bk> for First {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        if self.0.is_none() {
            let value = param.val();
            let shape = value.dims().to_vec();
            self.0 = Some((shape, value.into_data().to_vec::<f32>().unwrap()));
        }
    }
}

impl StepHook<B> for Ema {
    fn name(&self) -> &str {
        "ema"
    }

    fn after_step(&mut self, model: Transformer<B>, info: &StepInfo) -> Transformer<B> {
        let model = model.map(&mut ScaleFirst(false));
        let mut first = First(None);
        model.visit(&mut first);
        let (shape, values) = first.0.unwrap();
        match &mut self.ema {
            None => {
                self.ema = Some(HookTensor {
                    name: "first".into(),
                    shape,
                    values,
                })
            }
            Some(ema) => {
                for (e, v) in ema.values.iter_mut().zip(values) {
                    *e = self.decay * *e + (1.0 - self.decay) * v;
                }
            }
        }
        self.calls += 1;
        self.last_step = info.step;
        model
    }

    fn save_state(&self) -> HookState {
        HookState {
            json: serde_json::json!({
                "decay": self.decay,
                "calls": self.calls,
                "last_step": self.last_step,
            }),
            tensors: self.ema.iter().cloned().collect(),
        }
    }

    fn load_state(&mut self, state: HookState) -> Result<(), String> {
        if self.refuse {
            return Err("refused for the test".into());
        }
        let field = |key: &str| {
            state.json[key]
                .as_f64()
                .ok_or_else(|| format!("no number `{key}`"))
        };
        self.decay = field("decay")? as f32;
        self.calls = field("calls")? as u64;
        self.last_step = field("last_step")? as usize;
        self.ema = state.tensor("first").cloned();
        Ok(())
    }
}

fn ema_extras() -> TrainExtras<B> {
    TrainExtras::new().hook(Ema::new())
}

#[test]
fn hooks_change_the_model_and_resume_exactly_with_their_state() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let device = Default::default();
    let run = |out: &str, steps: usize, resume: Option<&str>, extras: TrainExtras<B>| {
        let resume = resume.map(|r| tmp.path().join(r));
        let options = options(tmp.path().join(out), &data, resume);
        train_with::<B>(config(steps, &[]), &options, extras, &device)
    };
    run("straight", 6, None, ema_extras()).unwrap();
    run("split", 3, None, ema_extras()).unwrap();
    let state_at_3 = Checkpoint::open(&tmp.path().join("split"))
        .unwrap()
        .hook_states(&["ema"])
        .unwrap();
    assert_eq!(state_at_3[0].json["calls"], 3);
    run("split", 6, Some("split"), ema_extras()).unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("split"));
    assert!(
        weights(&a) == weights(&b),
        "weights after 6 steps differ from 3 + resume + 3"
    );
    assert_eq!(losses(&a), losses(&b));
    let (ca, cb) = (Checkpoint::open(&a).unwrap(), Checkpoint::open(&b).unwrap());
    let (sa, sb) = (
        ca.hook_states(&["ema"]).unwrap().remove(0),
        cb.hook_states(&["ema"]).unwrap().remove(0),
    );
    assert_eq!(sa.json, sb.json);
    assert_eq!(
        sa.json,
        serde_json::json!({"decay": 0.9f32 as f64, "calls": 6, "last_step": 6})
    );
    let bits =
        |s: &HookState| -> Vec<u32> { s.tensors[0].values.iter().map(|v| v.to_bits()).collect() };
    assert_eq!(sa.tensors[0].shape, sb.tensors[0].shape);
    assert!(bits(&sa) == bits(&sb), "the EMA differs after the resume");
    assert_ne!(bits(&sa), bits(&state_at_3[0]), "the EMA moved");
    // The hook's files are in the checkpoint and its manifest.
    let names = file_names(&a.join("checkpoint"));
    for file in ["hook-ema.json", "hook-ema.safetensors"] {
        assert!(names.iter().any(|n| n == file), "{names:?}");
        let marker = std::fs::read_to_string(a.join("checkpoint/ember.json")).unwrap();
        assert!(marker.contains(&format!("\"{file}\"")), "{marker}");
    }
    // The hook acted on the model: without it the weights differ.
    run("plain", 6, None, TrainExtras::new()).unwrap();
    let plain = tmp.path().join("plain");
    assert!(weights(&plain) != weights(&a));
    assert!(
        !file_names(&plain.join("checkpoint"))
            .iter()
            .any(|n| n.starts_with("hook"))
    );

    // Resuming without the hook: refused, naming the hook and its file.
    let msg = run("no-hook", 8, Some("split"), TrainExtras::new())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("step hook `ema`") && msg.contains("hook-ema.json"),
        "{msg}"
    );
    assert!(!tmp.path().join("no-hook/checkpoint").exists());
    // A registered hook without state in the checkpoint: refused the same way.
    let msg = run("late-hook", 8, Some("plain"), ema_extras())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("step hook `ema`") && msg.contains("hook-ema.json") && msg.contains("missing"),
        "{msg}"
    );
    // A hook that cannot use its state.
    let refusing = Ema {
        refuse: true,
        ..Ema::new()
    };
    let msg = run(
        "refused",
        8,
        Some("split"),
        TrainExtras::new().hook(refusing),
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("hook-ema.json") && msg.contains("refused for the test"),
        "{msg}"
    );
    // Two hooks of one name.
    let msg = run(
        "twice",
        2,
        None,
        TrainExtras::new().hook(Ema::new()).hook(Ema::new()),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("`ema` is registered twice"), "{msg}");

    // A damaged hook file fails the checkpoint's CRC check, naming the file.
    let damaged = tmp.path().join("damaged/checkpoint");
    std::fs::create_dir_all(&damaged).unwrap();
    for name in file_names(&b.join("checkpoint")) {
        std::fs::copy(b.join("checkpoint").join(&name), damaged.join(&name)).unwrap();
    }
    run("damaged", 8, Some("damaged"), ema_extras()).unwrap();
    let file = damaged.join("hook-ema.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let msg = run("damaged", 10, Some("damaged"), ema_extras())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("hook-ema.safetensors") && msg.contains("CRC-32"),
        "{msg}"
    );
}
