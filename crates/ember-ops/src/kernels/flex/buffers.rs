//! Buffers of the row kernels: how rows are split across threads, tensors as contiguous
//! f32 slices, and outputs built from a `Vec<f32>`.

use burn::tensor::{DType, Shape, TensorData};
use burn_flex::FlexTensor;

/// Elements below which a kernel runs on the calling thread only.
const MIN_ELEMENTS_PER_TASK: usize = 16 * 1024;

/// Rows per parallel task for `rows` rows of `width` elements.
pub(super) fn rows_per_task(rows: usize, width: usize) -> usize {
    let min_rows = (MIN_ELEMENTS_PER_TASK / width.max(1)).max(1);
    let tasks = 2 * rayon::current_num_threads();
    rows.div_ceil(tasks).max(min_rows)
}

/// The tensor as a contiguous f32 buffer, or `None` for other dtypes.
pub(super) fn f32_contiguous(t: &FlexTensor) -> Option<FlexTensor> {
    (t.dtype() == DType::F32).then(|| t.to_contiguous())
}

/// The values of a tensor from [`f32_contiguous`], in row-major order.
pub(super) fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("f32_contiguous returned a contiguous f32 tensor")
}

/// A contiguous tensor of `shape` holding `data` (row-major, `shape.num_elements()` long).
pub(super) fn output(data: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// The size of the last dimension: the row width of the row kernels.
pub(super) fn last_dim(shape: &Shape) -> usize {
    shape[shape.num_dims() - 1]
}
