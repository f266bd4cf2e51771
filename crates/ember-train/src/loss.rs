//! Language-model losses; the trainer takes any [`LmLoss`].

use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// A loss over next-token logits.
pub trait LmLoss<B: Backend> {
    /// - `logits`: `[batch, seq, vocab]`
    /// - `targets`: `[batch, seq]`
    /// - returns the mean loss, `[1]`
    fn loss(&self, logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1>;
}

/// Mean token cross-entropy (burn's `CrossEntropyLoss`), optionally label-smoothed.
#[derive(Debug)]
pub struct CrossEntropy<B: Backend> {
    inner: CrossEntropyLoss<B>,
}

impl<B: Backend> CrossEntropy<B> {
    pub fn new(smoothing: Option<f32>, device: &B::Device) -> Self {
        Self {
            inner: CrossEntropyLossConfig::new()
                .with_smoothing(smoothing)
                .init(device),
        }
    }
}

impl<B: Backend> LmLoss<B> for CrossEntropy<B> {
    fn loss(&self, logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let [batch, seq, vocab] = logits.dims();
        self.inner.forward(
            logits.reshape([batch * seq, vocab]),
            targets.reshape([batch * seq]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    /// PyTorch's definition, written out: `(1 - ε) · NLL + ε · mean over classes of -log p`.
    fn naive(logits: &[f32], targets: &[usize], vocab: usize, eps: f64) -> f64 {
        let rows = targets.len();
        let mut total = 0.0;
        for (r, &t) in targets.iter().enumerate() {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let max = row.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            let nll = lse - row[t] as f64;
            let uniform = row.iter().map(|&x| lse - x as f64).sum::<f64>() / vocab as f64;
            total += (1.0 - eps) * nll + eps * uniform;
        }
        total / rows as f64
    }

    #[test]
    fn label_smoothing_matches_the_written_out_definition() {
        let device = Default::default();
        let (batch, seq, vocab) = (2, 3, 5);
        let logits: Vec<f32> = (0..batch * seq * vocab)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.4)
            .collect();
        let targets: Vec<usize> = vec![0, 4, 2, 1, 3, 4];
        for eps in [0.0, 0.1, 0.3] {
            let loss = CrossEntropy::<Flex>::new((eps > 0.0).then_some(eps as f32), &device);
            let got = loss
                .loss(
                    Tensor::from_data(
                        TensorData::new(logits.clone(), [batch, seq, vocab]),
                        &device,
                    ),
                    Tensor::from_data(
                        TensorData::new(
                            targets.iter().map(|&t| t as i64).collect::<Vec<_>>(),
                            [batch, seq],
                        ),
                        &device,
                    ),
                )
                .into_scalar();
            let want = naive(&logits, &targets, vocab, eps);
            assert!(
                (got as f64 - want).abs() < 1e-5,
                "ε = {eps}: {got} vs {want}"
            );
        }
    }
}
