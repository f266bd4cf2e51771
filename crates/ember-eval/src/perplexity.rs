//! Perplexity of references given their prompts (`ember eval --metrics perplexity`): the
//! negative log-likelihood of the continuation's tokens, each conditioned on the prompt
//! and the continuation before it, in one forward pass.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use ember_nn::{ForwardOptions, FusedBackend, Transformer};

/// `(Σ −log p(continuation[k] | prompt, continuation[..k]), continuation.len())`, in nats.
/// `prompt` must hold at least one token, and the model reads `prompt` and all of
/// `continuation` but its last token, which must fit its context.
pub fn continuation_nll<B: FusedBackend>(
    model: &Transformer<B>,
    prompt: &[u32],
    continuation: &[u32],
    device: &B::Device,
) -> Result<(f64, usize), String> {
    let max = model.config().max_seq_len;
    let total = prompt.len() + continuation.len();
    if prompt.is_empty() {
        return Err(
            "the prompt is empty: the first reference token has nothing to condition on".into(),
        );
    }
    if total > max + 1 {
        return Err(format!(
            "prompt and reference are {total} tokens, more than the model's context of {max}"
        ));
    }
    if continuation.is_empty() {
        return Ok((0.0, 0));
    }
    // Position t predicts token t + 1: the last prompt position predicts the first
    // reference token, and the last reference token's logits are not needed.
    let input: Vec<i64> = prompt
        .iter()
        .chain(&continuation[..continuation.len() - 1])
        .map(|&t| i64::from(t))
        .collect();
    let len = input.len();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, len]), device);
    let logits = model.forward(tokens, ForwardOptions::default());
    let vocab = logits.dims()[2];
    let from = prompt.len() - 1;
    let scored = logits
        .narrow(1, from, continuation.len())
        .reshape([continuation.len(), vocab]);
    let targets: Vec<i64> = continuation.iter().map(|&t| i64::from(t)).collect();
    let targets =
        Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [continuation.len(), 1]), device);
    let scored = ember_ops::fused::autocast::to_f32(scored);
    let picked = log_softmax(scored, 1).gather(1, targets);
    let values = picked
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .map_err(|e| format!("reading log-probabilities: {e:?}"))?;
    Ok((-values.iter().sum::<f64>(), continuation.len()))
}
