//! Helpers the method test binaries share (a folder, so cargo builds no binary of it): the
//! small Llama-shaped model, a fixed input and scalar loss, and the lock around the
//! backend's global generator.
// Each binary uses some of them.
#![allow(dead_code)]

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::tensor::{Distribution, ElementConversion, Int, Tensor, TensorData};
use ember_nn::{ForwardOptions, FusedBackend, Transformer, TransformerConfig};

pub type AD = Autodiff<Flex>;

/// The backend's random generator is global: tests that seed and draw run one at a time,
/// so each draws the same values whatever runs beside it.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn config() -> TransformerConfig {
    let mut c = TransformerConfig::llama(19, 16, 2, 4, 2, 24, 16);
    c.init_std = 0.3;
    c
}

/// The model of [`config`], seeded.
pub fn base<Bk: FusedBackend>(seed: u64) -> Transformer<Bk> {
    let device = Default::default();
    Bk::seed(&device, seed);
    Transformer::new(&config(), &device).unwrap()
}

pub const INPUT: [i64; 7] = [1, 4, 9, 16, 2, 5, 11];

/// `v` as one row of token ids.
pub fn ids<Bk: burn::tensor::backend::Backend>(v: &[i64]) -> Tensor<Bk, 2, Int> {
    Tensor::from_data(
        TensorData::new(v.to_vec(), [1, v.len()]),
        &Default::default(),
    )
}

/// The logits of [`INPUT`].
pub fn logits<Bk: FusedBackend>(model: &Transformer<Bk>) -> Vec<f32> {
    model
        .forward(ids(&INPUT), ForwardOptions::default())
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap()
}

/// A fixed linear functional of the logits of [`INPUT`], as a scalar loss.
pub fn loss<Bk: FusedBackend>(model: &Transformer<Bk>) -> Tensor<Bk, 1> {
    let out = model.forward(ids(&INPUT), ForwardOptions::default());
    let n: usize = out.dims().iter().product();
    let weights: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect();
    let w = Tensor::<Bk, 3>::from_data(TensorData::new(weights, out.dims()), &Default::default());
    (out * w).sum()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Every adapter's `up` (LoRA's `B`, zero at init) drawn at random, so the adapters act.
pub fn perturb_up<Bk: FusedBackend>(mut model: Transformer<Bk>, seed: u64) -> Transformer<Bk> {
    let device = Default::default();
    Bk::seed(&device, seed);
    for (_, p) in model.projections_mut() {
        if let Some(adapter) = p.adapter.as_mut() {
            let up = adapter.up.take().unwrap();
            let fresh = Tensor::random(up.dims(), Distribution::Normal(0.0, 0.5), &device);
            adapter.up = Some(Param::initialized(up.id, fresh.set_require_grad(true)));
        }
    }
    model
}

/// `slot`'s tensor with `delta` added at flat `index` (same id).
fn nudge<const D: usize>(slot: &mut Option<Param<Tensor<AD, D>>>, index: usize, delta: f32) {
    let t = slot.take().unwrap();
    let mut v: Vec<f32> = t.val().into_data().to_vec().unwrap();
    v[index] += delta;
    let shape = t.dims();
    *slot = Some(Param::initialized(
        t.id,
        Tensor::from_data(TensorData::new(v, shape), &Default::default()),
    ));
}

/// [`loss`] with adapter tensor `part` (`down`, `up`, `magnitude`, `input_scale` or
/// `output_scale`) of projection `path` nudged by `delta` at flat `index`.
pub fn nudged_loss(
    model: &Transformer<AD>,
    path: &str,
    part: &str,
    index: usize,
    delta: f32,
) -> f32 {
    let mut nudged = model.clone();
    for (other, q) in nudged.projections_mut() {
        if other != path {
            continue;
        }
        let a = q.adapter.as_mut().unwrap();
        match part {
            "down" => nudge(&mut a.down, index, delta),
            "up" => nudge(&mut a.up, index, delta),
            "magnitude" => nudge(&mut a.magnitude, index, delta),
            "input_scale" => nudge(&mut a.input_scale, index, delta),
            "output_scale" => nudge(&mut a.output_scale, index, delta),
            other => panic!("no adapter part `{other}`"),
        }
    }
    loss(&nudged).into_scalar().elem()
}
