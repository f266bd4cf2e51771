//! Every [`Decoder`] against an uncached forward pass of the same model over each row's
//! whole sequence: two rows prefilled together, then stepped together, each row's logits
//! equal to that row's own reference (max |Δ| ≤ 1e-4).

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use ember_infer::{
    BurnDecoder, BurnPrefilledHost, Decoder, HostDecoder, HostWeights, UncachedDecoder,
};
use ember_nn::{ForwardOptions, MlpKind, PositionKind, Transformer, TransformerConfig};

type B = Flex;

fn configs() -> Vec<(&'static str, TransformerConfig)> {
    let mut llama = TransformerConfig::llama(29, 32, 2, 4, 2, 48, 16);
    llama.init_std = 0.2;
    let mut gpt2 = TransformerConfig::gpt2(29, 32, 2, 4, 16);
    gpt2.init_std = 0.2;
    gpt2.mlp = MlpKind::GeluTanh;
    let mut window = llama.clone();
    window.sliding_window = Some(3);
    window.position = PositionKind::Rope;
    vec![("llama", llama), ("gpt2", gpt2), ("sliding-window", window)]
}

fn model(config: &TransformerConfig) -> Transformer<B> {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 5);
    Transformer::new(config, &device).unwrap()
}

/// The last position's logits of `sequence` from one uncached pass.
fn reference(model: &Transformer<B>, sequence: &[u32]) -> Vec<f32> {
    let ids: Vec<i64> = sequence.iter().map(|&t| t as i64).collect();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids, [1, sequence.len()]),
        &Default::default(),
    );
    let logits = model.forward(input, ForwardOptions::default());
    let [_, seq, vocab] = logits.dims();
    let all = logits.into_data().to_vec::<f32>().unwrap();
    all[(seq - 1) * vocab..].to_vec()
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}");
    let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * scale,
            "{name}: logit {i}: {g} vs {w}"
        );
    }
}

/// Two rows through `decoder`: a 4-token prefill each, then 4 steps with different
/// tokens per row.
fn check<D: Decoder>(name: &str, decoder: &D, model: &Transformer<B>) {
    let mut rows: [Vec<u32>; 2] = [vec![1, 5, 9, 2], vec![7, 7, 3, 28]];
    let mut cache = decoder.new_cache();
    decoder.prefill(&mut cache, &[&rows[0], &rows[1]]);
    assert_eq!(decoder.rows(&cache), 2, "{name}");
    for step in 0..=4 {
        for (r, row) in rows.iter().enumerate() {
            assert_eq!(decoder.len(&cache, r), row.len(), "{name}");
            let want = reference(model, row);
            assert_close(
                &format!("{name} step {step} row {r}"),
                decoder.logits(&cache, r),
                &want,
            );
        }
        if step < 4 {
            let next = [(3 * step as u32 + 4) % 29, (11 * step as u32 + 1) % 29];
            rows[0].push(next[0]);
            rows[1].push(next[1]);
            decoder.step(&mut cache, &next);
        }
    }
    decoder.reset(&mut cache);
    assert_eq!(decoder.rows(&cache), 0, "{name}");
}

#[test]
fn every_decoder_matches_an_uncached_pass_row_by_row() {
    let device = Default::default();
    for (name, config) in configs() {
        let model = model(&config);
        let burn = || BurnDecoder::new(&model, &device);
        check(&format!("{name} burn"), &burn(), &model);
        check(
            &format!("{name} uncached"),
            &UncachedDecoder(burn()),
            &model,
        );
        let host = HostDecoder::new(&model, HostWeights::F32).unwrap();
        check(&format!("{name} host"), &host, &model);
        let hybrid = BurnPrefilledHost {
            burn: burn(),
            host: &host,
        };
        check(&format!("{name} burn-prefilled host"), &hybrid, &model);
    }
}
