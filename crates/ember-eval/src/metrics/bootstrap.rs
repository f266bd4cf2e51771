//! Bootstrap confidence intervals of a mean, as rouge-score's `BootstrapAggregator`:
//! resample the examples with replacement, take each resample's mean, report the
//! 2.5th, 50th and 97.5th percentiles of those means (numpy's linear interpolation).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Low, middle and high percentiles of the resampled means.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub mid: f64,
    pub high: f64,
}

/// How to bootstrap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    /// Resamples (rouge-score: 1000).
    pub samples: usize,
    /// Width of the interval (0.95: the 2.5th to the 97.5th percentile).
    pub confidence: f64,
    pub seed: u64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self {
            samples: 1000,
            confidence: 0.95,
            seed: 0,
        }
    }
}

impl Bootstrap {
    /// The interval of the mean of `values` (`None` for no values, no resamples, or a
    /// confidence outside 0–1).
    pub fn interval(&self, values: &[f64]) -> Option<Interval> {
        if values.is_empty() || self.samples == 0 || !(0.0..=1.0).contains(&self.confidence) {
            return None;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let n = values.len();
        let mut means: Vec<f64> = (0..self.samples)
            .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
            .collect();
        means.sort_by(f64::total_cmp);
        let delta = (1.0 - self.confidence) / 2.0;
        Some(Interval {
            low: percentile(&means, 100.0 * delta),
            mid: percentile(&means, 50.0),
            high: percentile(&means, 100.0 * (1.0 - delta)),
        })
    }
}

/// numpy's `percentile(sorted, q)` with linear interpolation; `sorted` ascending, non-empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let position = q / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (position.floor() as usize, position.ceil() as usize);
    let frac = position - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], [25, 50, 90]) == [1.75, 2.5, 3.7]
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!((percentile(&v, 25.0) - 1.75).abs() < 1e-12);
        assert!((percentile(&v, 50.0) - 2.5).abs() < 1e-12);
        assert!((percentile(&v, 90.0) - 3.7).abs() < 1e-12);
    }

    #[test]
    fn interval_brackets_the_mean_and_narrows_with_data() {
        let values: Vec<f64> = (0..200).map(|i| (i % 10) as f64 / 10.0).collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let ci = Bootstrap::default().interval(&values).unwrap();
        assert!(ci.low < mean && mean < ci.high, "{ci:?} vs {mean}");
        assert!((ci.mid - mean).abs() < 0.02);
        // The standard error of the mean is σ/√n ≈ 0.0203: the 95% interval spans ≈ 4σ/√n.
        assert!((ci.high - ci.low - 4.0 * 0.2872 / 200f64.sqrt()).abs() < 0.02);
        let constant = Bootstrap::default().interval(&[0.5; 20]).unwrap();
        assert_eq!((constant.low, constant.high), (0.5, 0.5));
    }
}
