//! Weight matrices of the host decoder, f32 or int8 with block scales, and their
//! matrix-vector product.

use rayon::prelude::*;

use super::kernels::{self, Kernels, Q8_BLOCK};

/// Matrices with fewer weight bytes than this run on one thread: below it, waking the
/// other core costs more than it saves (measured on 2 cores: nanoGPT's 128 × 512 f32
/// matrices decode 2× faster serially; stories15M's 288 × 768 ones are faster split in
/// f32, where memory bandwidth is the limit, and serial in int8).
const PARALLEL_MIN_BYTES: usize = 1 << 19;

/// A weight matrix `[rows (out), cols (in)]`, row-major, for `y = W x`.
#[derive(Debug, Clone)]
pub enum Matrix {
    /// `data`: `[rows, cols]`.
    F32 {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
    /// Symmetric int8, `w ≈ scale · q`. `q`: `[rows, cols]`, unpadded. `scales`:
    /// `[rows, cols.div_ceil(Q8_BLOCK)]`; block `b` of a row covers its columns
    /// `b · Q8_BLOCK .. min((b + 1) · Q8_BLOCK, cols)`, so when `cols` is not a multiple
    /// of [`Q8_BLOCK`] the last block of each row is partial and has a scale of its own;
    /// `scale = max |w| / 127` over the block (1, with zeros in `q`, when that is 0).
    Q8 {
        rows: usize,
        cols: usize,
        q: Vec<i8>,
        scales: Vec<f32>,
    },
    /// Symmetric 4-bit in groups of [`Q8_BLOCK`] columns (llama.cpp's Q4_0): `w ≈ scale ·
    /// v`, `v` in −8..=7. `q`: `[rows, groups · 16]` bytes, group `g`'s byte `j` holding
    /// column `32g + j` in its low nibble and `32g + 16 + j` in its high one, as `v + 8`;
    /// a row's last group is zero-padded when `cols` is not a multiple of 32. `scales`:
    /// `[rows, groups]`, `scale = m / −8` for the group's weight `m` of largest magnitude
    /// (so `m` itself is exact).
    Q4 {
        rows: usize,
        cols: usize,
        q: Vec<u8>,
        scales: Vec<f32>,
    },
}

impl Matrix {
    /// From row-major `[rows, cols]` values, stored as they are.
    pub fn f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols);
        Matrix::F32 { rows, cols, data }
    }

    /// From row-major `[rows, cols]` values, quantised to int8 with one scale per block
    /// of up to [`Q8_BLOCK`] columns of a row (any `cols`). `Err` when a weight is not
    /// finite (no scale represents it).
    pub fn int8(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, String> {
        assert_eq!(data.len(), rows * cols);
        let mut q = Vec::with_capacity(data.len());
        let mut scales = Vec::with_capacity(rows * cols.div_ceil(Q8_BLOCK));
        for (r, row) in data.chunks_exact(cols.max(1)).take(rows).enumerate() {
            for (b, block) in row.chunks(Q8_BLOCK).enumerate() {
                if let Some(i) = block.iter().position(|v| !v.is_finite()) {
                    return Err(format!(
                        "cannot quantise a {rows} x {cols} matrix to int8: weight [{r}, {}] is {}",
                        b * Q8_BLOCK + i,
                        block[i]
                    ));
                }
                let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                // All zeros, or too small for any scale (max / 127 underflows): zeros.
                let scale = max / 127.0;
                if scale > 0.0 {
                    scales.push(scale);
                    q.extend(
                        block
                            .iter()
                            .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
                    );
                } else {
                    scales.push(1.0);
                    q.extend(block.iter().map(|_| 0i8));
                }
            }
        }
        Ok(Matrix::Q8 {
            rows,
            cols,
            q,
            scales,
        })
    }

    /// From row-major `[rows, cols]` values, quantised to 4 bits per weight with one
    /// scale per group of 32 columns of a row (any `cols`: the last group is padded).
    /// `Err` when a weight is not finite.
    pub fn int4(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, String> {
        assert_eq!(data.len(), rows * cols);
        let groups = cols.div_ceil(Q8_BLOCK);
        let mut q = vec![0x88u8; rows * groups * Q8_BLOCK / 2];
        let mut scales = Vec::with_capacity(rows * groups);
        for (r, row) in data.chunks_exact(cols.max(1)).take(rows).enumerate() {
            for (g, group) in row.chunks(Q8_BLOCK).enumerate() {
                if let Some(i) = group.iter().position(|v| !v.is_finite()) {
                    return Err(format!(
                        "cannot quantise a {rows} x {cols} matrix to 4 bits: weight [{r}, {}] is {}",
                        g * Q8_BLOCK + i,
                        group[i]
                    ));
                }
                let m = group
                    .iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let scale = m / -8.0;
                let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                scales.push(if scale != 0.0 { scale } else { 1.0 });
                let bytes = &mut q[(r * groups + g) * Q8_BLOCK / 2..][..Q8_BLOCK / 2];
                for (i, &v) in group.iter().enumerate() {
                    let code = ((v * inv).round().clamp(-8.0, 7.0) as i32 + 8) as u8;
                    let byte = &mut bytes[i % (Q8_BLOCK / 2)];
                    *byte = if i < Q8_BLOCK / 2 {
                        (*byte & 0xf0) | code
                    } else {
                        (*byte & 0x0f) | (code << 4)
                    };
                }
            }
        }
        Ok(Matrix::Q4 {
            rows,
            cols,
            q,
            scales,
        })
    }

    /// [`Self::int8`] when `quantize` (panicking on a weight it cannot represent), else
    /// [`Self::f32`].
    pub fn new(rows: usize, cols: usize, data: Vec<f32>, quantize: bool) -> Self {
        if quantize {
            Self::int8(rows, cols, data).unwrap_or_else(|e| panic!("{e}"))
        } else {
            Self::f32(rows, cols, data)
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Matrix::F32 { rows, .. } | Matrix::Q8 { rows, .. } | Matrix::Q4 { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Matrix::F32 { cols, .. } | Matrix::Q8 { cols, .. } | Matrix::Q4 { cols, .. } => *cols,
        }
    }

    /// Whether the weights are stored as int8.
    pub fn is_int8(&self) -> bool {
        matches!(self, Matrix::Q8 { .. })
    }

    /// Whether the weights are stored as 4-bit codes.
    pub fn is_int4(&self) -> bool {
        matches!(self, Matrix::Q4 { .. })
    }

    /// Bytes of weight data.
    pub fn bytes(&self) -> usize {
        match self {
            Matrix::F32 { data, .. } => data.len() * 4,
            Matrix::Q8 { q, scales, .. } => q.len() + scales.len() * 4,
            Matrix::Q4 { q, scales, .. } => q.len() + scales.len() * 4,
        }
    }

    /// The weights the product multiplies by, `[rows, cols]` row-major (`scale · q` for
    /// int8).
    pub fn dequantized(&self) -> Vec<f32> {
        match self {
            Matrix::F32 { data, .. } => data.clone(),
            Matrix::Q8 {
                cols, q, scales, ..
            } => {
                let blocks = cols.div_ceil(Q8_BLOCK);
                (0..q.len())
                    .map(|i| {
                        let (r, c) = (i / cols, i % cols);
                        scales[r * blocks + c / Q8_BLOCK] * q[i] as f32
                    })
                    .collect()
            }
            Matrix::Q4 {
                rows,
                cols,
                q,
                scales,
            } => {
                let groups = cols.div_ceil(Q8_BLOCK);
                let half = Q8_BLOCK / 2;
                let mut out = Vec::with_capacity(rows * cols);
                for r in 0..*rows {
                    for c in 0..*cols {
                        let (g, i) = (c / Q8_BLOCK, c % Q8_BLOCK);
                        let byte = q[(r * groups + g) * half + i % half];
                        let code = if i < half { byte & 0x0f } else { byte >> 4 };
                        out.push(scales[r * groups + g] * (code as i32 - 8) as f32);
                    }
                }
                out
            }
        }
    }

    fn row_dot(&self, k: &Kernels, r: usize, x: &[f32]) -> f32 {
        // SAFETY (both arms): `k` comes from `kernels::available`, so this CPU runs it.
        match self {
            Matrix::F32 { cols, data, .. } => unsafe { (k.dot)(&data[r * cols..][..*cols], x) },
            Matrix::Q8 {
                cols, q, scales, ..
            } => {
                let blocks = cols.div_ceil(Q8_BLOCK);
                unsafe { (k.dot_q8)(&q[r * cols..][..*cols], &scales[r * blocks..][..blocks], x) }
            }
            Matrix::Q4 {
                cols, q, scales, ..
            } => {
                let groups = cols.div_ceil(Q8_BLOCK);
                let bytes = groups * Q8_BLOCK / 2;
                unsafe { (k.dot_q4)(&q[r * bytes..][..bytes], &scales[r * groups..][..groups], x) }
            }
        }
    }

    /// `y = W x` (`x`: `[cols]`, `y`: `[rows]`); large matrices split their rows over
    /// the thread pool.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        self.matvec_with(kernels::kernels(), x, y);
    }

    /// [`Self::matvec`] with the kernel set `k` (one of [`kernels::available`]'s).
    pub(super) fn matvec_with(&self, k: Kernels, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.cols());
        assert_eq!(y.len(), self.rows());
        let threads = rayon::current_num_threads();
        if self.bytes() < PARALLEL_MIN_BYTES || threads == 1 {
            for (r, out) in y.iter_mut().enumerate() {
                *out = self.row_dot(&k, r, x);
            }
            return;
        }
        let chunk = self.rows().div_ceil(threads * 4).max(16);
        y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
            for (i, out) in ys.iter_mut().enumerate() {
                *out = self.row_dot(&k, c * chunk + i, x);
            }
        });
    }

    /// `y[t] = W x[t]` for `n` inputs (`x`: `[n, cols]`, `y`: `[n, rows]`): one pass over
    /// the weights, each row of `W` used for every input while it is in cache; rows split
    /// over the thread pool when the work is large enough.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        self.matmul_with(kernels::kernels(), x, n, y);
    }

    pub(super) fn matmul_with(&self, k: Kernels, x: &[f32], n: usize, y: &mut [f32]) {
        let (rows, cols) = (self.rows(), self.cols());
        assert_eq!(x.len(), n * cols);
        assert_eq!(y.len(), n * rows);
        if n == 1 {
            return self.matvec_with(k, x, y);
        }
        if n >= GEMM_MIN_INPUTS && cols > 0 && rows > 0 {
            return self.matmul_gemm(x, n, y);
        }
        let inputs: Vec<&[f32]> = x.chunks_exact(cols.max(1)).take(n).collect();
        // `[rows, n]`: each weight row's products with every input, then transposed.
        let mut by_row = vec![0f32; rows * n];
        let fill = |first: usize, out: &mut [f32]| {
            for (i, products) in out.chunks_exact_mut(n).enumerate() {
                for (p, input) in products.iter_mut().zip(&inputs) {
                    *p = self.row_dot(&k, first + i, input);
                }
            }
        };
        let threads = rayon::current_num_threads();
        if self.bytes() * n < PARALLEL_MIN_BYTES || threads == 1 {
            fill(0, &mut by_row);
        } else {
            let chunk = rows.div_ceil(threads * 4).max(8);
            by_row
                .par_chunks_mut(chunk * n)
                .enumerate()
                .for_each(|(c, out)| fill(c * chunk, out));
        }
        for (r, products) in by_row.chunks_exact(n).enumerate() {
            for (t, p) in products.iter().enumerate() {
                y[t * rows + r] = *p;
            }
        }
    }
}

/// From this many inputs on, a batched product goes through the register-blocked GEMM
/// (quantized matrices dequantize a band of rows at a time for it): row-by-row dot
/// products load two operands per multiply-add and stop scaling with the batch.
const GEMM_MIN_INPUTS: usize = 4;

/// Rows of a quantized matrix dequantized per GEMM band.
const GEMM_BAND: usize = 64;

/// `y[t, ..rows] = x[t] · wᵀ` for `x`: `[n, cols]` and `w`: `[rows, cols]` row-major;
/// `y`'s rows are `y_stride` apart.
fn gemm_band(
    x: &[f32],
    n: usize,
    w: &[f32],
    rows: usize,
    y: *mut f32,
    y_stride: usize,
    parallelism: gemm::Parallelism,
) {
    let cols = w.len() / rows;
    // SAFETY: `x` is `[n, cols]`, `w` is `[rows, cols]`, and `y` points at a writable
    // `[n, y_stride]` block whose first `rows` columns this band owns; the strides below
    // describe exactly those layouts.
    unsafe {
        gemm::gemm(
            n,
            rows,
            cols,
            y,
            1,
            y_stride as isize,
            false,
            x.as_ptr(),
            1,
            cols as isize,
            w.as_ptr(),
            cols as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A raw pointer that may cross to rayon's threads (each writes disjoint columns).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

impl SendPtr {
    /// The pointer `offset` elements on (a method, so closures capture the whole
    /// `SendPtr`, not its raw field).
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer the pointer came from.
        unsafe { self.0.add(offset) }
    }
}
// SAFETY: the bands written through it are disjoint (see `matmul_gemm`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl Matrix {
    /// [`Self::matmul`] through the GEMM: f32 weights in one call; int8 and 4-bit weights
    /// dequantized [`GEMM_BAND`] rows at a time, bands spread over the thread pool.
    fn matmul_gemm(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let (rows, cols) = (self.rows(), self.cols());
        let threads = rayon::current_num_threads();
        let big = self.bytes() * n >= PARALLEL_MIN_BYTES && threads > 1;
        if let Matrix::F32 { data, .. } = self {
            let parallelism = if big {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            };
            return gemm_band(x, n, data, rows, y.as_mut_ptr(), rows, parallelism);
        }
        let out = SendPtr(y.as_mut_ptr());
        let band = |b: usize, scratch: &mut Vec<f32>| {
            let r0 = b * GEMM_BAND;
            let r1 = (r0 + GEMM_BAND).min(rows);
            scratch.resize((r1 - r0) * cols, 0.0);
            self.dequantize_rows(r0, r1, scratch);
            // Band `b` writes only columns `r0..r1` of `y`.
            let dst = out.at(r0);
            gemm_band(x, n, scratch, r1 - r0, dst, rows, gemm::Parallelism::None);
        };
        let bands = rows.div_ceil(GEMM_BAND);
        if big {
            (0..bands)
                .into_par_iter()
                .for_each_init(Vec::new, |scratch, b| band(b, scratch));
        } else {
            let mut scratch = Vec::new();
            (0..bands).for_each(|b| band(b, &mut scratch));
        }
    }

    /// Rows `r0..r1` as f32 into `out` (`[r1 - r0, cols]`).
    fn dequantize_rows(&self, r0: usize, r1: usize, out: &mut [f32]) {
        match self {
            Matrix::F32 { cols, data, .. } => {
                out.copy_from_slice(&data[r0 * cols..r1 * cols]);
            }
            Matrix::Q8 {
                cols, q, scales, ..
            } => {
                let blocks = cols.div_ceil(Q8_BLOCK);
                for (i, r) in (r0..r1).enumerate() {
                    let row = &q[r * cols..(r + 1) * cols];
                    let dst = &mut out[i * cols..(i + 1) * cols];
                    for (c, (d, &v)) in dst.iter_mut().zip(row).enumerate() {
                        *d = scales[r * blocks + c / Q8_BLOCK] * v as f32;
                    }
                }
            }
            Matrix::Q4 {
                cols, q, scales, ..
            } => {
                let groups = cols.div_ceil(Q8_BLOCK);
                let half = Q8_BLOCK / 2;
                for (i, r) in (r0..r1).enumerate() {
                    let dst = &mut out[i * cols..(i + 1) * cols];
                    for (c, d) in dst.iter_mut().enumerate() {
                        let (g, j) = (c / Q8_BLOCK, c % Q8_BLOCK);
                        let byte = q[(r * groups + g) * half + j % half];
                        let code = if j < half { byte & 0x0f } else { byte >> 4 };
                        *d = scales[r * groups + g] * (code as i32 - 8) as f32;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// Per row of `[rows, cols]` weights `w`: `Σ w x` in f64 and `Σ |w x|`.
    fn naive(w: &[f32], cols: usize, x: &[f32]) -> Vec<(f64, f64)> {
        w.chunks_exact(cols)
            .map(|row| {
                let terms = row.iter().zip(x).map(|(w, x)| *w as f64 * *x as f64);
                (terms.clone().sum(), terms.map(f64::abs).sum())
            })
            .collect()
    }

    /// Widths below, at and between multiples of the block (32) and the lanes (16),
    /// heights that are not multiples of 8 or 16; the last shape (over 512 KiB in int8)
    /// takes the parallel split.
    const SHAPES: [(usize, usize); 13] = [
        (1, 32),
        (7, 48),
        (13, 70),
        (17, 100),
        (33, 1),
        (5, 16),
        (9, 31),
        (3, 33),
        (11, 64),
        (6, 0),
        (19, 97),
        (300, 288),
        (4099, 130),
    ];

    #[test]
    fn int8_matvec_matches_its_dequantised_weights_on_every_kernel_set() {
        let sets = kernels::available();
        println!(
            "kernel sets: {:?}",
            sets.iter().map(|k| k.0).collect::<Vec<_>>()
        );
        for (rows, cols) in SHAPES {
            // Columns of different magnitudes give the blocks different scales.
            let mut w = values(rows * cols, 1);
            for (i, v) in w.iter_mut().enumerate() {
                *v *= 1.0 + (i % cols.max(1) % 7) as f32;
            }
            let x = values(cols, 2);
            let m = Matrix::int8(rows, cols, w.clone()).unwrap();
            let Matrix::Q8 { q, scales, .. } = &m else {
                panic!("{rows}x{cols} is not int8");
            };
            let blocks = cols.div_ceil(Q8_BLOCK);
            assert_eq!((q.len(), scales.len()), (rows * cols, rows * blocks));
            // Every block, the partial last one too, has the scale of its own largest
            // weight, and every weight is within half a step of it.
            let deq = m.dequantized();
            for r in 0..rows {
                for b in 0..blocks {
                    let span = r * cols + b * Q8_BLOCK..r * cols + ((b + 1) * Q8_BLOCK).min(cols);
                    let max = w[span.clone()].iter().fold(0f32, |m, v| m.max(v.abs()));
                    let scale = scales[r * blocks + b];
                    assert_eq!(scale, max / 127.0, "{rows}x{cols} row {r} block {b}");
                    for i in span {
                        assert!(
                            (deq[i] - w[i]).abs() <= scale * 0.5001,
                            "{rows}x{cols} [{i}]"
                        );
                    }
                }
            }
            // The product is the dequantised weights' up to f32 summation order, and
            // within the quantisation step of the f32 weights' product.
            let want = naive(&deq, cols.max(1), &x);
            let exact = naive(&w, cols.max(1), &x);
            for (name, k) in &sets {
                let mut y = vec![f32::NAN; rows];
                m.matvec_with(*k, &x, &mut y);
                for r in 0..rows {
                    let (sum, abs) = if cols == 0 { (0.0, 0.0) } else { want[r] };
                    let rounding = (cols + 8) as f64 * f32::EPSILON as f64 * abs;
                    let got = y[r] as f64;
                    assert!(
                        (got - sum).abs() <= rounding,
                        "{name} {rows}x{cols} row {r}: {got} vs {sum}"
                    );
                    if cols > 0 {
                        let step: f64 = (0..cols)
                            .map(|c| {
                                let s = scales[r * blocks + c / Q8_BLOCK] as f64;
                                s * 0.5001 * (x[c] as f64).abs()
                            })
                            .sum();
                        assert!((got - exact[r].0).abs() <= step + rounding, "{name}");
                    }
                }
            }
        }
    }

    #[test]
    fn int4_matvec_and_matmul_match_their_dequantised_weights_on_every_kernel_set() {
        let sets = kernels::available();
        for (rows, cols) in SHAPES {
            let mut w = values(rows * cols, 3);
            for (i, v) in w.iter_mut().enumerate() {
                *v *= 1.0 + (i % cols.max(1) % 5) as f32;
            }
            let m = Matrix::int4(rows, cols, w.clone()).unwrap();
            let Matrix::Q4 { q, scales, .. } = &m else {
                panic!("{rows}x{cols} is not 4-bit");
            };
            let groups = cols.div_ceil(Q8_BLOCK);
            assert_eq!((q.len(), scales.len()), (rows * groups * 16, rows * groups));
            // Each group's weight of largest magnitude is exact (scale = m / -8), and
            // every weight is within one step (half a step, but for the positive end of
            // a group whose extreme is negative, clamped at 7).
            let deq = m.dequantized();
            assert_eq!(deq.len(), rows * cols);
            for r in 0..rows {
                for g in 0..groups {
                    let span = r * cols + g * Q8_BLOCK..r * cols + ((g + 1) * Q8_BLOCK).min(cols);
                    let extreme = w[span.clone()]
                        .iter()
                        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    let scale = scales[r * groups + g];
                    assert_eq!(scale, extreme / -8.0, "{rows}x{cols} row {r} group {g}");
                    for i in span {
                        let err = (deq[i] - w[i]).abs();
                        assert!(err <= scale.abs() * 1.0001, "{rows}x{cols} [{i}]");
                        if w[i] == extreme {
                            assert!(err <= extreme.abs() * 1e-6);
                        }
                    }
                }
            }
            for n in [1, 3, 8] {
                let x = values(n * cols, 4 + n as u64);
                for (name, k) in &sets {
                    let mut y = vec![f32::NAN; n * rows];
                    m.matmul_with(*k, &x, n, &mut y);
                    for t in 0..n {
                        let want = naive(&deq, cols.max(1), &x[t * cols..(t + 1) * cols]);
                        for r in 0..rows {
                            let (sum, abs) = if cols == 0 { (0.0, 0.0) } else { want[r] };
                            let rounding = (cols + 8) as f64 * f32::EPSILON as f64 * abs;
                            let got = y[t * rows + r] as f64;
                            assert!(
                                (got - sum).abs() <= rounding + 1e-12,
                                "{name} {rows}x{cols} n={n} row {r}: {got} vs {sum}"
                            );
                        }
                    }
                }
            }
        }
        // The batched (GEMM) path of f32 and int8 weights too.
        for (rows, cols) in SHAPES {
            let w = values(rows * cols, 9);
            for m in [
                Matrix::f32(rows, cols, w.clone()),
                Matrix::int8(rows, cols, w.clone()).unwrap(),
            ] {
                let deq = m.dequantized();
                let n = 8;
                let x = values(n * cols, 10);
                let mut y = vec![f32::NAN; n * rows];
                m.matmul(&x, n, &mut y);
                for t in 0..n {
                    let want = naive(&deq, cols.max(1), &x[t * cols..(t + 1) * cols]);
                    for r in 0..rows {
                        let (sum, abs) = if cols == 0 { (0.0, 0.0) } else { want[r] };
                        let rounding = (cols + 8) as f64 * f32::EPSILON as f64 * abs;
                        let got = y[t * rows + r] as f64;
                        assert!(
                            (got - sum).abs() <= rounding + 1e-12,
                            "{rows}x{cols} t={t} r={r}"
                        );
                    }
                }
            }
        }
        // Non-finite weights have no 4-bit code.
        let err = Matrix::int4(1, 3, vec![0.0, f32::NAN, 1.0]).unwrap_err();
        assert!(err.contains("NaN"), "{err}");
    }

    #[test]
    fn f32_matvec_matches_naive_sums_on_every_kernel_set() {
        for (rows, cols) in SHAPES {
            let (w, x) = (values(rows * cols, 3), values(cols, 4));
            let m = Matrix::f32(rows, cols, w.clone());
            assert!(!m.is_int8());
            let want = naive(&w, cols.max(1), &x);
            for (name, k) in kernels::available() {
                let mut y = vec![f32::NAN; rows];
                m.matvec_with(k, &x, &mut y);
                for r in 0..rows {
                    let (sum, abs) = if cols == 0 { (0.0, 0.0) } else { want[r] };
                    let tol = (cols + 8) as f64 * f32::EPSILON as f64 * abs;
                    assert!((y[r] as f64 - sum).abs() <= tol, "{name} {rows}x{cols}");
                }
            }
        }
    }

    #[test]
    fn non_finite_weights_are_an_error_not_a_fallback() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut w = values(3 * 40, 5);
            w[40 + 35] = bad;
            let err = Matrix::int8(3, 40, w).unwrap_err();
            assert!(err.contains("weight [1, 35]"), "{err}");
        }
        // Zeros and values too small for a normal scale quantise (to zeros).
        let m = Matrix::int8(2, 40, vec![0.0; 80]).unwrap();
        assert!(m.dequantized().iter().all(|v| *v == 0.0));
        for small in [f32::from_bits(1), 1e-40] {
            let w = vec![small, 0.0, -small, small / 2.0];
            let m = Matrix::int8(1, 4, w.clone()).unwrap();
            for (d, w) in m.dequantized().iter().zip(&w) {
                assert!(
                    (d - w).abs() <= small / 127.0 + f32::from_bits(1),
                    "{d} vs {w}"
                );
            }
        }
    }
}
