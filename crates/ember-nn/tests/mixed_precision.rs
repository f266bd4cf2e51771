//! Mixed precision (`ember_ops::fused::autocast`): what runs in the low precision, what
//! stays f32, and gradients close to f32's. A binary of its own: autocast is a
//! process-wide setting, and the other tests compare f32 passes exactly.

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, FloatDType, Int, Tensor, TensorData};
use ember_nn::{ForwardOptions, MlpKind, MoeLosses, PositionKind, Transformer, TransformerConfig};
use ember_ops::fused::set_autocast;

type B = Autodiff<Flex>;

fn configs() -> Vec<(&'static str, TransformerConfig)> {
    let mut gpt = TransformerConfig::gpt2(13, 32, 2, 4, 12);
    gpt.init_std = 0.1;
    let mut llama = TransformerConfig::llama(13, 32, 2, 4, 2, 48, 12);
    llama.init_std = 0.1;
    let mut alibi = llama.clone();
    alibi.position = PositionKind::Alibi;
    alibi.attn_softcap = Some(0.5);
    alibi.qk_norm = true;
    alibi.mlp = MlpKind::GeGlu;
    alibi.bias = true;
    let mut moe = TransformerConfig::mixtral(13, 32, 2, 4, 2, 48, 12, 4, 2);
    moe.init_std = 0.1;
    vec![
        ("gpt2", gpt),
        ("llama", llama),
        ("alibi+softcap+qk-norm+geglu+bias", alibi),
        ("mixtral", moe),
    ]
}

/// Every parameter's gradient as f32, and whether all were f32 tensors.
fn gradients(model: &Transformer<B>, grads: &GradientsParams) -> (Vec<Vec<f32>>, bool) {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        out: Vec<Vec<f32>>,
        all_f32: bool,
    }
    impl ModuleVisitor<B> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let grad = self.grads.get::<Flex, D>(param.id).expect("a gradient");
            self.all_f32 &= grad.dtype() == DType::F32;
            self.out
                .push(grad.into_data().convert::<f32>().to_vec().unwrap());
        }
    }
    let mut collect = Collect {
        grads,
        out: Vec::new(),
        all_f32: true,
    };
    model.visit(&mut collect);
    (collect.out, collect.all_f32)
}

fn loss_gradients(
    model: &Transformer<B>,
    tokens: &Tensor<B, 2, Int>,
    weights: &Tensor<B, 3>,
) -> (Vec<Vec<f32>>, bool, DType) {
    let mut moe = MoeLosses::default();
    let logits = model.forward(
        tokens.clone(),
        ForwardOptions {
            moe: Some(&mut moe),
            ..Default::default()
        },
    );
    let logits_dtype = logits.dtype();
    let mut loss = (logits * weights.clone()).sum();
    if let (Some(balance), Some(z)) = (moe.balance_loss, moe.z_loss) {
        loss = loss + balance.mul_scalar(0.3) + z.mul_scalar(0.05);
    }
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let (grads, all_f32) = gradients(model, &grads);
    (grads, all_f32, logits_dtype)
}

#[test]
fn autocast_runs_products_low_keeps_f32_where_pytorch_does_and_stays_close() {
    let device = Default::default();
    for (dtype, tolerance) in [(FloatDType::BF16, 0.03), (FloatDType::F16, 0.005)] {
        for (name, config) in configs() {
            B::seed(&device, 11);
            let model = Transformer::<B>::new(&config, &device).unwrap();
            let ids: Vec<i64> = (0..2 * 12).map(|i| (i * 5 + 2) % 13).collect();
            let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 12]), &device);
            let weights =
                Tensor::<B, 3>::random([2, 12, 13], Distribution::Normal(0.0, 1.0), &device);
            set_autocast(None);
            let (reference, _, _) = loss_gradients(&model, &tokens, &weights);

            set_autocast(Some(dtype));
            let what = format!("{name} {dtype:?}");
            // A projection's product is in the low precision; a norm's output is f32.
            let x = Tensor::<B, 2>::random([5, 32], Distribution::Default, &device);
            let projected = model.layers[0].attn.q_proj.forward(x);
            assert_eq!(projected.dtype(), DType::from(dtype), "{what}");
            let normed = model.layers[0]
                .attn_norm
                .forward(projected.reshape([1, 5, 32]));
            assert_eq!(normed.dtype(), DType::F32, "{what}");
            let (mixed, all_f32, logits_dtype) = loss_gradients(&model, &tokens, &weights);
            set_autocast(None);

            assert_eq!(logits_dtype, DType::F32, "{what}: logits");
            assert!(all_f32, "{what}: the weights' gradients are f32");
            let (mut diff, mut norm) = (0f64, 0f64);
            for (a, b) in reference.iter().zip(&mixed) {
                for (x, y) in a.iter().zip(b) {
                    diff += ((x - y) as f64).powi(2);
                    norm += (*x as f64).powi(2);
                }
            }
            let relative = (diff / norm).sqrt();
            println!("{what}: gradients within {relative:.2e} of f32's");
            assert!(relative < tolerance, "{what}: relative error {relative}");
            assert!(relative > 1e-6, "{what}: identical to f32, nothing ran low");
        }
    }
}
