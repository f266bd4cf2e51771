//! Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus) and
//! min-p; log-probabilities for reporting.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick tokens. `temperature == 0` is greedy (argmax).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    pub temperature: f64,
    /// Keep only the `k` most likely tokens; `None` or 0 keeps all.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`;
    /// `None` or 1.0 keeps all.
    pub top_p: Option<f64>,
    /// Drop tokens less likely than `min_p` times the most likely one (vLLM's `min_p`);
    /// `None` or 0 keeps all.
    pub min_p: Option<f64>,
    pub seed: u64,
}

impl SamplingConfig {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            seed: 0,
        }
    }
}

/// A seeded sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self { config, rng }
    }

    /// The probabilities sampling draws from (after temperature, top-k and top-p), or
    /// `None` for greedy decoding.
    pub fn distribution(&self, logits: &[f32]) -> Option<Vec<f64>> {
        let c = &self.config;
        if c.temperature <= 0.0 {
            return None;
        }
        let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / c.temperature).collect();
        let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut probs: Vec<f64> = scaled.iter().map(|&l| (l - max).exp()).collect();
        // Most likely first, ties to the lower id: a total order, so sorting only the
        // leading `m` after a selection gives exactly the prefix a full sort would.
        let cmp = |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b));
        let mut order: Vec<usize> = (0..probs.len()).collect();
        let sort_prefix = |order: &mut Vec<usize>, m: usize| {
            if m < order.len() {
                order.select_nth_unstable_by(m, cmp);
            }
            let m = m.min(order.len());
            order[..m].sort_unstable_by(cmp);
        };
        let mut keep = probs.len();
        if let Some(k) = c.top_k.filter(|&k| k > 0) {
            keep = keep.min(k);
        }
        match c.top_p.filter(|&p| p < 1.0) {
            None => sort_prefix(&mut order, keep),
            Some(p) => {
                // Grow the sorted prefix until it holds the nucleus.
                let total: f64 = if keep < probs.len() {
                    sort_prefix(&mut order, keep);
                    order[..keep].iter().map(|&i| probs[i]).sum()
                } else {
                    probs.iter().sum()
                };
                let mut m = keep.min(64);
                loop {
                    sort_prefix(&mut order, m);
                    let mut cumulative = 0.0;
                    let mut n = 0;
                    for &i in &order[..m] {
                        cumulative += probs[i] / total;
                        n += 1;
                        if cumulative >= p {
                            break;
                        }
                    }
                    if cumulative >= p || m == keep {
                        keep = n;
                        break;
                    }
                    m = (m * 4).min(keep);
                }
            }
        }
        for &i in &order[keep..] {
            probs[i] = 0.0;
        }
        // The most likely token has weight exp(0) = 1 here, so min-p is an absolute cut.
        if let Some(min_p) = c.min_p.filter(|&m| m > 0.0) {
            for p in probs.iter_mut() {
                if *p < min_p {
                    *p = 0.0;
                }
            }
        }
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        Some(probs)
    }

    /// Whether this sampler decodes greedily.
    pub fn is_greedy(&self) -> bool {
        self.config.temperature <= 0.0
    }

    /// A uniform draw from `[0, 1)` of this sampler's stream.
    pub fn uniform(&mut self) -> f64 {
        self.rng.random()
    }

    /// A token drawn from `probs` (summing to 1; the most likely on a rounding sliver).
    pub fn sample_from(&mut self, probs: &[f64]) -> u32 {
        let mut u = self.uniform();
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return i as u32;
            }
            u -= p;
        }
        let mut best = 0;
        for (i, p) in probs.iter().enumerate() {
            if *p > probs[best] {
                best = i;
            }
        }
        best as u32
    }

    /// The next token id.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.distribution(logits) {
            None => argmax(logits),
            Some(probs) => {
                let mut u: f64 = self.rng.random();
                for (i, p) in probs.iter().enumerate() {
                    if u < *p {
                        return i as u32;
                    }
                    u -= p;
                }
                // Rounding left a sliver: take the most likely token.
                argmax(logits)
            }
        }
    }
}

/// `log softmax(logits)` `[vocab]`, computed in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
    let total: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_total = max + total.ln();
    logits
        .iter()
        .map(|&l| (l as f64 - log_total) as f32)
        .collect()
}

/// The `k` largest entries of `logprobs` as `(token, logprob)`, most likely first (ties
/// to the lower id).
pub fn top_logprobs(logprobs: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut order: Vec<usize> = (0..logprobs.len()).collect();
    let cmp = |a: &usize, b: &usize| logprobs[*b].total_cmp(&logprobs[*a]).then(a.cmp(b));
    let k = k.min(order.len());
    if k < order.len() && k > 0 {
        order.select_nth_unstable_by(k, cmp);
    }
    order.truncate(k);
    order.sort_unstable_by(cmp);
    order.into_iter().map(|i| (i as u32, logprobs[i])).collect()
}

/// Index of the largest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_p_drops_tokens_below_its_share_of_the_most_likely() {
        // Probabilities ∝ 8, 4, 2, 1 at temperature 1.
        let logits: Vec<f32> = [8f64, 4.0, 2.0, 1.0]
            .iter()
            .map(|p| p.ln() as f32)
            .collect();
        let sampler = Sampler::new(SamplingConfig {
            temperature: 1.0,
            min_p: Some(0.3),
            ..SamplingConfig::greedy()
        });
        let probs = sampler.distribution(&logits).unwrap();
        // 2/8 = 0.25 < 0.3: dropped; 4/8 kept.
        let want = [8.0 / 12.0, 4.0 / 12.0, 0.0, 0.0];
        for (p, w) in probs.iter().zip(want) {
            assert!((p - w).abs() < 1e-9, "{probs:?}");
        }
    }

    #[test]
    fn log_softmax_and_top_logprobs_match_direct_sums() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let total: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let got = log_softmax(&logits);
        for (g, l) in got.iter().zip(logits) {
            assert!((*g as f64 - ((l as f64).exp() / total).ln()).abs() < 1e-6);
        }
        let top = top_logprobs(&got, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 0]);
        assert_eq!(top_logprobs(&got, 9).len(), 5);
    }
}
