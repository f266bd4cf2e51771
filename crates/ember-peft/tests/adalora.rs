//! AdaLoRA on a small Llama-shaped model: `peft`'s initialisation and counts, gradients of
//! `A`, `E`, `B` against central finite differences, the orthogonality penalty against a
//! host computation (and its gradient against finite differences), the cubic budget
//! schedule against `peft`'s, and `peft`'s rank allocator replayed step by step from the
//! run `tools/fixtures/make_adalora_fixtures.py` recorded.

use std::collections::BTreeMap;
use std::path::Path;

use burn::backend::Flex;
use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, ElementConversion, Tensor, TensorData};
use ember_nn::{Adapter, Transformer};
use ember_peft::{
    AdaLoraConfig, RankAllocator, Targets, apply_adalora, merged, orthogonal_penalty, rank_pattern,
    unmerged,
};
use serde_json::Value;

type B = Flex;

mod common;
use common::{AD, base, config, exclusive, logits, loss};

fn names(n: &[&str]) -> Targets {
    Targets::Names(n.iter().map(|s| s.to_string()).collect())
}

fn adalora(targets: Targets) -> AdaLoraConfig {
    AdaLoraConfig {
        init_r: 4,
        target_r: 2,
        lora_alpha: 8.0,
        total_step: Some(10),
        targets,
        ..Default::default()
    }
}

fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// `param` holding `v` (same id, shape and trainability).
fn with_values<Bk: Backend, const D: usize>(
    param: &Param<Tensor<Bk, D>>,
    v: Vec<f32>,
) -> Param<Tensor<Bk, D>> {
    let shape: [usize; D] = param.dims();
    let t = Tensor::from_data(TensorData::new(v, shape), &Default::default());
    Param::initialized(param.id, t.set_require_grad(param.is_require_grad()))
}

/// The three tensors of an AdaLoRA adapter, by name.
fn part<Bk: Backend>(a: &Adapter<Bk>, name: &str) -> Vec<f32> {
    match name {
        "down" => values(a.down.as_ref().unwrap().val()),
        "up" => values(a.up.as_ref().unwrap().val()),
        _ => values(a.rank_scale.as_ref().unwrap().val()),
    }
}

fn set_part<Bk: Backend>(a: &mut Adapter<Bk>, name: &str, v: Vec<f32>) {
    match name {
        "down" => a.down = Some(with_values(a.down.as_ref().unwrap(), v)),
        "up" => a.up = Some(with_values(a.up.as_ref().unwrap(), v)),
        _ => a.rank_scale = Some(with_values(a.rank_scale.as_ref().unwrap(), v)),
    }
}

const PARTS: [&str; 3] = ["down", "rank_scale", "up"];

/// Every adapter's `A`, `E`, `B` drawn at random (`E` starts at zero, `A`, `B` tiny).
fn perturb<Bk: ember_nn::FusedBackend>(mut model: Transformer<Bk>, seed: u64) -> Transformer<Bk> {
    let device = Default::default();
    Bk::seed(&device, seed);
    for (_, p) in model.projections_mut() {
        let Some(a) = p.adapter.as_mut() else {
            continue;
        };
        for name in PARTS {
            let n = part(a, name).len();
            let fresh = Tensor::<Bk, 1>::random([n], Distribution::Normal(0.0, 0.5), &device);
            set_part(a, name, values(fresh));
        }
    }
    model
}

/// `model` with entry `index` of `name` of the adapter at `path` moved by `delta`.
fn nudged<Bk: ember_nn::FusedBackend>(
    model: &Transformer<Bk>,
    path: &str,
    name: &str,
    index: usize,
    delta: f32,
) -> Transformer<Bk> {
    let mut model = model.clone();
    for (other, p) in model.projections_mut() {
        if other == path {
            let a = p.adapter.as_mut().unwrap();
            let mut v = part(a, name);
            v[index] += delta;
            set_part(a, name, v);
        }
    }
    model
}

/// Central differences (step 1e-2) of `f` at `index` of `name` of `path`, against
/// `grad`.
fn check_entry(
    model: &Transformer<AD>,
    path: &str,
    name: &str,
    index: usize,
    grad: f32,
    f: impl Fn(&Transformer<AD>) -> f32,
) {
    let h = 1e-2;
    let numeric = (f(&nudged(model, path, name, index, h))
        - f(&nudged(model, path, name, index, -h)))
        / (2.0 * h);
    assert!(
        (numeric - grad).abs() <= 2e-2 + 2e-2 * numeric.abs(),
        "{path}.{name}[{index}]: autodiff {grad} vs finite difference {numeric}"
    );
}

#[test]
fn adalora_starts_at_the_base_as_peft_initialises_and_counts_it() {
    let _draws = exclusive();
    let device = Default::default();
    let defaults = AdaLoraConfig::default();
    assert_eq!(
        (
            defaults.init_r,
            defaults.target_r,
            defaults.tinit,
            defaults.tfinal
        ),
        (12, 8, 0, 0)
    );
    assert_eq!(
        (
            defaults.delta_t,
            defaults.beta1,
            defaults.beta2,
            defaults.orth_reg_weight
        ),
        (1, 0.85, 0.85, 0.5)
    );
    assert_eq!(
        (
            defaults.total_step,
            defaults.lora_alpha,
            defaults.lora_dropout
        ),
        (None, 8.0, 0.0)
    );
    let parsed: AdaLoraConfig =
        serde_json::from_str(r#"{"init_r": 6, "deltaT": 3, "total_step": 40}"#).unwrap();
    assert_eq!(
        (parsed.init_r, parsed.delta_t, parsed.total_step),
        (6, 3, Some(40))
    );
    assert_eq!(parsed.target_r, 8);

    let before = logits(&base::<B>(1));
    let c = adalora(names(&["q_proj", "v_proj", "down_proj"]));
    let (mut model, report) = apply_adalora(base::<B>(1), &c, &device).unwrap();
    // E starts at zero: the base model.
    assert_eq!(logits(&model), before);
    // r·(d_in + d_out + 1) per projection: q 16→16, v 16→8, down 24→16.
    assert_eq!(
        report.trainable,
        2 * (4 * (16 + 16 + 1) + 4 * (16 + 8 + 1) + 4 * (24 + 16 + 1))
    );
    assert_eq!(report.total, config().num_params() + report.trainable);
    let scaling = 8.0 / f64::from(4f32 + 1e-5f32);
    assert_eq!(c.scaling(), scaling);
    let mut ab = Vec::new();
    for (path, p) in model.projections_mut() {
        let Some(a) = &p.adapter else { continue };
        assert_eq!(a.scaling, scaling, "{path}");
        assert!(part(a, "rank_scale").iter().all(|&e| e == 0.0), "{path}");
        ab.extend(part(a, "down"));
        ab.extend(part(a, "up"));
    }
    let std = (ab.iter().map(|x| x * x).sum::<f32>() / ab.len() as f32).sqrt();
    assert!(
        (std - 0.02).abs() < 0.002,
        "A and B: std {std}, peft draws 0.02"
    );
    assert!(
        rank_pattern(&model)
            .values()
            .all(|p| p.len() == 4 && p.iter().all(|&k| !k))
    );

    // Settings at fault are named.
    let bad = |edit: &dyn Fn(&mut AdaLoraConfig), key: &str| {
        let mut c = adalora(Targets::AllLinear);
        edit(&mut c);
        let err = apply_adalora(base::<B>(1), &c, &device)
            .map(|_| ())
            .and_then(|()| c.validate_schedule().map(|_| ()))
            .unwrap_err();
        assert!(err.0.contains(key), "{key}: {err}");
    };
    bad(&|c| c.init_r = 0, "peft.init_r");
    bad(&|c| c.target_r = 5, "peft.target_r");
    bad(&|c| c.delta_t = 0, "peft.deltaT");
    bad(&|c| c.beta1 = 1.0, "peft.beta1");
    bad(&|c| c.beta2 = 0.0, "peft.beta2");
    bad(&|c| c.orth_reg_weight = 0.0, "peft.orth_reg_weight");
    bad(&|c| c.lora_dropout = 1.0, "peft.lora_dropout");
    bad(&|c| c.total_step = None, "peft.total_step");
    bad(
        &|c| {
            c.tinit = 6;
            c.tfinal = 4;
        },
        "peft.tinit",
    );
    bad(
        &|c| c.rank_pattern = Some(BTreeMap::from([("x".into(), vec![true; 3])])),
        "peft.rank_pattern",
    );
    bad(&|c| c.targets = names(&["c_attn"]), "peft.target_modules");
}

#[test]
fn adalora_gradients_match_finite_differences_and_the_base_gets_none() {
    let _draws = exclusive();
    let device = Default::default();
    let c = adalora(names(&["q_proj", "v_proj", "down_proj"]));
    let (model, _) = apply_adalora(base::<AD>(3), &c, &device).unwrap();
    let model = perturb(model, 4);
    let grads = loss(&model).backward();
    let mut probe = model.clone();
    let mut checked = 0;
    for (path, p) in probe.projections_mut() {
        assert!(
            p.weight.val().grad(&grads).is_none(),
            "{path}: the frozen weight got a gradient"
        );
        let Some(a) = &p.adapter else { continue };
        let grads_of = [
            values(a.down.as_ref().unwrap().val().grad(&grads).unwrap()),
            values(a.rank_scale.as_ref().unwrap().val().grad(&grads).unwrap()),
            values(a.up.as_ref().unwrap().val().grad(&grads).unwrap()),
        ];
        for (name, grad) in PARTS.iter().zip(&grads_of) {
            let n = grad.len();
            for index in [0, n / 2, n - 1] {
                check_entry(&model, &path, name, index, grad[index], |m| {
                    loss(m).into_scalar().elem()
                });
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 3 * 3 * 3);
}

/// `peft`'s regulariser written out on the host: the mean over every `A` and `B` of
/// `‖A·Aᵀ − I‖_F` and `‖Bᵀ·B − I‖_F` (`A = downᵀ`, `B = upᵀ`).
fn naive_penalty<Bk: ember_nn::FusedBackend>(model: &Transformer<Bk>) -> f32 {
    let mut model = model.clone();
    let (mut sum, mut count) = (0f64, 0);
    for (_, p) in model.projections_mut() {
        let Some(a) = &p.adapter else { continue };
        count += 2;
        let Some(down) = &a.down else { continue }; // rank 0
        let [d_in, r] = down.dims();
        let d_out = a.up.as_ref().unwrap().dims()[1];
        let (down, up) = (part(a, "down"), part(a, "up"));
        let mut norm_a = 0f64;
        let mut norm_b = 0f64;
        for i in 0..r {
            for j in 0..r {
                let eye = if i == j { 1.0 } else { 0.0 };
                let aa: f64 = (0..d_in)
                    .map(|k| f64::from(down[k * r + i]) * f64::from(down[k * r + j]))
                    .sum();
                let bb: f64 = (0..d_out)
                    .map(|o| f64::from(up[i * d_out + o]) * f64::from(up[j * d_out + o]))
                    .sum();
                norm_a += (aa - eye).powi(2);
                norm_b += (bb - eye).powi(2);
            }
        }
        sum += norm_a.sqrt() + norm_b.sqrt();
    }
    (sum / f64::from(count)) as f32
}

/// The penalty against the host computation (an adapter pruned to rank 0 counting with
/// zero norms, as in `peft`), and its gradients against finite differences.
#[test]
fn the_orthogonal_penalty_is_peft_regulariser_and_trains() {
    let _draws = exclusive();
    let device = Default::default();
    let c = adalora(names(&["q_proj", "v_proj", "down_proj"]));
    let (model, _) = apply_adalora(base::<B>(5), &c, &device).unwrap();
    let mut model = perturb(model, 6);
    let got: f32 = orthogonal_penalty(&model).into_scalar().elem();
    let want = naive_penalty(&model);
    assert!((got - want).abs() <= 1e-5 * want, "penalty {got} vs {want}");
    for (path, p) in model.projections_mut() {
        if path == "layers.1.attn.v_proj" {
            let a = p.adapter.as_mut().unwrap();
            (a.down, a.rank_scale, a.up) = (None, None, None);
        }
    }
    let got: f32 = orthogonal_penalty(&model).into_scalar().elem();
    let want = naive_penalty(&model);
    assert!(
        (got - want).abs() <= 1e-5 * want,
        "with rank 0: {got} vs {want}"
    );
    assert_eq!(
        rank_pattern(&model)["layers.1.attn.v_proj"],
        Vec::<bool>::new()
    );
    let no_adapters = base::<B>(5);
    assert_eq!(
        orthogonal_penalty(&no_adapters).into_scalar().elem::<f32>(),
        0.0
    );

    let (model, _) = apply_adalora(base::<AD>(5), &c, &device).unwrap();
    let model = perturb(model, 7);
    let grads = orthogonal_penalty(&model).backward();
    let mut probe = model.clone();
    for (path, p) in probe.projections_mut() {
        let Some(a) = &p.adapter else { continue };
        assert!(
            a.rank_scale.as_ref().unwrap().val().grad(&grads).is_none()
                || values(a.rank_scale.as_ref().unwrap().val().grad(&grads).unwrap())
                    .iter()
                    .all(|&g| g == 0.0),
            "{path}: E is not in the penalty"
        );
        for (name, t) in [
            ("down", a.down.as_ref().unwrap().val()),
            ("up", a.up.as_ref().unwrap().val()),
        ] {
            let grad = values(t.grad(&grads).unwrap());
            for index in [0, grad.len() / 2, grad.len() - 1] {
                check_entry(&model, &path, name, index, grad[index], |m| {
                    orthogonal_penalty(m).into_scalar().elem()
                });
            }
        }
    }
}

/// AdaLoRA merges into its weight (`W + scaling·down·diag(E)·up`) and comes back out.
#[test]
fn adalora_merges_and_unmerges() {
    let _draws = exclusive();
    let device = Default::default();
    let (model, _) = apply_adalora(base::<B>(8), &adalora(Targets::AllLinear), &device).unwrap();
    let mut model = perturb(model, 9);
    let adapted = logits(&model);
    let scale = adapted.iter().fold(1f32, |m, x| m.max(x.abs()));
    let mut folded = model.clone();
    for (_, p) in folded.projections_mut() {
        *p = merged(p);
    }
    for (a, m) in adapted.iter().zip(&logits(&folded)) {
        assert!((a - m).abs() <= 1e-5 * scale, "merged {m} vs adapted {a}");
    }
    let originals: Vec<_> = model
        .projections_mut()
        .into_iter()
        .map(|(_, p)| p.adapter.clone())
        .collect();
    for ((_, p), adapter) in folded.projections_mut().into_iter().zip(originals) {
        if let Some(adapter) = adapter {
            *p = unmerged(p, adapter).unwrap();
        }
    }
    for (a, u) in adapted.iter().zip(&logits(&folded)) {
        assert!((a - u).abs() <= 1e-5 * scale, "unmerged {u} vs adapted {a}");
    }
}

/// `peft`'s `budget_schedule` for `init_r` 6, `target_r` 2 on three projections (budgets
/// 18 → 6), `tinit` 3, `tfinal` 4, `deltaT` 5, `total_step` 30, at steps 0..=32, as
/// `peft` 0.13 returns it; and the formula written out.
#[test]
fn the_budget_follows_peft_cubic_schedule() {
    let _draws = exclusive();
    let device = Default::default();
    let c = AdaLoraConfig {
        init_r: 6,
        target_r: 2,
        tinit: 3,
        tfinal: 4,
        delta_t: 5,
        total_step: Some(30),
        targets: names(&["q_proj", "down_proj"]),
        ..Default::default()
    };
    let mut three = c.clone();
    three.targets = Targets::Paths(vec![
        "layers.0.attn.q_proj".into(),
        "layers.0.attn.v_proj".into(),
        "layers.1.mlp.down_proj".into(),
    ]);
    let (model, _) = apply_adalora(base::<B>(10), &three, &device).unwrap();
    let allocator = RankAllocator::new(&model, &three).unwrap();
    assert_eq!(
        (allocator.init_budget(), allocator.target_budget()),
        (18, 6)
    );
    let peft: [(usize, bool); 33] = [
        (18, false),
        (18, false),
        (18, false),
        (18, false),
        (16, false),
        (15, true),
        (13, false),
        (12, false),
        (11, false),
        (10, false),
        (10, true),
        (9, false),
        (8, false),
        (8, false),
        (7, false),
        (7, true),
        (6, false),
        (6, false),
        (6, false),
        (6, false),
        (6, true),
        (6, false),
        (6, false),
        (6, false),
        (6, false),
        (6, true),
        (6, false),
        (6, true),
        (6, true),
        (6, true),
        (6, true),
        (6, true),
        (6, true),
    ];
    for (step, want) in peft.iter().enumerate() {
        assert_eq!(allocator.budget_schedule(step), *want, "step {step}");
        // budget = ⌊(init − target)·(1 − (t − tinit)/(total − tfinal − tinit))³ + target⌋
        // between tinit and total − tfinal, masking every deltaT steps.
        let (init, target, tinit, tfinal, total) = (18.0, 6.0, 3, 4, 30);
        let formula = if step <= tinit {
            (18, false)
        } else if step > total - tfinal {
            (6, true)
        } else {
            let mul = 1.0 - (step - tinit) as f64 / (total - tfinal - tinit) as f64;
            (
                ((init - target) * mul * mul * mul + target).floor() as usize,
                step % 5 == 0,
            )
        };
        assert_eq!(formula, *want, "step {step}: the formula");
    }
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adalora_allocator.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 + 1e-5 * w.abs(),
            "{what}[{i}]: Ember {g} vs peft {w}"
        );
    }
}

/// `peft`'s allocator over eight steps (warm-up, masking and non-masking steps, the
/// forced final mask at `total_step − tfinal`, then masking by the final pattern), fed
/// the recorded gradients through `GradientsParams` and the recorded parameters: the
/// singular values after each step, the rank pattern, the budget and the smoothed
/// sensitivity and uncertainty all match. Halfway, the allocator is checkpointed and a
/// fresh one restored from its state carries on.
#[test]
fn the_rank_allocator_replays_peft() {
    let _draws = exclusive();
    let device = Default::default();
    let run = fixture();
    let settings = &run["config"];
    let n = |key: &str| settings[key].as_u64().unwrap() as usize;
    let modules: Vec<String> = run["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    let c = AdaLoraConfig {
        init_r: n("init_r"),
        target_r: n("target_r"),
        tinit: n("tinit"),
        tfinal: n("tfinal"),
        delta_t: n("deltaT"),
        total_step: Some(n("total_step")),
        beta1: settings["beta1"].as_f64().unwrap(),
        beta2: settings["beta2"].as_f64().unwrap(),
        targets: Targets::Paths(modules.clone()),
        ..Default::default()
    };
    let (mut model, _) = apply_adalora(base::<AD>(11), &c, &device).unwrap();
    let mut allocator = RankAllocator::new(&model, &c).unwrap();
    assert_eq!(
        (allocator.init_budget(), allocator.target_budget()),
        (
            run["init_budget"].as_u64().unwrap() as usize,
            run["target_budget"].as_u64().unwrap() as usize
        )
    );
    let end = n("total_step") - n("tfinal");
    let mut masked_steps = 0;
    for record in run["steps"].as_array().unwrap() {
        let step = record["step"].as_u64().unwrap() as usize;
        // The gradients, by parameter id, as the trainer hands them over.
        let mut grads = GradientsParams::new();
        let mut probe = model.clone();
        for (path, p) in probe.projections_mut() {
            let Some(a) = &p.adapter else { continue };
            let g = &record["grads"][&path];
            let down = a.down.as_ref().unwrap();
            let e = a.rank_scale.as_ref().unwrap();
            let up = a.up.as_ref().unwrap();
            grads.register::<B, 2>(
                down.id,
                Tensor::from_data(TensorData::new(floats(&g["down"]), down.dims()), &device),
            );
            grads.register::<B, 1>(
                e.id,
                Tensor::from_data(TensorData::new(floats(&g["rank_scale"]), e.dims()), &device),
            );
            grads.register::<B, 2>(
                up.id,
                Tensor::from_data(TensorData::new(floats(&g["up"]), up.dims()), &device),
            );
        }
        allocator.observe(&model, &grads, step).unwrap();
        // The optimizer step: the parameters peft's update_and_allocate saw.
        for (path, p) in model.projections_mut() {
            let Some(a) = p.adapter.as_mut() else {
                continue;
            };
            for name in PARTS {
                set_part(a, name, floats(&record["params"][&path][name]));
            }
        }
        let allocation = allocator.update_and_allocate(&mut model, step).unwrap();
        let schedule = &record["schedule"];
        if step <= end {
            assert_eq!(
                allocation.budget,
                schedule[0].as_u64().unwrap() as usize,
                "step {step}: budget"
            );
        }
        assert_eq!(
            allocation.masked,
            schedule[1].as_bool().unwrap() || step == end,
            "step {step}: masked"
        );
        masked_steps += usize::from(allocation.masked);
        let mut probe = model.clone();
        for (path, p) in probe.projections_mut() {
            let Some(a) = &p.adapter else { continue };
            assert_eq!(
                part(a, "rank_scale"),
                floats(&record["rank_scale_after"][&path]),
                "step {step}: {path}'s singular values"
            );
        }
        let want_pattern: Option<BTreeMap<String, Vec<bool>>> =
            serde_json::from_value(record["rank_pattern"].clone()).unwrap();
        assert_eq!(
            allocator.rank_pattern(),
            want_pattern.as_ref(),
            "step {step}: rank pattern"
        );
        let (state, tensors) = allocator.state();
        let by_name: BTreeMap<&str, &Vec<f32>> =
            tensors.iter().map(|(n, _, v)| (n.as_str(), v)).collect();
        for kind in ["exp_avg_ipt", "exp_avg_unc"] {
            match &record[kind] {
                Value::Null => assert!(tensors.is_empty(), "step {step}: scores dropped"),
                want => {
                    for path in &modules {
                        for name in PARTS {
                            close(
                                by_name[format!("{path}.{name}.{kind}").as_str()],
                                &floats(&want[path][name]),
                                &format!("step {step}: {path}.{name}.{kind}"),
                            );
                        }
                    }
                }
            }
        }
        if step == 3 {
            // A checkpoint: a fresh allocator carries on from the saved state.
            let mut restored = RankAllocator::new(&model, &c).unwrap();
            restored.load_state(&state, &tensors).unwrap();
            allocator = restored;
        }
    }
    assert_eq!(masked_steps, 5, "steps 2, 4, 6 (the final mask), 7 and 8");
}

/// The allocator refuses a step whose gradients it did not see, and state saved for
/// other adapters.
#[test]
fn the_allocator_refuses_what_does_not_fit() {
    let _draws = exclusive();
    let device = Default::default();
    let c = adalora(names(&["q_proj"]));
    let (mut model, _) = apply_adalora(base::<AD>(12), &c, &device).unwrap();
    let mut allocator = RankAllocator::new(&model, &c).unwrap();
    let err = allocator.update_and_allocate(&mut model, 1).unwrap_err();
    assert!(err.0.contains("observe"), "{err}");
    let grads = GradientsParams::new();
    let err = allocator.observe(&model, &grads, 1).unwrap_err();
    assert!(err.0.contains("no gradient"), "{err}");
    // After the final mask, without a pattern: refused.
    let err = allocator.update_and_allocate(&mut model, 10).unwrap_err();
    assert!(err.0.contains("no importance scores"), "{err}");

    let (state, tensors) = allocator.state();
    let other = adalora(names(&["v_proj"]));
    let (other_model, _) = apply_adalora(base::<AD>(12), &other, &device).unwrap();
    let mut elsewhere = RankAllocator::new(&other_model, &other).unwrap();
    let err = elsewhere.load_state(&state, &tensors).unwrap_err();
    assert!(err.0.contains("not this model's"), "{err}");
    let no_adapters = base::<AD>(12);
    let err = RankAllocator::new(&no_adapters, &c).unwrap_err();
    assert!(err.0.contains("no AdaLoRA adapter"), "{err}");
}
