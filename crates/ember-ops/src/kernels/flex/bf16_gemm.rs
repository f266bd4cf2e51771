//! `C = A · B` with bf16 inputs and f32 accumulation, on AVX512-BF16 (`vdpbf16ps`).
//!
//! `vdpbf16ps` multiplies 32 bf16 pairs and adds each pair's sum into 16 f32 lanes: twice
//! the multiply-adds of an f32 FMA per instruction. The operands are rounded to bf16
//! (round to nearest even) while being packed, the products and sums stay in f32: what
//! PyTorch does under `torch.set_float32_matmul_precision("medium")` or bf16 autocast on
//! a CPU, with f32 master weights left untouched.
//!
//! The structure is the usual one (BLIS): for each block of `KC_PAIRS` pairs along `k`,
//! pack `B` into panels of `NR` columns (`[pair][column]`, each `u32` two bf16 values
//! along `k`) and `A` into panels of `MR` rows (`[pair][row]`), then run an `MR × NR`
//! register-tile kernel over every pair of panels. The tiles are split across rayon's
//! threads. Operands are read through strides, so transposed views (the backward pass)
//! need no copy; the packers have vector paths for unit-stride rows and columns.

use rayon::prelude::*;

use crate::kernels::cpu_features;

/// Rows of the register tile.
const MR: usize = 8;
/// Columns of the register tile: two 16-lane vectors.
const NR: usize = 32;
/// Pairs of `k` per packed block: `k` up to 768 in one block, so a product runs two
/// parallel regions (pack, multiply) per block. A row panel (`MR · KC_PAIRS · 4` = 12 KiB)
/// stays in L1 while the column panel (48 KiB) streams from L2, 128 bytes per 16
/// `vdpbf16ps`.
const KC_PAIRS: usize = 384;
/// Below this many multiply-adds the product runs on the calling thread.
const PARALLEL_MIN_FLOPS: usize = 1 << 20;

/// A read-only strided matrix: element `(i, j)` is `data[offset + i·row_stride + j·col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub row_stride: isize,
    pub col_stride: isize,
}

impl MatRef<'_> {
    /// The buffer index of element `(i, j)` (negative only for a view that does not fit,
    /// which [`MatRef::check`] refuses).
    #[inline(always)]
    fn index(&self, i: usize, j: usize) -> isize {
        self.offset as isize + i as isize * self.row_stride + j as isize * self.col_stride
    }

    #[inline(always)]
    pub(super) fn at(&self, i: usize, j: usize) -> f32 {
        self.data[self.index(i, j) as usize]
    }

    /// Checks that every element of a `rows × cols` view lies inside `data`.
    pub(super) fn check(&self, rows: usize, cols: usize, name: &str) {
        if rows == 0 || cols == 0 {
            return;
        }
        let corners = [(0, 0), (rows - 1, 0), (0, cols - 1), (rows - 1, cols - 1)];
        for (i, j) in corners {
            let index = self.index(i, j);
            assert!(
                index >= 0 && (index as usize) < self.data.len(),
                "bf16 gemm: operand {name} ({rows}x{cols}) reaches outside its buffer"
            );
        }
    }
}

/// Whether this CPU runs [`gemm`]: AVX-512F with the BF16 extension
/// ([`cpu_features::avx512_bf16`], which builds without the `flex` feature can call).
pub fn available() -> bool {
    cpu_features::avx512_bf16()
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays NaN), as `vcvtneps2bf16` does.
#[inline(always)]
pub fn to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

/// f32 rounded to the nearest bf16 value (the reference for the kernel's inputs).
pub fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(to_bf16_bits(x)) << 16)
}

#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(to_bf16_bits(lo)) | (u32::from(to_bf16_bits(hi)) << 16)
}

/// `c[m × n] (row-major, overwritten) = a[m × k] · b[k × n]`, inputs rounded to bf16.
///
/// # Panics
/// If the CPU lacks AVX512-BF16 (see [`available`]), if `c` is not `m · n` long, or if a
/// view reaches outside its buffer.
pub fn gemm(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: &mut [f32]) {
    // SAFETY: an initialised `f32` is a valid `MaybeUninit<f32>`, and `gemm_uninit` only
    // writes initialised values.
    let c = unsafe { &mut *(c as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) };
    gemm_uninit(m, n, k, a, b, c)
}

/// [`gemm`] into uninitialised memory: every element of `c` is written (the output of a
/// fresh `Vec::with_capacity` needs no zeroing first).
///
/// # Panics
/// As [`gemm`].
pub fn gemm_uninit(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [std::mem::MaybeUninit<f32>],
) {
    assert!(available(), "bf16 gemm: this CPU lacks AVX512-BF16");
    assert_eq!(c.len(), m * n, "bf16 gemm: output is not m x n");
    a.check(m, k, "a");
    b.check(k, n, "b");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(std::mem::MaybeUninit::new(0.0));
        return;
    }
    let pairs = k.div_ceil(2);
    // `B`'s columns are packed like `A`'s rows: as the rows of `Bᵀ`.
    let b_t = MatRef {
        row_stride: b.col_stride,
        col_stride: b.row_stride,
        ..b
    };
    let m_panels = m.div_ceil(MR);
    let n_panels = n.div_ceil(NR);
    let parallel = m * n * k >= PARALLEL_MIN_FLOPS && rayon::current_num_threads() > 1;
    // `A`'s rows hold their `k` values side by side: the kernel reads its pairs straight
    // from rows converted to bf16 in place (`[row][pair]`), with no transposition.
    let a_by_rows = a.col_stride == 1;
    let mut run = |(packed_a, packed_b): &mut (Vec<u32>, Vec<u32>)| {
        // Every element is written by the packers: no zeroing needed.
        packed_a.resize(m_panels * MR * KC_PAIRS, 0);
        packed_b.resize(n_panels * NR * KC_PAIRS, 0);
        for p0 in (0..pairs).step_by(KC_PAIRS) {
            let kcp = KC_PAIRS.min(pairs - p0);
            let pack_a = |(i, panel): (usize, &mut [u32])| {
                // SAFETY: `available()` was checked on entry.
                unsafe {
                    if a_by_rows {
                        convert_rows(a, m, k, i * MR, p0, kcp, panel)
                    } else {
                        pack_panel(a, m, k, i * MR, p0, MR, &mut panel[..MR * kcp])
                    }
                }
            };
            let pack_b = |(j, panel): (usize, &mut [u32])| {
                // SAFETY: `available()` was checked on entry.
                unsafe { pack_panel(b_t, n, k, j * NR, p0, NR, &mut panel[..NR * kcp]) }
            };
            let a_panels = &mut packed_a[..m_panels * MR * KC_PAIRS];
            let b_panels = &mut packed_b[..n_panels * NR * KC_PAIRS];
            if parallel {
                rayon::join(
                    || {
                        a_panels
                            .par_chunks_mut(MR * KC_PAIRS)
                            .enumerate()
                            .for_each(pack_a)
                    },
                    || {
                        b_panels
                            .par_chunks_mut(NR * KC_PAIRS)
                            .enumerate()
                            .for_each(pack_b)
                    },
                );
            } else {
                a_panels
                    .chunks_mut(MR * KC_PAIRS)
                    .enumerate()
                    .for_each(pack_a);
                b_panels
                    .chunks_mut(NR * KC_PAIRS)
                    .enumerate()
                    .for_each(pack_b);
            }
            let accumulate = p0 > 0;
            let (packed_a, packed_b) = (&*packed_a, &*packed_b);
            let out = SharedOut(c.as_mut_ptr().cast::<f32>());
            // Tile `t` is row panel `t / n_panels`, column panel `t % n_panels`: a thread's
            // contiguous range of tiles reuses each packed row panel across columns.
            let tile = |t: usize| {
                let (i, j) = (t / n_panels, t % n_panels);
                let rows = MR.min(m - i * MR);
                let cols = NR.min(n - j * NR);
                let a_panel = &packed_a[i * MR * KC_PAIRS..][..MR * KC_PAIRS];
                let a_pairs = if a_by_rows {
                    // Rows past `m` read the last row again; the kernel stores none of them.
                    RowPairs {
                        rows: std::array::from_fn(|r| {
                            a_panel[r.min(rows - 1) * KC_PAIRS..].as_ptr()
                        }),
                        pair_stride: 1,
                    }
                } else {
                    RowPairs {
                        rows: std::array::from_fn(|r| a_panel[r..].as_ptr()),
                        pair_stride: MR,
                    }
                };
                let b_panel = &packed_b[j * NR * KC_PAIRS..][..NR * kcp];
                let out = &out;
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `available()` was checked on entry; the panels hold `kcp` pairs;
                // tile `(i, j)` writes only its own `rows × cols` block of `c` (row stride
                // `n`), which no other tile touches.
                unsafe {
                    kernel(
                        kcp,
                        a_pairs,
                        b_panel,
                        out.0.add(i * MR * n + j * NR),
                        n,
                        rows,
                        cols,
                        accumulate,
                    )
                };
            };
            if parallel {
                (0..m_panels * n_panels).into_par_iter().for_each(tile);
            } else {
                (0..m_panels * n_panels).for_each(tile);
            }
        }
    };
    // A thread that waits inside one product may run another (rayon work stealing): that
    // one packs into buffers of its own.
    PACKED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => run(&mut buffers),
        Err(_) => run(&mut Default::default()),
    });
}

/// The output's base pointer, shared by the tile tasks (each writes a disjoint block).
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint tiles through it, and `gemm` holds `&mut c` meanwhile.
unsafe impl Sync for SharedOut {}

thread_local! {
    /// The packed panels of the calling thread's last product, reused (fresh allocations
    /// of this size are zero pages that fault in on every call).
    static PACKED: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Line `line`'s values at `kk` and `kk + 1` as one bf16 pair, zero past `k`.
#[inline(always)]
fn pair_at(view: MatRef, line: usize, kk: usize, k: usize) -> u32 {
    let at = |j: usize| if j < k { view.at(line, j) } else { 0.0 };
    pair(at(kk), at(kk + 1))
}

/// Pairs of the block starting at pair `p0` whose two values both lie inside `k`.
fn whole_pairs(k: usize, p0: usize, kcp: usize) -> usize {
    (k / 2).saturating_sub(p0).min(kcp)
}

/// Packs lines `line0 .. line0 + width` of `view` (rows of `A`, or columns of `B` given
/// as `Bᵀ`), pairs `p0 ..` along its columns (as many as `out` holds), as
/// `[pair][line]`, zero past the matrix.
///
/// # Safety
/// On x86-64 the CPU must have AVX512-BF16 (compiled with it so the converters inline).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bf16"))]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_panel(
    view: MatRef,
    lines: usize,
    k: usize,
    line0: usize,
    p0: usize,
    width: usize,
    out: &mut [u32],
) {
    let kcp = out.len() / width;
    let valid = width.min(lines - line0);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if view.col_stride == 1 {
        // Each line's pairs are adjacent in memory: convert the line, scatter its pairs.
        done = whole_pairs(k, p0, kcp);
        let mut line_pairs = [0u32; KC_PAIRS];
        for l in 0..width {
            if l < valid {
                let start = offset(view, line0 + l, 2 * p0);
                // SAFETY: `available()` holds (the caller's contract).
                unsafe {
                    convert_pairs(&view.data[start..start + 2 * done], &mut line_pairs[..done])
                };
                for (p, &v) in line_pairs[..done].iter().enumerate() {
                    out[p * width + l] = v;
                }
            } else {
                for p in 0..done {
                    out[p * width + l] = 0;
                }
            }
        }
    } else if view.row_stride == 1 {
        // The lines of one `k` are adjacent in memory.
        done = whole_pairs(k, p0, kcp);
        for p in 0..done {
            let lo = offset(view, line0, 2 * (p0 + p));
            let hi = offset(view, line0, 2 * (p0 + p) + 1);
            // SAFETY: `available()` holds (the caller's contract).
            unsafe {
                interleave_pairs(
                    &view.data[lo..lo + valid],
                    &view.data[hi..hi + valid],
                    &mut out[p * width..][..width],
                )
            };
        }
    }
    for p in done..kcp {
        let kk = 2 * (p0 + p);
        for l in 0..width {
            out[p * width + l] = if l < valid {
                pair_at(view, line0 + l, kk, k)
            } else {
                0
            };
        }
    }
}

/// Converts rows `line0 .. line0 + MR` of `view` (whose columns are adjacent:
/// `col_stride == 1`), pairs `p0 .. p0 + kcp`, into `out` as `[row][pair]` with row stride
/// `KC_PAIRS`, zero past `k`. Rows past `lines` are left alone.
///
/// # Safety
/// On x86-64 the CPU must have AVX512-BF16.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bf16"))]
unsafe fn convert_rows(
    view: MatRef,
    lines: usize,
    k: usize,
    line0: usize,
    p0: usize,
    kcp: usize,
    out: &mut [u32],
) {
    let done = whole_pairs(k, p0, kcp);
    for l in 0..MR.min(lines - line0) {
        let row = &mut out[l * KC_PAIRS..][..kcp];
        let start = offset(view, line0 + l, 2 * p0);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available()` holds (the caller's contract).
        unsafe {
            convert_pairs(&view.data[start..start + 2 * done], &mut row[..done])
        };
        #[cfg(not(target_arch = "x86_64"))]
        for (p, v) in row[..done].iter_mut().enumerate() {
            *v = pair(view.data[start + 2 * p], view.data[start + 2 * p + 1]);
        }
        for (p, v) in row.iter_mut().enumerate().skip(done) {
            let kk = 2 * (p0 + p);
            *v = pair_at(view, line0 + l, kk, k);
        }
    }
}

/// The buffer index of element `(i, j)` of a checked view.
#[inline(always)]
fn offset(view: MatRef, i: usize, j: usize) -> usize {
    view.index(i, j) as usize
}

/// `out[p] = (bf16(x[2p]), bf16(x[2p + 1]))` for adjacent values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn convert_pairs(x: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    debug_assert_eq!(x.len(), 2 * out.len());
    let mut chunks = x.chunks_exact(32);
    let mut outs = out.chunks_exact_mut(16);
    for (c, o) in (&mut chunks).zip(&mut outs) {
        // SAFETY: `c` holds 32 values and `o` 16 slots.
        unsafe {
            let lo = _mm512_loadu_ps(c.as_ptr());
            let hi = _mm512_loadu_ps(c.as_ptr().add(16));
            let packed = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(
                o.as_mut_ptr().cast(),
                std::mem::transmute::<__m512bh, __m512i>(packed),
            );
        }
    }
    for (o, c) in outs
        .into_remainder()
        .iter_mut()
        .zip(chunks.remainder().chunks_exact(2))
    {
        *o = pair(c[0], c[1]);
    }
}

/// `out[i] = (bf16(lo[i]), bf16(hi[i]))` for `i < lo.len()`, zero for the rest of `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn interleave_pairs(lo: &[f32], hi: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    let count = lo.len();
    debug_assert!(hi.len() == count && count <= out.len());
    let mut i = 0;
    while i < out.len() {
        let valid = count.saturating_sub(i).min(16);
        let width = (out.len() - i).min(16);
        let load: __mmask16 = if valid == 16 {
            0xffff
        } else {
            (1u16 << valid) - 1
        };
        let store: __mmask16 = if width == 16 {
            0xffff
        } else {
            (1u16 << width) - 1
        };
        // SAFETY: the masks keep the loads inside `lo`/`hi` and the store inside `out`.
        unsafe {
            let l = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(load, lo.as_ptr().add(i.min(count))));
            let h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(load, hi.as_ptr().add(i.min(count))));
            let l = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(l));
            let h = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(h));
            let v = _mm512_or_si512(l, _mm512_slli_epi32::<16>(h));
            _mm512_mask_storeu_epi32(out.as_mut_ptr().add(i).cast(), store, v);
        }
        i += 16;
    }
}

/// Where the kernel reads `A`: pair `p` of tile row `r` is `rows[r][p · pair_stride]`
/// (`[pair][row]` panels: `rows[r] = panel + r`, stride `MR`; rows converted in place:
/// stride 1).
#[derive(Clone, Copy)]
struct RowPairs {
    rows: [*const u32; MR],
    pair_stride: usize,
}

/// The `MR × NR` tile: `c[r][col] (+)= Σ_p a(r, p) · b[p][col]` over `kcp` pairs, for the
/// first `rows` rows and `cols` columns (`c` has row stride `ldc`).
///
/// # Safety
/// AVX512-BF16 must be available, `a` must be valid for reads of `kcp` pairs per row, and
/// `c` must be valid for writes of `rows` rows of `cols` values at stride `ldc`, with no
/// other thread accessing them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kcp: usize,
    a: RowPairs,
    b: &[u32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    debug_assert!(b.len() >= NR * kcp);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let pb = b.as_ptr();
    for p in 0..kcp {
        // SAFETY: pair `p` of both panels is in bounds (asserted above; `a` by the
        // caller's contract).
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(p * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(p * NR + 16).cast()));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                    *a.rows[r].add(p * a.pair_stride) as i32,
                ));
                acc_r[0] = _mm512_dpbf16_ps(acc_r[0], av, b0);
                acc_r[1] = _mm512_dpbf16_ps(acc_r[1], av, b1);
            }
        }
    }
    let mask_lo: __mmask16 = if cols >= 16 {
        0xffff
    } else {
        (1u16 << cols) - 1
    };
    let mask_hi: __mmask16 = if cols >= NR {
        0xffff
    } else if cols > 16 {
        (1u16 << (cols - 16)) - 1
    } else {
        0
    };
    for (r, acc_r) in acc.iter().enumerate().take(rows) {
        // SAFETY: the caller owns `rows` rows of `cols` values from `c` at stride `ldc`,
        // and the masks cover only the first `cols` values of each.
        unsafe {
            let ptr = c.add(r * ldc);
            let (mut v0, mut v1) = (acc_r[0], acc_r[1]);
            if accumulate {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mask_lo, ptr));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask_hi, ptr.add(16)));
            }
            _mm512_mask_storeu_ps(ptr, mask_lo, v0);
            _mm512_mask_storeu_ps(ptr.add(16), mask_hi, v1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact product of the bf16-rounded inputs, in f64.
    fn reference(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|t| {
                        f64::from(round_to_bf16(a.at(i, t))) * f64::from(round_to_bf16(b.at(t, j)))
                    })
                    .sum();
            }
        }
        c
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every layout the backward pass uses (row-major and transposed views of both
    /// operands), odd sizes that leave partial tiles, odd `k`, and `k` over three blocks.
    #[test]
    fn matches_the_exact_product_of_rounded_inputs() {
        if !available() {
            eprintln!("skipped: no AVX512-BF16 on this CPU");
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (8, 32, 2),
            (13, 45, 7),
            (37, 70, 300),
            (64, 96, 513),
            (5, 33, 256),
        ] {
            let a_data = values(m * k + 3, 1 + (m * n * k) as u64);
            let b_data = values(k * n + 5, 2 + (m + n + k) as u64);
            for a_t in [false, true] {
                for b_t in [false, true] {
                    let a = if a_t {
                        MatRef {
                            data: &a_data,
                            offset: 3,
                            row_stride: 1,
                            col_stride: m as isize,
                        }
                    } else {
                        MatRef {
                            data: &a_data,
                            offset: 3,
                            row_stride: k as isize,
                            col_stride: 1,
                        }
                    };
                    let b = if b_t {
                        MatRef {
                            data: &b_data,
                            offset: 5,
                            row_stride: 1,
                            col_stride: k as isize,
                        }
                    } else {
                        MatRef {
                            data: &b_data,
                            offset: 5,
                            row_stride: n as isize,
                            col_stride: 1,
                        }
                    };
                    let mut c = vec![f32::NAN; m * n];
                    gemm(m, n, k, a, b, &mut c);
                    let want = reference(m, n, k, a, b);
                    for (idx, (&got, &want)) in c.iter().zip(&want).enumerate() {
                        // f32 accumulation of k products of magnitude <= 1.
                        let tol = 1e-6 * k as f64 + 1e-6 * want.abs();
                        assert!(
                            (f64::from(got) - want).abs() <= tol,
                            "{m}x{n}x{k} a_t={a_t} b_t={b_t} [{idx}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 lies halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(round_to_bf16(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3·2^-8 is halfway too: the even neighbour is 1 + 2^-6.
        assert_eq!(round_to_bf16(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round_to_bf16(1.0 + 1.5 / 256.0), 1.0 + 1.0 / 128.0);
        assert!(round_to_bf16(f32::NAN).is_nan());
        assert_eq!(round_to_bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_to_bf16(-0.0).to_bits(), (-0.0f32).to_bits());
    }
}
