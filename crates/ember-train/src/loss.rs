//! Language-model losses; the trainer takes any [`LmLoss`].

use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

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

/// Mean token cross-entropy over the targets the loss covers (every one but
/// `ignore`), as `transformers` computes a causal-LM loss with labels of `-100`.
///
/// - `logits`: `[batch, seq, vocab]`
/// - `targets`: `[batch · seq]` host ids, `ignore` where the loss does not apply
/// - returns the mean over the covered targets, `[1]` (zero, without a gradient path,
///   when there are none)
pub fn masked_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    targets: &[i64],
    ignore: i64,
) -> Tensor<B, 1> {
    let [batch, seq, vocab] = logits.dims();
    let device = logits.device();
    let kept: Vec<i64> = (0..targets.len() as i64)
        .filter(|&i| targets[i as usize] != ignore)
        .collect();
    if kept.is_empty() {
        return Tensor::zeros([1], &device);
    }
    let n = kept.len();
    let labels: Vec<i64> = kept.iter().map(|&i| targets[i as usize]).collect();
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(kept, [n]), &device);
    let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(labels, [n, 1]), &device);
    // Only the covered rows go through the softmax: prompts and padding cost nothing.
    let picked = logits.reshape([batch * seq, vocab]).select(0, rows);
    let log_probs = burn::tensor::activation::log_softmax(picked, 1);
    log_probs
        .gather(1, labels)
        .reshape([n])
        .sum()
        .neg()
        .div_scalar(n as f64)
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

    #[test]
    fn masked_loss_is_the_mean_over_covered_targets_only() {
        let device = Default::default();
        let (batch, seq, vocab) = (2, 4, 6);
        let logits: Vec<f32> = (0..batch * seq * vocab)
            .map(|i| ((i * 53 % 17) as f32 - 8.0) * 0.3)
            .collect();
        let targets: Vec<i64> = vec![-100, 3, 5, -100, 0, -100, -100, 2];
        let got = masked_cross_entropy(
            Tensor::<Flex, 3>::from_data(
                TensorData::new(logits.clone(), [batch, seq, vocab]),
                &device,
            ),
            &targets,
            -100,
        )
        .into_scalar();
        // The reference: every covered row's NLL, averaged, with the ignored rows dropped.
        let (rows, kept): (Vec<usize>, Vec<usize>) = targets
            .iter()
            .enumerate()
            .filter(|(_, t)| **t >= 0)
            .map(|(i, &t)| (i, t as usize))
            .unzip();
        let picked: Vec<f32> = rows
            .iter()
            .flat_map(|&r| logits[r * vocab..(r + 1) * vocab].to_vec())
            .collect();
        let want = naive(&picked, &kept, vocab, 0.0);
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        let none = masked_cross_entropy(
            Tensor::<Flex, 3>::from_data(TensorData::new(logits, [batch, seq, vocab]), &device),
            &[-100; 8],
            -100,
        );
        assert_eq!(none.into_scalar(), 0.0);
    }
}
