//! Attention maps and perplexity on real (small, random) models: the maps the hook
//! collects against probabilities recomputed from the layer's own projections, every
//! attention kind; the conditional NLL against token-by-token forward passes.

use burn::backend::Flex;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_eval::attention::{AttentionSummary, attention_maps, rollout};
use ember_eval::perplexity::continuation_nll;
use ember_nn::{ForwardOptions, PositionKind, Transformer, TransformerConfig};

type B = Flex;

fn model(config: TransformerConfig) -> Transformer<B> {
    B::seed(&Default::default(), 7);
    Transformer::new(&config, &Default::default()).unwrap()
}

fn configs() -> Vec<(&'static str, TransformerConfig)> {
    let gpt2 = TransformerConfig::gpt2(50, 32, 2, 4, 32);
    let gqa = TransformerConfig::llama(50, 32, 2, 4, 2, 64, 32);
    let mqa = TransformerConfig::llama(50, 32, 2, 4, 1, 64, 32);
    let mut window = TransformerConfig::llama(50, 32, 2, 4, 2, 64, 32);
    window.sliding_window = Some(3);
    let mut alibi = TransformerConfig::gpt2(50, 32, 2, 4, 32);
    alibi.position = PositionKind::Alibi;
    vec![
        ("mha", gpt2),
        ("gqa", gqa),
        ("mqa", mqa),
        ("sliding-3", window),
        ("alibi", alibi),
    ]
}

#[test]
fn maps_are_causal_distributions_for_every_attention_kind() {
    let tokens: Vec<u32> = vec![3, 14, 15, 9, 2, 6, 5, 35, 8, 9];
    for (name, config) in configs() {
        let window = config.sliding_window;
        let m = model(config);
        let maps = attention_maps(&m, &tokens, None, &Default::default());
        assert_eq!(maps.len(), 2, "{name}");
        for layer in maps.values() {
            assert_eq!(
                (layer.heads, layer.queries, layer.keys),
                (4, 10, 10),
                "{name}"
            );
            for h in 0..4 {
                for i in 0..10 {
                    let row: f32 = (0..10).map(|j| layer.at(h, i, j)).sum();
                    assert!((row - 1.0).abs() < 1e-5, "{name}: row {i} sums to {row}");
                    for j in 0..10 {
                        let visible = j <= i && window.is_none_or(|w| i - j < w);
                        if !visible {
                            assert_eq!(layer.at(h, i, j), 0.0, "{name}: ({h},{i},{j}) is masked");
                        }
                    }
                }
            }
        }
        let labels: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
        let summary = AttentionSummary::new(&maps, &labels, true);
        assert_eq!(summary.layers.len(), 2);
        let r = summary.rollout.as_ref().expect("rollout over every layer");
        for row in r {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        }
        assert_eq!(rollout(&maps.values().collect::<Vec<_>>()).unwrap(), *r);
        // Flow into the last position: at most the 1 its row carries in, zero from tokens
        // a sliding window keeps out of reach, positive from the position itself.
        let flow = summary
            .flow_to_last
            .as_ref()
            .expect("flow over every layer");
        assert_eq!(flow.len(), 10);
        assert!(
            flow.iter().all(|&f| (0.0..=1.0 + 1e-9).contains(&f)),
            "{name}: {flow:?}"
        );
        assert!(flow[9] > 0.0);
        if window == Some(3) {
            // Two layers of a 3-token window reach 4 positions back, no further.
            assert!(flow[..5].iter().all(|&f| f == 0.0), "{name}: {flow:?}");
            assert!(flow[5..].iter().all(|&f| f > 0.0), "{name}: {flow:?}");
        } else {
            assert!(flow.iter().all(|&f| f > 0.0), "{name}: {flow:?}");
        }
    }
}

#[test]
fn first_layer_maps_equal_softmax_of_the_layers_own_queries_and_keys() {
    // GPT-2 shape: layer 0's queries and keys are the projections of the normed
    // embeddings; recompute them with burn ops and an explicit masked softmax.
    let config = TransformerConfig::gpt2(50, 32, 1, 4, 32);
    let m = model(config);
    let tokens: Vec<u32> = vec![1, 7, 7, 20, 3, 11];
    let maps = attention_maps(&m, &tokens, Some(vec![0]), &Default::default());
    let got = &maps[&0];
    let device = Default::default();
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(
            tokens.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(),
            [1, 6],
        ),
        &device,
    );
    let x = m.embed(ids, 0);
    let block = &m.layers[0];
    let normed = block.attn_norm.forward(x).reshape([6, 32]);
    let q = block
        .attn
        .q_proj
        .forward(normed.clone())
        .reshape([6, 4, 8])
        .swap_dims(0, 1);
    let k = block
        .attn
        .k_proj
        .forward(normed)
        .reshape([6, 4, 8])
        .swap_dims(0, 1);
    let scores = q.matmul(k.swap_dims(1, 2)).div_scalar(8f32.sqrt());
    let future: Vec<bool> = (0..6).flat_map(|i| (0..6).map(move |j| j > i)).collect();
    let future =
        Tensor::<B, 2, burn::tensor::Bool>::from_data(TensorData::new(future, [6, 6]), &device)
            .unsqueeze_dim::<3>(0)
            .expand([4, 6, 6]);
    let want = softmax(scores.mask_fill(future, f32::NEG_INFINITY), 2)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let diff = got
        .probs
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        diff < 1e-5,
        "maps differ from the explicit softmax by {diff}"
    );
}

#[test]
fn continuation_nll_equals_token_by_token_log_probabilities() {
    let m = model(TransformerConfig::llama(50, 32, 2, 4, 2, 64, 32));
    let (prompt, reference) = (vec![4u32, 9, 1], vec![17u32, 2, 30, 30]);
    let (nll, n) = continuation_nll(&m, &prompt, &reference, &Default::default()).unwrap();
    assert_eq!(n, 4);
    let mut want = 0.0f64;
    for k in 0..reference.len() {
        let context: Vec<i64> = prompt
            .iter()
            .chain(&reference[..k])
            .map(|&t| i64::from(t))
            .collect();
        let len = context.len();
        let logits = m.forward(
            Tensor::<B, 2, Int>::from_data(TensorData::new(context, [1, len]), &Default::default()),
            ForwardOptions::default(),
        );
        let last: Vec<f64> = logits
            .narrow(1, len - 1, 1)
            .into_data()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let max = last.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let log_z = max + last.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        want += log_z - last[reference[k] as usize];
    }
    assert!((nll - want).abs() < 1e-4, "{nll} vs {want}");
    assert!(continuation_nll(&m, &[], &reference, &Default::default()).is_err());
    let long = vec![1u32; 40];
    assert!(
        continuation_nll(&m, &prompt, &long, &Default::default())
            .unwrap_err()
            .contains("context")
    );
}
