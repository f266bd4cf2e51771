//! Boolean attention masks (`true` = the key is hidden from the query).

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};

/// A causal mask aligned at the bottom-right corner: query `i` (of `seq_q`) may see key
/// `j` (of `seq_kv`) iff `j <= i + seq_kv - seq_q`.
///
/// Returns `[1, 1, seq_q, seq_kv]`, broadcastable over batch and heads.
pub fn causal_mask<B: Backend>(
    seq_q: usize,
    seq_kv: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let offset = seq_kv as isize - seq_q as isize;
    let values: Vec<bool> = (0..seq_q)
        .flat_map(|i| (0..seq_kv).map(move |j| j as isize > i as isize + offset))
        .collect();
    Tensor::from_data(TensorData::new(values, [1, 1, seq_q, seq_kv]), device)
}
