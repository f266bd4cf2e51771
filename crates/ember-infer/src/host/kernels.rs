//! Vector kernels for the host decoder: f32 dot products and `axpy`, and the dot products
//! of one int8 or 4-bit row with block scales (see [`super::Matrix`] for the layouts).
//!
//! The inner loops keep 16 independent accumulators, which LLVM turns into vector FMAs;
//! they are compiled three times (AVX-512, AVX2 + FMA, and portable) and the best the
//! CPU supports is picked once at run time.

use std::sync::OnceLock;

/// Accumulator lanes of the inner loops.
const LANES: usize = 16;
/// Elements per int8 block (one f32 scale each); a row's last block holds the remaining
/// `cols % Q8_BLOCK` columns when `cols` is not a multiple.
pub const Q8_BLOCK: usize = 32;

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

            /// `q`, `x`: `[cols]`; `scales`: `[cols.div_ceil(Q8_BLOCK)]`, the last one
            /// for the partial block of `cols % Q8_BLOCK` columns when there is one.
            $(#[target_feature(enable = $feature)])*
            pub unsafe fn dot_q8(q: &[i8], scales: &[f32], x: &[f32]) -> f32 {
                let (qs, xs) = (q.chunks_exact(Q8_BLOCK), x.chunks_exact(Q8_BLOCK));
                let (q_tail, x_tail) = (qs.remainder(), xs.remainder());
                let mut acc = [0f32; LANES];
                for ((qb, xb), &scale) in qs.zip(xs).zip(scales) {
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
                let mut sum: f32 = acc.iter().sum();
                if !q_tail.is_empty() {
                    // The partial block: whole lanes, then single columns, one scale.
                    let (qs, xs) = (q_tail.chunks_exact(LANES), x_tail.chunks_exact(LANES));
                    let rest = qs.remainder().iter().zip(xs.remainder());
                    let mut block = [0f32; LANES];
                    for (qb, xb) in qs.zip(xs) {
                        for j in 0..LANES {
                            block[j] += qb[j] as f32 * xb[j];
                        }
                    }
                    let mut tail: f32 = block.iter().sum();
                    for (&q, &x) in rest {
                        tail += q as f32 * x;
                    }
                    sum += scales[q.len() / Q8_BLOCK] * tail;
                }
                sum
            }

            /// `q`: `[blocks · Q8_BLOCK / 2]` bytes, block `b`'s byte `j` holding column
            /// `b · 32 + j` in its low nibble and `b · 32 + 16 + j` in its high one, each
            /// as `value + 8` (values −8 to 7; columns past `x.len()` are zero padding);
            /// `scales`: `[blocks]`; `x`: `[cols]`.
            $(#[target_feature(enable = $feature)])*
            pub unsafe fn dot_q4(q: &[u8], scales: &[f32], x: &[f32]) -> f32 {
                const HALF: usize = Q8_BLOCK / 2;
                let full = x.len() / Q8_BLOCK;
                let mut acc = [0f32; LANES];
                for b in 0..full {
                    let qb = &q[b * HALF..(b + 1) * HALF];
                    let xb = &x[b * Q8_BLOCK..(b + 1) * Q8_BLOCK];
                    let mut block = [0f32; LANES];
                    for j in 0..HALF {
                        let lo = (qb[j] & 0x0f) as i32 - 8;
                        let hi = (qb[j] >> 4) as i32 - 8;
                        block[j] += lo as f32 * xb[j] + hi as f32 * xb[HALF + j];
                    }
                    for j in 0..LANES {
                        acc[j] += scales[b] * block[j];
                    }
                }
                let mut sum: f32 = acc.iter().sum();
                let rest = x.len() - full * Q8_BLOCK;
                if rest > 0 {
                    let qb = &q[full * HALF..(full + 1) * HALF];
                    let xb = &x[full * Q8_BLOCK..];
                    let mut tail = 0f32;
                    for (i, &xv) in xb.iter().enumerate() {
                        let byte = qb[i % HALF];
                        let nibble = if i < HALF { byte & 0x0f } else { byte >> 4 };
                        tail += (nibble as i32 - 8) as f32 * xv;
                    }
                    sum += scales[full] * tail;
                }
                sum
            }

            $(#[target_feature(enable = $feature)])*
            pub unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
                for (y, x) in y.iter_mut().zip(x) {
                    *y += a * x;
                }
            }

            /// One query head against the keys and values at `offsets` (+ `head`, the
            /// head's column): `out = softmax(scale · q·k) · v`, in one call so the
            /// per-position dot and `axpy` inline. `scores` is scratch.
            #[allow(clippy::too_many_arguments)]
            $(#[target_feature(enable = $feature)])*
            pub unsafe fn attend(
                q: &[f32],
                keys: &[f32],
                values: &[f32],
                offsets: &[usize],
                head: usize,
                scale: f32,
                scores: &mut Vec<f32>,
                out: &mut [f32],
            ) {
                let hd = q.len();
                scores.clear();
                let mut max = f32::NEG_INFINITY;
                for &at in offsets {
                    let at = at + head;
                    // SAFETY: same features as this function.
                    let s = unsafe { dot(q, &keys[at..at + hd]) } * scale;
                    max = max.max(s);
                    scores.push(s);
                }
                let mut total = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    total += *s;
                }
                out.fill(0.0);
                for (&at, s) in offsets.iter().zip(scores.iter()) {
                    let at = at + head;
                    // SAFETY: as above.
                    unsafe { axpy(out, s / total, &values[at..at + hd]) };
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
kernels!(avx512, "avx512f", "fma");
#[cfg(target_arch = "x86_64")]
kernels!(avx2, "avx2", "fma");
kernels!(portable,);

/// One compiled set of kernels. Calling them is `unsafe`: only sets from [`available`]
/// may run on this CPU.
#[derive(Clone, Copy)]
pub(super) struct Kernels {
    pub dot: unsafe fn(&[f32], &[f32]) -> f32,
    pub dot_q8: unsafe fn(&[i8], &[f32], &[f32]) -> f32,
    pub dot_q4: unsafe fn(&[u8], &[f32], &[f32]) -> f32,
    pub axpy: unsafe fn(&mut [f32], f32, &[f32]),
    #[allow(clippy::type_complexity)]
    pub attend: unsafe fn(&[f32], &[f32], &[f32], &[usize], usize, f32, &mut Vec<f32>, &mut [f32]),
}

/// The kernel sets this CPU can run, named `"avx512"`, `"avx2"` or `"portable"`, fastest
/// first (the portable set always last).
pub(super) fn available() -> Vec<(&'static str, Kernels)> {
    let mut sets = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            sets.push((
                "avx512",
                Kernels {
                    dot: avx512::dot,
                    dot_q8: avx512::dot_q8,
                    dot_q4: avx512::dot_q4,
                    axpy: avx512::axpy,
                    attend: avx512::attend,
                },
            ));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            sets.push((
                "avx2",
                Kernels {
                    dot: avx2::dot,
                    dot_q8: avx2::dot_q8,
                    dot_q4: avx2::dot_q4,
                    axpy: avx2::axpy,
                    attend: avx2::attend,
                },
            ));
        }
    }
    sets.push((
        "portable",
        Kernels {
            dot: portable::dot,
            dot_q8: portable::dot_q8,
            dot_q4: portable::dot_q4,
            axpy: portable::axpy,
            attend: portable::attend,
        },
    ));
    sets
}

/// The fastest kernels for this CPU.
pub(super) fn kernels() -> Kernels {
    static CHOSEN: OnceLock<Kernels> = OnceLock::new();
    *CHOSEN.get_or_init(|| available()[0].1)
}

/// `Σ a[i] b[i]`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    // SAFETY: the kernel was chosen for features this CPU has.
    unsafe { (kernels().dot)(a, b) }
}

/// One head's attention over the positions at `offsets` (each `+ head`) of `keys` and
/// `values`: `out = softmax(scale · q·kᵀ) · v` (`q`, `out`: `[head_dim]`).
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    offsets: &[usize],
    head: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    assert_eq!(q.len(), out.len());
    // SAFETY: the kernel was chosen for features this CPU has; slices are bounds-checked.
    unsafe { (kernels().attend)(q, keys, values, offsets, head, scale, scores, out) }
}

/// `y += a · x`.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    debug_assert_eq!(y.len(), x.len());
    // SAFETY: as above.
    unsafe { (kernels().axpy)(y, a, x) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axpy_and_dot_match_naive_on_every_kernel_set() {
        let values =
            |n: usize, seed: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * seed).sin()).collect() };
        for n in [0, 1, 15, 16, 37, 100] {
            let (a, b) = (values(n, 0.7), values(n, 1.3));
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            for (name, k) in available() {
                // SAFETY: `available` lists only sets this CPU runs.
                let got = unsafe { (k.dot)(&a, &b) };
                assert!((got as f64 - naive).abs() < 1e-5, "{name} n={n}");
                let mut y = a.clone();
                // SAFETY: as above.
                unsafe { (k.axpy)(&mut y, 0.5, &b) };
                for i in 0..n {
                    assert!((y[i] - (a[i] + 0.5 * b[i])).abs() < 1e-6, "{name}");
                }
            }
        }
    }

    #[test]
    fn attend_matches_a_naive_softmax_on_every_kernel_set() {
        let values =
            |n: usize, seed: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * seed).sin()).collect() };
        // Rows of 40 floats; the head lives at column 8, 24 wide.
        let (width, head, hd) = (40, 8, 24);
        let (keys, vals) = (values(10 * width, 0.37), values(10 * width, 0.91));
        let q = values(hd, 1.7);
        let offsets: Vec<usize> = [0, 3, 4, 9].iter().map(|p| p * width).collect();
        let scale = 0.3f32;
        let scores: Vec<f64> = offsets
            .iter()
            .map(|&at| {
                let k = &keys[at + head..at + head + hd];
                q.iter()
                    .zip(k)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let want: Vec<f64> = (0..hd)
            .map(|i| {
                offsets
                    .iter()
                    .zip(&weights)
                    .map(|(&at, w)| w / total * vals[at + head + i] as f64)
                    .sum()
            })
            .collect();
        for (name, k) in available() {
            let mut out = vec![f32::NAN; hd];
            let mut scratch = Vec::new();
            // SAFETY: `available` lists only sets this CPU runs.
            unsafe {
                (k.attend)(
                    &q,
                    &keys,
                    &vals,
                    &offsets,
                    head,
                    scale,
                    &mut scratch,
                    &mut out,
                )
            };
            for (g, w) in out.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "{name}: {g} vs {w}");
            }
        }
    }
}
