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
