//! Scalar f32 functions written so that loops over slices auto-vectorise: no calls into
//! libm, no data-dependent branches. Accuracy: a few ulp for `exp`, under 5e-7 absolute for
//! `erf`,
//! which the tests check against f64 references.

const LOG2_E: f32 = std::f32::consts::LOG2_E;
// ln 2 split into a part exact in f32 and the remainder (Cody–Waite range reduction).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding and subtracting 1.5·2^23 rounds an f32 of magnitude < 2^22 to an integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `e^x` for f32. Inputs below -87.3 give ~1e-38 rather than 0; callers that need exact
/// zeros (masked softmax entries) handle those entries themselves.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2_E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor polynomial of e^r on |r| <= ln2/2 (truncation error < 2e-8 relative).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// The error function as a rational function of x² on [-4, 4] (the minimax fit used by
/// Eigen and XLA for f32; beyond ±4, erf is ±1 to f32 precision).
#[inline(always)]
#[allow(clippy::excessive_precision)] // the fit's coefficients as published
pub fn erf(x: f32) -> f32 {
    const A1: f32 = -1.609_603_3e-2;
    const A3: f32 = -2.954_599_8e-3;
    const A5: f32 = -7.349_906_3e-4;
    const A7: f32 = -5.692_506_4e-5;
    const A9: f32 = -2.101_024e-6;
    const A11: f32 = 2.770_681_4e-8;
    const A13: f32 = -2.726_142_3e-10;
    const B0: f32 = -1.426_474e-2;
    const B2: f32 = -7.373_329e-3;
    const B4: f32 = -1.682_827e-3;
    const B6: f32 = -2.133_740_6e-4;
    const B8: f32 = -1.456_607_2e-5;
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = x * (A1 + x2 * (A3 + x2 * (A5 + x2 * (A7 + x2 * (A9 + x2 * (A11 + x2 * A13))))));
    let q = B0 + x2 * (B2 + x2 * (B4 + x2 * (B6 + x2 * B8)));
    (p / q).clamp(-1.0, 1.0)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/sqrt(2π)
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// Exact (erf) GELU: `x · Φ(x)`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// d/dx GELU(x) = `Φ(x) + x·φ(x)`.
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
    let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
    cdf + x * pdf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_f64(x: f64) -> f64 {
        // Maclaurin series for |x| < 3, asymptotic complement beyond; both converge to
        // well below f32 precision in the ranges used.
        if x.abs() < 3.0 {
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let a = x.abs();
            let mut series = 1.0;
            let mut term = 1.0;
            for k in 1..8 {
                term *= -((2 * k - 1) as f64) / (2.0 * a * a);
                series += term;
            }
            let erfc = (-a * a).exp() / (a * std::f64::consts::PI.sqrt()) * series;
            (1.0 - erfc).copysign(x)
        }
    }

    #[test]
    fn exp_is_accurate_to_a_few_ulp() {
        let mut x = -80.0f32;
        while x < 80.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.0137;
        }
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn erf_matches_series_to_5e7() {
        let mut x = -6.0f32;
        while x < 6.0 {
            let want = erf_f64(x as f64);
            let got = erf(x) as f64;
            assert!((got - want).abs() < 5e-7, "erf({x}) = {got}, want {want}");
            x += 0.00371;
        }
    }

    #[test]
    fn gelu_grad_matches_finite_differences() {
        let mut x = -5.0f64;
        while x < 5.0 {
            let g = |x: f64| 0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2));
            let h = 1e-5;
            let want = (g(x + h) - g(x - h)) / (2.0 * h);
            let got = gelu_grad(x as f32) as f64;
            assert!((got - want).abs() < 1e-6, "gelu'({x}) = {got}, want {want}");
            assert!(
                (gelu(x as f32) as f64 - g(x)).abs() < 1e-6 * g(x).abs().max(1.0),
                "gelu({x}) = {}, want {}",
                gelu(x as f32),
                g(x)
            );
            x += 0.0173;
        }
    }
}
