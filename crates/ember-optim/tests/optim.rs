use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::{Distribution, Tensor, Tolerance};
use ember_optim::{
    AdamWGroups, AdamWSettings, LrSchedule, ScheduleKind, WarmupCosine, clip_global_norm,
    decay_matrices, global_grad_norm,
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

#[test]
fn linear_and_constant_schedules_follow_their_closed_forms() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
    let linear = ScheduleKind::Linear.build(1e-3, 1e-4, 10, 110);
    assert!(close(linear.lr_at(0), 1e-3 / 11.0));
    assert!(close(linear.lr_at(9), 1e-3 * 10.0 / 11.0));
    assert!(close(linear.lr_at(10), 1e-3));
    assert!(close(linear.lr_at(60), 5.5e-4)); // halfway down the line
    assert!(close(linear.lr_at(85), 3.25e-4)); // three quarters
    assert_eq!(linear.lr_at(110), 1e-4);
    assert_eq!(linear.lr_at(10_000), 1e-4);
    let constant = ScheduleKind::Constant.build(1e-3, 1e-4, 10, 110);
    assert!(close(constant.lr_at(5), 1e-3 * 6.0 / 11.0));
    assert_eq!(constant.lr_at(10), 1e-3);
    assert_eq!(constant.lr_at(10_000), 1e-3);
    // The default is nanoGPT's cosine, the same numbers as `WarmupCosine`.
    let cosine = ScheduleKind::default().build(1e-3, 1e-4, 10, 110);
    let reference = WarmupCosine::new(1e-3, 1e-4, 10, 110);
    for step in 0..200 {
        assert_eq!(cosine.lr_at(step), reference.lr_at(step));
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
