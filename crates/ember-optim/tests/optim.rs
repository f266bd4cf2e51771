use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::{Distribution, Tensor, Tolerance};
use ember_optim::{
    AdamWGroups, AdamWSettings, DecayType, LrSchedule, ScheduleKind, ScheduleSettings,
    WarmupCosine, Wsd, clip_global_norm, decay_matrices, global_grad_norm,
};

type B = Autodiff<Flex>;

#[derive(Module, Debug)]
struct Tiny<B: burn::tensor::backend::Backend> {
    linear: Linear<B>,
    norm: LayerNorm<B>,
}

fn tiny() -> Tiny<B> {
    let device = Default::default();
    Tiny {
        linear: LinearConfig::new(3, 4).init(&device),
        norm: LayerNormConfig::new(4).init(&device),
    }
}

fn forward(model: &Tiny<B>, scale: f32) -> Tensor<B, 1> {
    let x = Tensor::<B, 2>::random([5, 3], Distribution::Normal(0.0, 1.0), &Default::default());
    model
        .norm
        .forward(model.linear.forward(x))
        .sum()
        .mul_scalar(scale)
}

#[test]
fn warmup_cosine_follows_nanogpt_closed_form() {
    let s = WarmupCosine::new(1e-3, 1e-4, 100, 2000);
    assert!((s.lr_at(0) - 1e-3 / 101.0).abs() < 1e-15);
    assert!((s.lr_at(99) - 1e-3 * 100.0 / 101.0).abs() < 1e-15);
    assert!((s.lr_at(100) - 1e-3).abs() < 1e-15);
    assert!((s.lr_at(1050) - 5.5e-4).abs() < 1e-12); // halfway: (max + min) / 2
    assert!((s.lr_at(2000) - 1e-4).abs() < 1e-15);
    assert_eq!(s.lr_at(5000), 1e-4);
    // burn's LrScheduler interface walks the same sequence and resumes from its record.
    let mut sched = s.clone();
    let walked: Vec<f64> = (0..10).map(|_| LrScheduler::step(&mut sched)).collect();
    assert_eq!(walked, (0..10).map(|i| s.lr_at(i)).collect::<Vec<_>>());
    let record = LrScheduler::to_record::<Flex>(&sched);
    let mut resumed = LrScheduler::load_record::<Flex>(s.clone(), record);
    assert_eq!(LrScheduler::step(&mut resumed), s.lr_at(10));
}

/// One case of `tests/fixtures/schedules.json` (PyTorch's and `transformers`' schedulers,
/// recorded by `tools/fixtures/make_schedule_fixtures.py`).
fn settings_of(case: &serde_json::Value) -> ScheduleSettings {
    let kind: ScheduleKind = serde_json::from_value(case["schedule"].clone()).unwrap();
    let f = |key: &str| case[key].as_f64().unwrap_or(0.0);
    let n = |key: &str| case[key].as_u64().unwrap_or(0) as usize;
    // Each schedule's own table, under the names a configuration uses.
    let table = |keys: &[&str]| {
        let mut map = serde_json::Map::new();
        for key in keys {
            if !case[*key].is_null() {
                map.insert(key.to_string(), case[*key].clone());
            }
        }
        serde_json::Value::Object(map)
    };
    let mut settings = ScheduleSettings {
        kind,
        peak_lr: f("lr"),
        min_lr: f("min_lr"),
        warmup_steps: n("warmup_steps"),
        decay_steps: n("decay_steps"),
        total_steps: n("steps"),
        ..Default::default()
    };
    match kind {
        ScheduleKind::InverseSqrt => {
            settings.inverse_sqrt = serde_json::from_value(table(&["timescale"])).unwrap()
        }
        ScheduleKind::Wsd => {
            settings.wsd = serde_json::from_value(table(&[
                "num_stable_steps",
                "num_decay_steps",
                "num_cycles",
            ]))
            .unwrap()
        }
        ScheduleKind::OneCycle => {
            settings.one_cycle = serde_json::from_value(table(&[
                "total_steps",
                "pct_start",
                "anneal_strategy",
                "div_factor",
                "final_div_factor",
                "three_phase",
                "cycle_momentum",
                "base_momentum",
                "max_momentum",
            ]))
            .unwrap()
        }
        ScheduleKind::CosineRestarts => {
            settings.cosine_restarts =
                Some(serde_json::from_value(table(&["T_0", "T_mult"])).unwrap())
        }
        _ => {}
    }
    settings
}

#[test]
fn every_schedule_matches_pytorch_over_the_whole_run() {
    let fixtures: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/schedules.json")).unwrap();
    let cases = fixtures["cases"].as_array().unwrap();
    let mut kinds = std::collections::HashSet::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let settings = settings_of(case);
        kinds.insert(format!("{:?}", settings.kind));
        let schedule = settings.build().unwrap_or_else(|e| panic!("{name}: {e}"));
        let lrs = case["lrs"].as_array().unwrap();
        for (step, want) in lrs.iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = schedule.lr_at(step);
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1e-12),
                "{name}: step {step}: lr {got} vs PyTorch {want}"
            );
        }
        match case["beta1"].as_array() {
            Some(betas) => {
                for (step, want) in betas.iter().enumerate() {
                    let want = want.as_f64().unwrap();
                    let got = schedule.beta1_at(step).expect("one-cycle cycles β1");
                    assert!(
                        (got - want).abs() < 1e-12,
                        "{name}: step {step}: β1 {got} vs PyTorch {want}"
                    );
                }
            }
            None => assert_eq!(schedule.beta1_at(3), None, "{name}"),
        }
    }
    assert_eq!(kinds.len(), 7, "every schedule has a case: {kinds:?}");
}

#[test]
fn schedules_past_the_fixtures_and_bad_settings() {
    // WSD's other decay shapes, written out: progress p over the decay, then the floor.
    let wsd = |decay_type| Wsd {
        peak_lr: 1.0,
        min_lr: 0.1,
        num_stable_steps: 4,
        num_decay_steps: 8,
        num_cycles: 0.5,
        decay_type,
    };
    let linear = wsd(DecayType::Linear);
    let sqrt = wsd(DecayType::OneMinusSqrt);
    assert_eq!(linear.lr_at(3), 1.0);
    assert!((linear.lr_at(6) - (0.1 + 0.9 * 0.75)).abs() < 1e-15);
    assert!((sqrt.lr_at(6) - (0.1 + 0.9 * (1.0 - 0.25f64.sqrt()))).abs() < 1e-15);
    assert_eq!(sqrt.lr_at(12), 0.1);
    // One-cycle holds its last rate past the cycle.
    let settings = ScheduleSettings {
        kind: ScheduleKind::OneCycle,
        peak_lr: 1e-2,
        total_steps: 50,
        ..Default::default()
    };
    let one_cycle = settings.build().unwrap();
    assert_eq!(one_cycle.lr_at(60), one_cycle.lr_at(49));
    // Settings that cannot make a schedule name their key.
    let bad = [
        (
            ScheduleSettings {
                warmup_steps: 10,
                ..settings.clone()
            },
            "optim.warmup_steps",
        ),
        (
            ScheduleSettings {
                total_steps: 2,
                ..settings.clone()
            },
            "optim.one_cycle",
        ),
        (
            ScheduleSettings {
                kind: ScheduleKind::CosineRestarts,
                ..settings.clone()
            },
            "optim.cosine_restarts.T_0",
        ),
        (
            ScheduleSettings {
                kind: ScheduleKind::InverseSqrt,
                inverse_sqrt: ember_optim::InverseSqrtArgs { timescale: Some(0) },
                ..settings.clone()
            },
            "optim.inverse_sqrt.timescale",
        ),
    ];
    for (settings, key) in bad {
        let err = settings.build().err().expect("refused");
        assert!(err.starts_with(key), "{err}");
    }
}

fn grad_values<const D: usize>(params: &GradientsParams, id: burn::module::ParamId) -> Vec<f32> {
    params
        .get::<Flex, D>(id)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap()
}

#[test]
fn global_norm_clipping_matches_manual_computation() {
    let model = tiny();
    let grads = forward(&model, 50.0).backward();
    let mut params = GradientsParams::from_grads(grads, &model);
    let w = grad_values::<2>(&params, model.linear.weight.id);
    let gamma = grad_values::<1>(&params, model.norm.gamma.id);
    let bias = grad_values::<1>(&params, model.linear.bias.as_ref().unwrap().id);
    let beta = grad_values::<1>(&params, model.norm.beta.as_ref().unwrap().id);
    let manual = w
        .iter()
        .chain(&gamma)
        .chain(&bias)
        .chain(&beta)
        .map(|g| (*g as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((global_grad_norm::<B, _>(&model, &params) - manual).abs() < 1e-4 * manual);
    let before = clip_global_norm::<B, _>(&model, &mut params, 1.0);
    assert!((before - manual).abs() < 1e-4 * manual);
    assert!(manual > 1.0, "the test needs a norm above the threshold");
    let after = global_grad_norm::<B, _>(&model, &params);
    assert!((after - 1.0).abs() < 1e-4, "norm after clipping: {after}");
    // Directions are kept: each gradient is scaled by the same factor.
    let w_after: Vec<f32> = params
        .get::<Flex, 2>(model.linear.weight.id)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    for (a, b) in w_after.iter().zip(&w) {
        assert!((a - b / manual as f32).abs() < 1e-5);
    }
}

#[test]
fn weight_decay_touches_matrices_only() {
    let model = tiny();
    let before_w = model.linear.weight.val();
    let before_b = model.linear.bias.as_ref().unwrap().val();
    let before_g = model.norm.gamma.val();
    // Zero gradients: AdamW's update is 0 / (0 + eps) = 0, leaving only weight decay.
    let grads = forward(&model, 0.0).backward();
    let grads = GradientsParams::from_grads(grads, &model);
    let settings = AdamWSettings {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.5,
    };
    let params = params_of(&model);
    let mut optim = AdamWGroups::<Tiny<B>, B>::new(&settings, params, decay_matrices);
    assert_eq!(optim.num_decayed(), 1);
    let model = optim.step(0.1, model, grads);
    let tol = Tolerance::absolute(1e-6);
    model
        .linear
        .weight
        .val()
        .into_data()
        .assert_approx_eq::<f32>(&(before_w * 0.95).into_data(), tol);
    model
        .linear
        .bias
        .as_ref()
        .unwrap()
        .val()
        .into_data()
        .assert_approx_eq::<f32>(&before_b.into_data(), tol);
    model
        .norm
        .gamma
        .val()
        .into_data()
        .assert_approx_eq::<f32>(&before_g.into_data(), tol);
}

/// `(id, path, shape)` of every float parameter, listed by hand for this module.
fn params_of(model: &Tiny<B>) -> Vec<(burn::module::ParamId, String, Vec<usize>)> {
    vec![
        (model.linear.weight.id, "linear.weight".into(), vec![3, 4]),
        (
            model.linear.bias.as_ref().unwrap().id,
            "linear.bias".into(),
            vec![4],
        ),
        (model.norm.gamma.id, "norm.gamma".into(), vec![4]),
        (
            model.norm.beta.as_ref().unwrap().id,
            "norm.beta".into(),
            vec![4],
        ),
    ]
}

#[test]
fn value_clipping_clamps_every_gradient() {
    let model = tiny();
    let grads = forward(&model, 50.0).backward();
    let mut params = GradientsParams::from_grads(grads, &model);
    let before = grad_values::<2>(&params, model.linear.weight.id);
    let limit = 0.5 * before.iter().fold(0f32, |m, g| m.max(g.abs()));
    ember_optim::clip_value::<B, _>(&model, &mut params, limit as f64);
    let after = grad_values::<2>(&params, model.linear.weight.id);
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(*a, b.clamp(-limit, limit));
    }
}

#[test]
fn adaptive_clipping_matches_the_unit_wise_definition() {
    use ember_optim::ClipUnit;
    let model = tiny();
    let device = Default::default();
    let x = Tensor::<B, 2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
    let r = Tensor::<B, 1>::from_floats([0.5, -2.0, 1.0, 3.0], &device);
    let hidden = model.linear.forward(x);
    let loss = model.norm.forward(hidden.clone()).mul(r.unsqueeze()).sum()
        + hidden.square().sum().mul_scalar(10.0);
    let mut params = GradientsParams::from_grads(loss.backward(), &model);
    let g = grad_values::<2>(&params, model.linear.weight.id);
    let w: Vec<f32> = model.linear.weight.val().into_data().to_vec().unwrap();
    let gamma_g = grad_values::<1>(&params, model.norm.gamma.id);
    let gamma: Vec<f32> = model.norm.gamma.val().into_data().to_vec().unwrap();
    let bias_g = grad_values::<1>(&params, model.linear.bias.as_ref().unwrap().id);
    let (lambda, eps) = (0.05, 1e-3);
    let units = std::collections::HashMap::from([
        (model.linear.weight.id, ClipUnit::Columns),
        (model.norm.gamma.id, ClipUnit::Whole),
        (model.linear.bias.as_ref().unwrap().id, ClipUnit::Skip),
    ]);
    ember_optim::clip_adaptive::<B, _>(&model, &mut params, &units, lambda, eps);
    // The reference, written out: `[d_in = 3, d_out = 4]`, one unit per output column.
    let clip = |g: &[f64], w: &[f64]| -> Vec<f64> {
        let norm = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>().sqrt();
        let max = lambda * norm(w).max(eps);
        let gn = norm(g);
        let factor = if gn < max { 1.0 } else { max / gn.max(1e-6) };
        g.iter().map(|v| v * factor).collect()
    };
    let mut clipped_any = false;
    let got = grad_values::<2>(&params, model.linear.weight.id);
    for col in 0..4 {
        let gc: Vec<f64> = (0..3).map(|r| g[r * 4 + col] as f64).collect();
        let wc: Vec<f64> = (0..3).map(|r| w[r * 4 + col] as f64).collect();
        let want = clip(&gc, &wc);
        clipped_any |= want != gc;
        for r in 0..3 {
            let got = got[r * 4 + col] as f64;
            assert!(
                (got - want[r]).abs() < 1e-5 * want[r].abs().max(1e-3),
                "column {col}"
            );
        }
    }
    assert!(clipped_any, "the test needs a unit above the threshold");
    let want = clip(
        &gamma_g.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        &gamma.iter().map(|&v| v as f64).collect::<Vec<_>>(),
    );
    for (got, want) in grad_values::<1>(&params, model.norm.gamma.id)
        .iter()
        .zip(want)
    {
        assert!((*got as f64 - want).abs() < 1e-5 * want.abs().max(1e-3));
    }
    // A skipped parameter keeps its gradient.
    assert_eq!(
        grad_values::<1>(&params, model.linear.bias.as_ref().unwrap().id),
        bias_g
    );
}

#[test]
fn a_changed_beta1_keeps_the_moments_and_matches_adam_written_out() {
    let model = tiny();
    let w0: Vec<f32> = model.linear.weight.val().into_data().to_vec().unwrap();
    let settings = AdamWSettings {
        beta1: 0.95,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut optim = AdamWGroups::<Tiny<B>, B>::new(&settings, params_of(&model), decay_matrices);
    let coefs = [[0.3f32, -1.2, 0.7, 2.0], [-0.4, 0.9, 1.5, -0.2]];
    let (lr, betas) = (0.01, [0.95, 0.85]);
    let mut model = model;
    for (step, c) in coefs.iter().enumerate() {
        optim.set_beta1(betas[step] as f32);
        assert_eq!(optim.beta1(), betas[step] as f32);
        // The gradient of `Σ W_ij c_j` is `c_j` in every row.
        let c = Tensor::<B, 1>::from_floats(*c, &Default::default());
        let loss = model.linear.weight.val().mul(c.unsqueeze()).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
    }
    let got: Vec<f32> = model.linear.weight.val().into_data().to_vec().unwrap();
    for (i, (&w, &got)) in w0.iter().zip(&got).enumerate() {
        let (mut w, mut m, mut v) = (w as f64, 0.0, 0.0);
        for (step, c) in coefs.iter().enumerate() {
            let (b1, b2, t) = (betas[step] as f32 as f64, 0.99f32 as f64, step as i32 + 1);
            let g = c[i % 4] as f64;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let m_hat = m / (1.0 - b1.powi(t));
            let v_hat = v / (1.0 - b2.powi(t));
            w -= lr * m_hat / (v_hat.sqrt() + 1e-8);
        }
        assert!((got as f64 - w).abs() < 1e-6, "weight {i}: {got} vs {w}");
    }
}
