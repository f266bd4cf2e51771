//! Perplexity of a token sequence with sliding windows (the evaluation `transformers`'
//! documentation describes for fixed-length models).
//!
//! Windows of `context` tokens start every `stride` tokens. Each token after the first is
//! scored exactly once, in the first window that reaches it, with the tokens before it in
//! that window as context: a smaller stride gives each token more context.

use burn::tensor::{Int, Tensor, TensorData};
use ember_nn::{ForwardOptions, FusedBackend, Transformer};

/// What [`perplexity`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// Tokens scored (all but the first).
    pub tokens: usize,
    /// Mean negative log-likelihood per scored token, in nats.
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub perplexity: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PerplexityError {
    #[error("need at least 2 tokens to score, got {0}")]
    TooShort(usize),
    #[error("stride must be between 1 and the context of {context} tokens, got {stride}")]
    BadStride { stride: usize, context: usize },
    #[error("token id {id} is outside the model's vocabulary of {vocab_size}")]
    TokenOutOfRange { id: u32, vocab_size: usize },
}

/// Perplexity of `ids` under `model`, with windows of `context` tokens (at most the
/// model's `max_seq_len`) advancing by `stride`. Log-probabilities are accumulated in f64.
pub fn perplexity<B: FusedBackend>(
    model: &Transformer<B>,
    ids: &[u32],
    context: usize,
    stride: usize,
    device: &B::Device,
) -> Result<Perplexity, PerplexityError> {
    let vocab = model.config().vocab_size;
    let context = context.min(model.config().max_seq_len);
    if ids.len() < 2 {
        return Err(PerplexityError::TooShort(ids.len()));
    }
    if stride == 0 || stride > context {
        return Err(PerplexityError::BadStride { stride, context });
    }
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(PerplexityError::TokenOutOfRange {
            id,
            vocab_size: vocab,
        });
    }
    let (mut nll, mut scored, mut prev_end) = (0.0f64, 0usize, 1usize);
    let mut begin = 0;
    while begin < ids.len() {
        let end = (begin + context).min(ids.len());
        let window: Vec<i64> = ids[begin..end].iter().map(|&t| i64::from(t)).collect();
        let input =
            Tensor::<B, 2, Int>::from_data(TensorData::new(window, [1, end - begin]), device);
        let logits: Vec<f32> = model
            .forward(input, ForwardOptions::default())
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 logits");
        for t in prev_end.max(begin + 1)..end {
            let row = &logits[(t - 1 - begin) * vocab..(t - begin) * vocab];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
            nll += max + sum.ln() - row[ids[t] as usize] as f64;
            scored += 1;
        }
        prev_end = end;
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    let mean_nll = nll / scored as f64;
    Ok(Perplexity {
        tokens: scored,
        mean_nll,
        perplexity: mean_nll.exp(),
    })
}
