//! Matrix-vector kernels for the host decoder: f32 and block-quantised int8 weights.
//!
//! The inner loops keep 16 independent accumulators, which LLVM turns into vector FMAs;
//! they are compiled three times (AVX-512, AVX2 + FMA, and portable) and the best the
//! CPU supports is picked once at run time.

use std::sync::OnceLock;

use rayon::prelude::*;

/// Accumulator lanes of the inner loops.
const LANES: usize = 16;
/// Elements per int8 block (one f32 scale each).
pub const Q8_BLOCK: usize = 32;
/// Matrices with fewer weight bytes than this run on one thread: below it, waking the
/// other core costs more than it saves (measured on 2 cores: nanoGPT's 128 × 512 f32
/// matrices decode 2× faster serially; stories15M's 288 × 768 ones are faster split in
/// f32, where memory bandwidth is the limit, and serial in int8).
const PARALLEL_MIN_BYTES: usize = 1 << 19;

macro_rules! kernels {
    ($module:ident, $($feature:literal),*) => {
        mod $module {
            use super::{LANES, Q8_BLOCK};

            $(#[target_feature(enable = $feature)])*
            pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
                let n = a.len() / LANES * LANES;
                let mut acc = [0f32; LANES];
                for (ca, cb) in a[..n].chunks_exact(LANES).zip(b[..n].chunks_exact(LANES)) {
                    for j in 0..LANES {
                        acc[j] += ca[j] * cb[j];
                    }
                }
                let mut sum: f32 = acc.iter().sum();
                for i in n..a.len() {
                    sum += a[i] * b[i];
                }
                sum
            }

            $(#[target_feature(enable = $feature)])*
            pub unsafe fn dot_q8(q: &[i8], scales: &[f32], x: &[f32]) -> f32 {
                let mut acc = [0f32; LANES];
                for ((qb, xb), &scale) in q
                    .chunks_exact(Q8_BLOCK)
                    .zip(x.chunks_exact(Q8_BLOCK))
                    .zip(scales)
                {
                    let mut block = [0f32; LANES];
                    for half in 0..Q8_BLOCK / LANES {
                        for j in 0..LANES {
                            let i = half * LANES + j;
                            block[j] += qb[i] as f32 * xb[i];
                        }
                    }
                    for j in 0..LANES {
                        acc[j] += scale * block[j];
                    }
                }
                acc.iter().sum()
            }

            $(#[target_feature(enable = $feature)])*
            pub unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
                for (y, x) in y.iter_mut().zip(x) {
                    *y += a * x;
                }
            }
        }
    };
}

kernels!(avx512, "avx512f", "fma");
kernels!(avx2, "avx2", "fma");
kernels!(portable,);

/// The kernels for this CPU.
#[derive(Clone, Copy)]
struct Kernels {
    dot: unsafe fn(&[f32], &[f32]) -> f32,
    dot_q8: unsafe fn(&[i8], &[f32], &[f32]) -> f32,
    axpy: unsafe fn(&mut [f32], f32, &[f32]),
}

fn kernels() -> Kernels {
    static CHOSEN: OnceLock<Kernels> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return Kernels {
                    dot: avx512::dot,
                    dot_q8: avx512::dot_q8,
                    axpy: avx512::axpy,
                };
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Kernels {
                    dot: avx2::dot,
                    dot_q8: avx2::dot_q8,
                    axpy: avx2::axpy,
                };
            }
        }
        Kernels {
            dot: portable::dot,
            dot_q8: portable::dot_q8,
            axpy: portable::axpy,
        }
    })
}

/// `Σ a[i] b[i]`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    // SAFETY: the kernel was chosen for features this CPU has.
    unsafe { (kernels().dot)(a, b) }
}

/// `y += a · x`.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    debug_assert_eq!(y.len(), x.len());
    // SAFETY: as above.
    unsafe { (kernels().axpy)(y, a, x) }
}

/// A weight matrix `[rows (out), cols (in)]`, row-major, for `y = W x`.
#[derive(Debug, Clone)]
pub enum Matrix {
    F32 {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
    /// Symmetric int8 with one f32 scale per block of [`Q8_BLOCK`] columns
    /// (`w ≈ scale · q`, `scale = max |w| / 127` over the block).
    Q8 {
        rows: usize,
        cols: usize,
        q: Vec<i8>,
        scales: Vec<f32>,
    },
}

impl Matrix {
    /// From row-major `[rows, cols]` values; `quantize` stores int8 when `cols` is a
    /// multiple of [`Q8_BLOCK`] (else f32).
    pub fn new(rows: usize, cols: usize, data: Vec<f32>, quantize: bool) -> Self {
        assert_eq!(data.len(), rows * cols);
        if !quantize || !cols.is_multiple_of(Q8_BLOCK) {
            return Matrix::F32 { rows, cols, data };
        }
        let mut q = Vec::with_capacity(data.len());
        let mut scales = Vec::with_capacity(data.len() / Q8_BLOCK);
        for block in data.chunks_exact(Q8_BLOCK) {
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            scales.push(scale);
            q.extend(
                block
                    .iter()
                    .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
            );
        }
        Matrix::Q8 {
            rows,
            cols,
            q,
            scales,
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Matrix::F32 { rows, .. } | Matrix::Q8 { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Matrix::F32 { cols, .. } | Matrix::Q8 { cols, .. } => *cols,
        }
    }

    /// Bytes of weight data.
    pub fn bytes(&self) -> usize {
        match self {
            Matrix::F32 { data, .. } => data.len() * 4,
            Matrix::Q8 { q, scales, .. } => q.len() + scales.len() * 4,
        }
    }

    fn row_dot(&self, r: usize, x: &[f32]) -> f32 {
        match self {
            Matrix::F32 { cols, data, .. } => dot(&data[r * cols..(r + 1) * cols], x),
            Matrix::Q8 {
                cols, q, scales, ..
            } => {
                let blocks = cols / Q8_BLOCK;
                // SAFETY: the kernel was chosen for features this CPU has.
                unsafe {
                    (kernels().dot_q8)(
                        &q[r * cols..(r + 1) * cols],
                        &scales[r * blocks..(r + 1) * blocks],
                        x,
                    )
                }
            }
        }
    }

    /// `y = W x` (`x`: `[cols]`, `y`: `[rows]`); large matrices split their rows over
    /// the thread pool.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        debug_assert_eq!(x.len(), self.cols());
        debug_assert_eq!(y.len(), self.rows());
        let threads = rayon::current_num_threads();
        if self.bytes() < PARALLEL_MIN_BYTES || threads == 1 {
            for (r, out) in y.iter_mut().enumerate() {
                *out = self.row_dot(r, x);
            }
            return;
        }
        let chunk = self.rows().div_ceil(threads * 4).max(16);
        y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
            for (i, out) in ys.iter_mut().enumerate() {
                *out = self.row_dot(c * chunk + i, x);
            }
        });
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

    #[test]
    fn matvec_matches_naive_sums() {
        // The last shape is large enough (1 MiB in f32) for the parallel split.
        for (rows, cols) in [(3, 5), (17, 64), (300, 288), (1000, 96), (2048, 128)] {
            let w = values(rows * cols, 1);
            let x = values(cols, 2);
            let naive: Vec<f64> = (0..rows)
                .map(|r| {
                    (0..cols)
                        .map(|c| w[r * cols + c] as f64 * x[c] as f64)
                        .sum()
                })
                .collect();
            for quantize in [false, true] {
                let m = Matrix::new(rows, cols, w.clone(), quantize);
                let mut y = vec![0.0; rows];
                m.matvec(&x, &mut y);
                // int8 with block scales: |error| per weight <= scale / 2 <= 0.5 / 254.
                let tol = if matches!(m, Matrix::Q8 { .. }) {
                    cols as f64 * 0.5 / 254.0 * 0.5
                } else {
                    1e-4
                };
                for (a, b) in y.iter().zip(&naive) {
                    assert!(
                        (*a as f64 - b).abs() <= tol,
                        "{rows}x{cols} q={quantize}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn axpy_and_dot_match_naive() {
        let (a, b) = (values(37, 3), values(37, 4));
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - naive).abs() < 1e-5);
        let mut y = a.clone();
        axpy(&mut y, 0.5, &b);
        for i in 0..37 {
            assert!((y[i] - (a[i] + 0.5 * b[i])).abs() < 1e-6);
        }
    }
}
