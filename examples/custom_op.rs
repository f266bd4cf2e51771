//! A differentiable op of your own (the seed's "custom autograd function"): Mish,
//! `y = x · tanh(softplus(x))`, with its gradient written by hand, applied through
//! `ember_ops::custom_op::apply` and checked against central finite differences.
//!
//! `cargo run --release -p ember-examples --example custom_op`

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use ember_ops::custom_op::{CustomOp, apply};

/// Mish (Misra 2019): `y = x · tanh(sp)`, `sp = ln(1 + eˣ)`;
/// `dy/dx = tanh(sp) + x · (1 − tanh²(sp)) · σ(x)`.
#[derive(Debug, Clone)]
struct Mish;

impl<B: Backend> CustomOp<B, 2> for Mish {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let t = burn::tensor::activation::softplus(x.clone(), 1.0).tanh();
        x * t
    }

    fn backward(&self, x: Tensor<B, 2>, dy: Tensor<B, 2>) -> Tensor<B, 2> {
        let t = burn::tensor::activation::softplus(x.clone(), 1.0).tanh();
        let sigmoid = burn::tensor::activation::sigmoid(x.clone());
        let slope = t.clone() + x * (t.clone() * t).neg().add_scalar(1.0) * sigmoid;
        slope * dy
    }
}

/// The largest gap between `Mish`'s autodiff gradient of `Σ w ⊙ mish(x)` and central
/// differences of the same sum in f64.
pub fn finite_difference_gap() -> f64 {
    type B = Autodiff<Flex>;
    let device = Default::default();
    let x = Tensor::<B, 2>::random([4, 5], Distribution::Normal(0.0, 2.0), &device).require_grad();
    let w = Tensor::<B, 2>::random([4, 5], Distribution::Normal(0.0, 1.0), &device);
    let grads = (apply(Mish, x.clone()) * w.clone()).sum().backward();
    let got: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
    let xs: Vec<f64> = x
        .into_data()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let ws: Vec<f64> = w
        .into_data()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let mish = |x: f64| x * (x.exp().ln_1p()).tanh();
    let h = 1e-5;
    xs.iter()
        .zip(&ws)
        .zip(&got)
        .map(|((&x, &w), &g)| {
            let numeric = w * (mish(x + h) - mish(x - h)) / (2.0 * h);
            (numeric - g as f64).abs()
        })
        .fold(0.0, f64::max)
}

fn main() {
    let gap = finite_difference_gap();
    println!(
        "Mish through ember_ops::custom_op: largest gradient gap to finite differences {gap:.2e}"
    );
    assert!(gap < 1e-4, "the hand-written gradient disagrees: {gap}");
}

#[test]
fn the_hand_written_gradient_matches_finite_differences() {
    assert!(finite_difference_gap() < 1e-4);
}
