//! Head importance (`ember_train::head_importance`) against finite differences: scaling
//! one head's rows of `o_proj` by `1 ± ε` gates its output, and the loss's central
//! difference is the gate's gradient, whose magnitude the importance is.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use ember_data::{Batch, BatchSampler};
use ember_nn::{Transformer, TransformerConfig, param_values, replace_params};
use ember_train::head_importance::head_importance;
use ember_train::loss::masked_cross_entropy;

type AD = Autodiff<Flex>;

/// The batch's mean next-token loss with head `head` of layer `layer` scaled by `gate`.
fn gated_loss(
    model: &Transformer<Flex>,
    batch: &Batch,
    layer: usize,
    head: usize,
    gate: f32,
) -> f64 {
    let head_dim = model.config().head_dim();
    let target = format!("layers.{layer}.attn.o_proj.weight");
    let mut values: std::collections::HashMap<String, TensorData> =
        param_values(model).into_iter().collect();
    let gated = replace_params(model.clone(), &mut |path, _| {
        let data = values.remove(path).unwrap();
        if path != target {
            return Ok(data);
        }
        let d_model = data.shape[1];
        let mut w: Vec<f32> = data.to_vec().unwrap();
        for x in &mut w[head * head_dim * d_model..(head + 1) * head_dim * d_model] {
            *x *= gate;
        }
        Ok(TensorData::new(w, data.shape.clone()))
    })
    .unwrap();
    let inputs = Tensor::<Flex, 2, Int>::from_data(
        TensorData::new(batch.inputs.clone(), [batch.batch, batch.block]),
        &Default::default(),
    );
    let logits = gated.forward(inputs, Default::default());
    masked_cross_entropy(logits, &batch.targets, ember_data::sft::IGNORE)
        .into_scalar()
        .elem::<f64>()
}

#[test]
fn head_importance_is_the_gate_gradient_by_finite_differences() {
    let device = Default::default();
    AD::seed(&device, 21);
    let mut config = TransformerConfig::llama(17, 16, 2, 4, 2, 24, 12);
    config.init_std = 0.3;
    let model = Transformer::<AD>::new(&config, &device).unwrap();
    let tokens: Vec<u32> = (0..200u32).map(|i| (i * 7 + i / 3) % 17).collect();
    let mut sampler = BatchSampler::new(1);
    let batches = vec![
        sampler.sample(&tokens, 3, 12),
        sampler.sample(&tokens, 3, 12),
    ];
    let importance = head_importance(&model, batches.clone(), &device).unwrap();
    assert_eq!((importance.len(), importance[0].len()), (2, 4));

    let plain = model.valid();
    let eps = 1e-2;
    for (layer, scores) in importance.iter().enumerate() {
        for (head, &got) in scores.iter().enumerate() {
            let fd: f64 = batches
                .iter()
                .map(|b| {
                    let up = gated_loss(&plain, b, layer, head, 1.0 + eps as f32);
                    let down = gated_loss(&plain, b, layer, head, 1.0 - eps as f32);
                    ((up - down) / (2.0 * eps)).abs()
                })
                .sum::<f64>()
                / 2.0;
            assert!(
                (got - fd).abs() <= 2e-3 + 0.05 * fd,
                "layer {layer} head {head}: {got} vs {fd}"
            );
        }
    }
    // Heads differ in importance (the test would pass vacuously if all were 0).
    assert!(importance.iter().flatten().any(|&v| v > 1e-3));
}
