//! The bf16 matrix product of two 2-D Flex tensors on [`bf16_gemm`](super::bf16_gemm),
//! read through their strides (the backward pass's transposes are not copied).

use burn::tensor::{DType, Shape};
use burn_flex::FlexTensor;

use super::bf16_gemm::{self, MatRef};
use super::buffers::output;

/// A 2-D f32 tensor as a strided view of its buffer, or `None` for other dtypes, ranks
/// or negative strides.
fn mat_ref(t: &FlexTensor) -> Option<(usize, usize, MatRef<'_>)> {
    let layout = t.layout();
    let (rows, cols, row_stride, col_stride) = layout.as_2d_strides()?;
    (t.dtype() == DType::F32 && layout.has_positive_strides()).then(|| {
        let view = MatRef {
            data: t.storage::<f32>(),
            offset: layout.start_offset(),
            row_stride,
            col_stride,
        };
        (rows, cols, view)
    })
}

/// `a · b` for `a: [m, k]`, `b: [k, n]` → `[m, n]`, inputs rounded to bf16 and sums in
/// f32; `None` where the CPU lacks AVX512-BF16 or an input is not a 2-D f32 tensor with
/// positive strides.
///
/// # Panics
/// If the inner dimensions differ.
pub(super) fn bf16(a: &FlexTensor, b: &FlexTensor) -> Option<FlexTensor> {
    if !bf16_gemm::available() {
        return None;
    }
    let ((m, k, a_ref), (k_b, n, b_ref)) = (mat_ref(a)?, mat_ref(b)?);
    assert_eq!(k, k_b, "matmul_bf16: inner dimensions {k} and {k_b} differ");
    let mut c = Vec::with_capacity(m * n);
    bf16_gemm::gemm_uninit(m, n, k, a_ref, b_ref, &mut c.spare_capacity_mut()[..m * n]);
    // SAFETY: `gemm_uninit` wrote all `m · n` values.
    unsafe { c.set_len(m * n) };
    Some(output(c, Shape::new([m, n])))
}

/// A contiguous copy of the 2-D f32 tensor `t` with every value rounded to the nearest
/// bf16 value (ties to even, as the AVX512-BF16 kernel rounds): where that kernel does not
/// run, the product of two such copies in f32 is the same bf16 product up to the order
/// of its f32 additions. `None` for other dtypes, ranks or negative strides.
pub(super) fn rounded_to_bf16(t: &FlexTensor) -> Option<FlexTensor> {
    let (rows, cols, view) = mat_ref(t)?;
    view.check(rows, cols, "rounded");
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        out.extend((0..cols).map(|j| bf16_gemm::round_to_bf16(view.at(i, j))));
    }
    Some(output(out, Shape::new([rows, cols])))
}
