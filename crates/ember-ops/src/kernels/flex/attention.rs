//! Attention forward and backward for `Flex` on strided views, one task per
//! (batch, K/V head) across rayon's threads.
//!
//! q, k and v arrive as `[batch, heads, seq, head_dim]` views of the projections'
//! `[batch, seq, heads, head_dim]` memory. The kernels read them through their strides
//! and write outputs and gradients back in that token-major memory order (returned as
//! `[batch, heads, seq, head_dim]` views), so neither the head split nor its autodiff
//! backward copies anything. Each task computes the `[seq_q, seq_kv]` scores of its
//! heads with `gemm`, applies the fused masked softmax, and — for grouped-query
//! attention — accumulates the K/V gradients of the `n_heads / n_kv_heads` query heads
//! that share its K/V head, so K/V are never repeated.

use burn::tensor::{DType, Shape, TensorData};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use super::softmax::{softmax_backward_rows, softmax_rows};

/// A read-only 4-D view: the buffer, the element offset and the strides.
struct View<'a> {
    data: &'a [f32],
    offset: usize,
    strides: [isize; 4],
}

impl<'a> View<'a> {
    fn of(t: &'a FlexTensor) -> Self {
        let layout = t.layout();
        let s = layout.strides();
        Self {
            data: t.storage::<f32>(),
            offset: layout.start_offset(),
            strides: [s[0], s[1], s[2], s[3]],
        }
    }

    /// Pointer to element `[b, h, 0, 0]`.
    fn head(&self, b: usize, h: usize) -> *const f32 {
        let at = self.offset as isize + b as isize * self.strides[0] + h as isize * self.strides[1];
        // SAFETY: `at` indexes a valid element of `data` for in-bounds (b, h), by the
        // layout's construction.
        unsafe { self.data.as_ptr().offset(at) }
    }

    fn row_stride(&self) -> isize {
        self.strides[2]
    }

    fn col_stride(&self) -> isize {
        self.strides[3]
    }
}

/// A pointer that may cross threads; each task writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: tasks write disjoint (batch, head) slices; see the callers.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A zeroed `[batch, seq, heads, head_dim]` buffer presented as `[batch, heads, seq,
/// head_dim]`.
struct TokenMajor {
    data: Vec<f32>,
    dims: [usize; 4],
}

impl TokenMajor {
    fn new(batch: usize, heads: usize, seq: usize, head_dim: usize) -> Self {
        Self {
            data: vec![0.0; batch * heads * seq * head_dim],
            dims: [batch, heads, seq, head_dim],
        }
    }

    /// Offset of `[b, h, 0, 0]` and the row (sequence) stride.
    fn head(&self, b: usize, h: usize) -> (usize, isize) {
        let [_, heads, seq, d] = self.dims;
        (b * seq * heads * d + h * d, (heads * d) as isize)
    }

    fn into_tensor(self) -> FlexTensor {
        let [batch, heads, seq, d] = self.dims;
        let t = FlexTensor::from_data(TensorData::new(self.data, [batch, seq, heads, d]));
        let strides = vec![
            (seq * heads * d) as isize,
            d as isize,
            (heads * d) as isize,
            1,
        ];
        t.with_layout(Layout::new(Shape::new([batch, heads, seq, d]), strides, 0))
    }
}

/// `dst (m×n) = alpha·dst + lhs (m×k) · rhs (k×n)`, all strided (`cs`: column stride,
/// `rs`: row stride), single-threaded: the callers parallelise over heads.
///
/// # Safety
/// The pointers and strides must address valid `m×k`, `k×n` and `m×n` matrices, and
/// `dst` must not alias `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

struct Dims {
    batch: usize,
    n_heads: usize,
    n_kv_heads: usize,
    seq_q: usize,
    seq_kv: usize,
    head_dim: usize,
    causal: bool,
}

impl Dims {
    fn of(q: &FlexTensor, k: &FlexTensor, causal: bool) -> Self {
        let qs = q.layout().shape();
        let ks = k.layout().shape();
        Self {
            batch: qs[0],
            n_heads: qs[1],
            n_kv_heads: ks[1],
            seq_q: qs[2],
            seq_kv: ks[2],
            head_dim: qs[3],
            causal,
        }
    }

    fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// Softmax of the scaled scores of one head, in place: `[seq_q, seq_kv]`.
    fn probabilities(&self, scores: &mut [f32]) {
        let (q_len, offset) = if self.causal {
            (self.seq_q, self.seq_kv as isize - self.seq_q as isize)
        } else {
            (0, 0)
        };
        softmax_rows(scores, self.seq_kv, self.scale(), q_len, offset);
    }

    /// Scores `q_h · k_gᵀ` of head `h` into `scores` (`[seq_q, seq_kv]`, contiguous).
    fn scores(&self, q: &View, k: &View, b: usize, h: usize, g: usize, scores: &mut [f32]) {
        // SAFETY: q_h is seq_q×head_dim, k_gᵀ is head_dim×seq_kv through the views'
        // strides; `scores` holds seq_q·seq_kv elements.
        unsafe {
            matmul(
                self.seq_q,
                self.seq_kv,
                self.head_dim,
                scores.as_mut_ptr(),
                self.seq_kv as isize,
                false,
                q.head(b, h),
                q.row_stride(),
                q.col_stride(),
                k.head(b, g),
                k.col_stride(),
                k.row_stride(),
            )
        }
    }
}

/// Causal or full attention; see
/// [`FusedBackend::fused_attention`](crate::fused::FusedBackend::fused_attention).
/// All inputs must be f32.
pub fn forward(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, causal: bool) -> FlexTensor {
    let dims = Dims::of(q, k, causal);
    let (qv, kv, vv) = (View::of(q), View::of(k), View::of(v));
    let mut out = TokenMajor::new(dims.batch, dims.n_heads, dims.seq_q, dims.head_dim);
    let out_ptr = SharedMut(out.data.as_mut_ptr());
    let out_ref = &out;
    (0..dims.batch * dims.n_kv_heads)
        .into_par_iter()
        .for_each_init(
            || vec![0.0f32; dims.seq_q * dims.seq_kv],
            |p, task| {
                let (b, g) = (task / dims.n_kv_heads, task % dims.n_kv_heads);
                for h in g * dims.group()..(g + 1) * dims.group() {
                    dims.scores(&qv, &kv, b, h, g, p);
                    dims.probabilities(p);
                    let (at, rs) = out_ref.head(b, h);
                    // SAFETY: head h of batch b is written by this task only; P is
                    // seq_q×seq_kv contiguous, v_g seq_kv×head_dim through its strides.
                    unsafe {
                        matmul(
                            dims.seq_q,
                            dims.head_dim,
                            dims.seq_kv,
                            out_ptr.get().add(at),
                            rs,
                            false,
                            p.as_ptr(),
                            dims.seq_kv as isize,
                            1,
                            vv.head(b, g),
                            vv.row_stride(),
                            vv.col_stride(),
                        )
                    }
                }
            },
        );
    out.into_tensor()
}

/// Gradients `(dq, dk, dv)` of [`forward`], recomputing the probabilities.
pub fn backward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    causal: bool,
    d_out: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let dims = Dims::of(q, k, causal);
    let (qv, kv, vv, dov) = (View::of(q), View::of(k), View::of(v), View::of(d_out));
    let mut dq = TokenMajor::new(dims.batch, dims.n_heads, dims.seq_q, dims.head_dim);
    let mut dk = TokenMajor::new(dims.batch, dims.n_kv_heads, dims.seq_kv, dims.head_dim);
    let mut dv = TokenMajor::new(dims.batch, dims.n_kv_heads, dims.seq_kv, dims.head_dim);
    let ptrs = (
        SharedMut(dq.data.as_mut_ptr()),
        SharedMut(dk.data.as_mut_ptr()),
        SharedMut(dv.data.as_mut_ptr()),
    );
    let (dq_ref, dkv_ref) = (&dq, &dk);
    let skv = dims.seq_kv as isize;
    (0..dims.batch * dims.n_kv_heads)
        .into_par_iter()
        .for_each_init(
            || {
                (
                    vec![0.0f32; dims.seq_q * dims.seq_kv],
                    vec![0.0f32; dims.seq_q * dims.seq_kv],
                )
            },
            |(p, dp), task| {
                let (dq_ptr, dk_ptr, dv_ptr) = ptrs;
                let (b, g) = (task / dims.n_kv_heads, task % dims.n_kv_heads);
                let (kv_at, kv_rs) = dkv_ref.head(b, g);
                for (i, h) in (g * dims.group()..(g + 1) * dims.group()).enumerate() {
                    let accumulate = i > 0;
                    dims.scores(&qv, &kv, b, h, g, p);
                    dims.probabilities(p);
                    let (q_at, q_rs) = dq_ref.head(b, h);
                    // SAFETY (all four): this task alone writes dq head h and dk/dv head g
                    // of batch b; p and dp are its own seq_q×seq_kv scratch buffers; the
                    // inputs are read through their views' strides.
                    unsafe {
                        // dV_g += Pᵀ · dO_h
                        matmul(
                            dims.seq_kv,
                            dims.head_dim,
                            dims.seq_q,
                            dv_ptr.get().add(kv_at),
                            kv_rs,
                            accumulate,
                            p.as_ptr(),
                            1,
                            skv,
                            dov.head(b, h),
                            dov.row_stride(),
                            dov.col_stride(),
                        );
                        // dP = dO_h · v_gᵀ
                        matmul(
                            dims.seq_q,
                            dims.seq_kv,
                            dims.head_dim,
                            dp.as_mut_ptr(),
                            skv,
                            false,
                            dov.head(b, h),
                            dov.row_stride(),
                            dov.col_stride(),
                            vv.head(b, g),
                            vv.col_stride(),
                            vv.row_stride(),
                        );
                    }
                    // dS = scale · P ∘ (dP − rowsum(P ∘ dP)), into dp.
                    softmax_backward_rows(p, dp, dims.seq_kv, dims.scale());
                    // SAFETY: as above.
                    unsafe {
                        // dQ_h = dS · k_g
                        matmul(
                            dims.seq_q,
                            dims.head_dim,
                            dims.seq_kv,
                            dq_ptr.get().add(q_at),
                            q_rs,
                            false,
                            dp.as_ptr(),
                            skv,
                            1,
                            kv.head(b, g),
                            kv.row_stride(),
                            kv.col_stride(),
                        );
                        // dK_g += dSᵀ · q_h
                        matmul(
                            dims.seq_kv,
                            dims.head_dim,
                            dims.seq_q,
                            dk_ptr.get().add(kv_at),
                            kv_rs,
                            accumulate,
                            dp.as_ptr(),
                            1,
                            skv,
                            qv.head(b, h),
                            qv.row_stride(),
                            qv.col_stride(),
                        );
                    }
                }
            },
        );
    (dq.into_tensor(), dk.into_tensor(), dv.into_tensor())
}

/// Whether the kernels apply: four f32 tensors of rank 4.
pub fn supported(ts: &[&FlexTensor]) -> bool {
    ts.iter()
        .all(|t| t.dtype() == DType::F32 && t.layout().shape().num_dims() == 4)
}
