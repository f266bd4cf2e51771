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
    // Plain cross-entropy is the token loss with nothing added.
    TokenLoss::default().forward(logits, targets, ignore).loss
}

/// What `train.loss` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Cross-entropy, label-smoothed by `train.label_smoothing`.
    #[default]
    CrossEntropy,
    /// Focal loss (`train.focal_gamma`, `train.focal_alpha`).
    Focal,
}

impl LossKind {
    pub const EXPECTED: &'static str = "\"cross_entropy\" or \"focal\"";
}

/// The training loss over next-token logits, as the configuration sets it: per covered
/// target `y` with log-probabilities `log p` over the vocabulary `V`,
///
/// - cross-entropy with label smoothing `ε` (PyTorch's): `(1 − ε)(−log p_y) + ε · mean_c(−log p_c)`;
/// - or focal loss (Lin et al., over the softmax): `−α_y (1 − p_y)^γ log p_y` (`α_y = 1`
///   without a per-class `α`);
/// - plus PaLM's z-loss `coef · (log Z)²`, `log Z` the logits' log-sum-exp;
///
/// each averaged over the covered targets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenLoss {
    pub label_smoothing: f64,
    /// The z-loss coefficient (PaLM: `1e-4`); 0 leaves it out.
    pub z_loss: f64,
    pub focal: Option<Focal>,
}

/// Focal loss settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Focal {
    /// `γ ≥ 0`: how much confidently right targets are down-weighted (0: cross-entropy).
    pub gamma: f64,
    /// Per-class weights `α`, one per vocabulary entry; `None`: all 1.
    pub alpha: Option<Vec<f32>>,
}

/// A [`TokenLoss`] over a micro-batch.
pub struct TokenLossOutput<B: Backend> {
    /// What training differentiates, `[1]`.
    pub loss: Tensor<B, 1>,
    /// The smoothed cross-entropy or focal term alone, `[1]`.
    pub main: Tensor<B, 1>,
    /// The weighted z-loss term, `[1]`, when it is on.
    pub z: Option<Tensor<B, 1>>,
}

impl TokenLoss {
    /// - `logits`: `[batch, seq, vocab]`
    /// - `targets`: `[batch · seq]` host ids, `ignore` where the loss does not apply
    ///
    /// Means over the covered targets (zero, without a gradient path, when none is).
    pub fn forward<B: Backend>(
        &self,
        logits: Tensor<B, 3>,
        targets: &[i64],
        ignore: i64,
    ) -> TokenLossOutput<B> {
        let [batch, seq, vocab] = logits.dims();
        let device = logits.device();
        let kept: Vec<i64> = (0..targets.len() as i64)
            .filter(|&i| targets[i as usize] != ignore)
            .collect();
        let n = kept.len();
        if n == 0 {
            return TokenLossOutput {
                loss: Tensor::zeros([1], &device),
                main: Tensor::zeros([1], &device),
                z: (self.z_loss > 0.0).then(|| Tensor::zeros([1], &device)),
            };
        }
        let labels: Vec<i64> = kept.iter().map(|&i| targets[i as usize]).collect();
        let rows = logits.reshape([batch * seq, vocab]);
        // Only the covered rows go through the softmax: prompts and padding cost nothing.
        let picked = if n == batch * seq {
            rows
        } else {
            let index = Tensor::<B, 1, Int>::from_data(TensorData::new(kept, [n]), &device);
            rows.select(0, index)
        };
        let label_index =
            Tensor::<B, 2, Int>::from_data(TensorData::new(labels.clone(), [n, 1]), &device);
        let log_probs = burn::tensor::activation::log_softmax(picked.clone(), 1);
        // log p_y, [n]
        let target_log_prob = log_probs
            .clone()
            .gather(1, label_index.clone())
            .reshape([n]);
        let per_token = match &self.focal {
            Some(focal) => {
                // (1 − p_y)^γ, kept off 0 so that γ < 1 has a finite gradient at p_y = 1.
                let weight = target_log_prob
                    .clone()
                    .exp()
                    .neg()
                    .add_scalar(1.0)
                    .clamp_min(1e-12)
                    .powf_scalar(focal.gamma);
                let mut loss = weight.mul(target_log_prob.clone()).neg();
                if let Some(alpha) = &focal.alpha {
                    let alpha: Vec<f32> = labels.iter().map(|&y| alpha[y as usize]).collect();
                    loss = loss.mul(Tensor::from_data(TensorData::new(alpha, [n]), &device));
                }
                loss
            }
            None => {
                let nll = target_log_prob.clone().neg();
                if self.label_smoothing > 0.0 {
                    let uniform = log_probs.mean_dim(1).reshape([n]).neg();
                    nll.mul_scalar(1.0 - self.label_smoothing)
                        + uniform.mul_scalar(self.label_smoothing)
                } else {
                    nll
                }
            }
        };
        let main = per_token.sum().div_scalar(n as f64);
        let z = (self.z_loss > 0.0).then(|| {
            // log Z = logit_y − log p_y.
            let log_z = picked.gather(1, label_index).reshape([n]) - target_log_prob;
            log_z.square().sum().mul_scalar(self.z_loss / n as f64)
        });
        let loss = match &z {
            Some(z) => main.clone() + z.clone(),
            None => main.clone(),
        };
        TokenLossOutput { loss, main, z }
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

#[cfg(test)]
mod pytorch {
    //! Against `tests/fixtures/losses.json`: PyTorch's losses and their gradients with
    //! respect to the logits (`tools/fixtures/make_loss_fixtures.py`).

    use super::*;
    use burn::backend::{Autodiff, Flex};

    type B = Autodiff<Flex>;

    #[test]
    fn every_loss_and_its_gradient_match_pytorch() {
        let fixtures: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/losses.json")).unwrap();
        let rows: Vec<Vec<f64>> = serde_json::from_value(fixtures["logits"].clone()).unwrap();
        let targets: Vec<i64> = serde_json::from_value(fixtures["targets"].clone()).unwrap();
        let (n, vocab) = (rows.len(), rows[0].len());
        let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
        let cases = fixtures["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 8);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let loss = TokenLoss {
                label_smoothing: case["label_smoothing"].as_f64().unwrap(),
                z_loss: case["z_loss"].as_f64().unwrap(),
                focal: case["focal_gamma"].as_f64().map(|gamma| Focal {
                    gamma,
                    alpha: serde_json::from_value(case["focal_alpha"].clone()).unwrap(),
                }),
            };
            // Two rows of six positions: the loss sees `[batch, seq, vocab]`.
            let logits = Tensor::<B, 3>::from_data(
                TensorData::new(flat.clone(), [2, n / 2, vocab]),
                &Default::default(),
            )
            .require_grad();
            let out = loss.forward(logits.clone(), &targets, -100);
            let got = out.loss.clone().into_scalar() as f64;
            let want = case["loss"].as_f64().unwrap();
            assert!(
                (got - want).abs() < 2e-6 * want.abs(),
                "{name}: {got} vs PyTorch {want}"
            );
            let grads = out.loss.backward();
            let grad: Vec<f32> = logits.grad(&grads).unwrap().into_data().to_vec().unwrap();
            let want: Vec<Vec<f64>> = serde_json::from_value(case["grad"].clone()).unwrap();
            for (i, (g, w)) in grad.iter().zip(want.iter().flatten()).enumerate() {
                assert!(
                    (*g as f64 - w).abs() < 2e-6,
                    "{name}: d loss / d logit {i}: {g} vs PyTorch {w}"
                );
            }
        }
    }
}
