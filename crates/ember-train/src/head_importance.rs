//! How much each attention head matters to the loss (Michel, Levy & Neubig, 2019, "Are
//! Sixteen Heads Really Better than One?"): the structured pruning of
//! [`ember_nn::prune_heads`] removes the heads that matter least.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_data::Batch;
use ember_nn::{FusedBackend, Transformer};

use crate::loss::masked_cross_entropy;

/// Every head's importance, `[layer][head]`: the mean over `batches` (drawn one at a
/// time) of `|∂L/∂ξ_h|`,
/// where `ξ_h` is a gate (1 in the model) multiplying head `h`'s output and `L` the
/// batch's mean next-token cross-entropy. The gate's gradient is read off the output
/// projection's: head `h` feeds `o_proj` through its rows `h·head_dim..(h+1)·head_dim`,
/// so `∂L/∂ξ_h = Σ_{rows of h} W_o ⊙ ∂L/∂W_o`, with no change to the model.
///
/// Errors when an output projection gets no gradient (frozen).
pub fn head_importance<B: AutodiffBackend + FusedBackend>(
    model: &Transformer<B>,
    batches: impl IntoIterator<Item = Batch>,
    device: &B::Device,
) -> Result<Vec<Vec<f64>>, String> {
    let config = model.config();
    let (n_layers, n_heads) = (config.n_layers, config.n_heads);
    let mut total = vec![vec![0.0f64; n_heads]; n_layers];
    let mut n = 0usize;
    for batch in batches {
        n += 1;
        let shape = [batch.batch, batch.block];
        let inputs =
            Tensor::<B, 2, Int>::from_data(TensorData::new(batch.inputs.clone(), shape), device);
        let logits = model.forward(inputs, Default::default());
        let loss = masked_cross_entropy(logits, &batch.targets, ember_data::sft::IGNORE);
        let grads = loss.backward();
        for (layer, block) in model.layers.iter().enumerate() {
            let o_proj = &block.attn.o_proj;
            let grad = o_proj.weight.grad(&grads).ok_or_else(|| {
                format!("layers.{layer}.attn.o_proj.weight has no gradient (is it frozen?)")
            })?;
            let weight = o_proj.weight.val().inner();
            let [rows, cols] = weight.dims();
            let gate: Vec<f32> = (weight * grad)
                .reshape([n_heads, rows / n_heads * cols])
                .sum_dim(1)
                .into_data()
                .to_vec()
                .map_err(|e| format!("{e:?}"))?;
            for (sum, g) in total[layer].iter_mut().zip(gate) {
                *sum += f64::from(g).abs();
            }
        }
    }
    let n = n.max(1) as f64;
    Ok(total
        .into_iter()
        .map(|layer| layer.into_iter().map(|s| s / n).collect())
        .collect())
}
