//! Validation loss, and turning host batches into tensors.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use ember_data::{Batch, BatchSampler};
use ember_nn::{ForwardOptions, FusedBackend, Positions, Transformer};
use ember_ops::MaskMod;

use crate::loss::{LmLoss, masked_cross_entropy};

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

/// A packed batch's document mask and per-token positions (none for plain windows).
pub(crate) fn packing_of(batch: &Batch) -> (Option<MaskMod>, Option<Positions>) {
    let rows = |v: &Vec<u32>| -> Vec<Vec<u32>> {
        v.chunks(batch.block.max(1)).map(<[u32]>::to_vec).collect()
    };
    let mask = batch.documents.as_ref().map(|d| MaskMod::document(rows(d)));
    let positions = batch.positions.as_ref().map(|p| {
        Positions::PerToken(
            rows(p)
                .into_iter()
                .map(|row| row.into_iter().map(|x| x as usize).collect())
                .collect(),
        )
    });
    (mask, positions)
}

/// Mean loss over `n_batches` batches drawn from `tokens` with a fixed seed, so every
/// evaluation of a run sees the same windows; packed rows (`documents`: where each
/// document starts in `tokens`) with their document masks, positions and ignored
/// boundary targets.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: FusedBackend>(
    model: &Transformer<B>,
    loss_fn: &dyn LmLoss<B>,
    tokens: &[u32],
    documents: Option<&[usize]>,
    n_batches: usize,
    batch_size: usize,
    seed: u64,
    device: &B::Device,
) -> f64 {
    let block = model.config().max_seq_len;
    let mut sampler = BatchSampler::new(seed);
    let mut total = 0.0;
    for _ in 0..n_batches {
        let batch = match documents {
            Some(starts) => sampler.sample_packed(tokens, starts, batch_size, block),
            None => sampler.sample(tokens, batch_size, block),
        };
        let (inputs, targets) = batch_tensors::<B>(&batch, device);
        let (mask, positions) = packing_of(&batch);
        let options = ForwardOptions {
            documents: mask.as_ref(),
            positions,
            ..Default::default()
        };
        let logits = model.forward(inputs, options);
        let loss = match mask {
            Some(_) => masked_cross_entropy(logits, &batch.targets, ember_data::sft::IGNORE),
            None => loss_fn.loss(logits, targets),
        };
        total += loss.into_scalar().elem::<f64>();
    }
    total / n_batches as f64
}
