//! Validation loss, and turning host batches into tensors.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use ember_data::{Batch, BatchSampler};
use ember_nn::{ForwardOptions, FusedBackend, Transformer};

use crate::loss::LmLoss;

/// Turns a batch into `([batch, block], [batch, block])` int tensors.
pub(super) fn batch_tensors<B: Backend>(
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let shape = [batch.batch, batch.block];
    (
        Tensor::from_data(TensorData::new(batch.inputs.clone(), shape), device),
        Tensor::from_data(TensorData::new(batch.targets.clone(), shape), device),
    )
}

/// Mean loss over `n_batches` batches drawn from `tokens` with a fixed seed, so every
/// evaluation of a run sees the same windows.
pub fn evaluate<B: FusedBackend>(
    model: &Transformer<B>,
    loss_fn: &dyn LmLoss<B>,
    tokens: &[u32],
    n_batches: usize,
    batch_size: usize,
    seed: u64,
    device: &B::Device,
) -> f64 {
    let block = model.config().max_seq_len;
    let mut sampler = BatchSampler::new(seed);
    let mut total = 0.0;
    for _ in 0..n_batches {
        let (inputs, targets) =
            batch_tensors::<B>(&sampler.sample(tokens, batch_size, block), device);
        let logits = model.forward(inputs, ForwardOptions::default());
        total += loss_fn.loss(logits, targets).into_scalar().elem::<f64>();
    }
    total / n_batches as f64
}
