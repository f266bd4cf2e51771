//! Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

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
    pub seed: u64,
}

impl SamplingConfig {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
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
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        Some(probs)
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
