//! Every [`Decoder`] against an uncached forward pass of the same model over each row's
//! whole sequence: two rows prefilled together, then stepped together, each row's logits
//! equal to that row's own reference (max |Δ| ≤ 1e-4).

use burn::backend::Flex;
use burn::module::Param;
use burn::tensor::{Int, Tensor, TensorData};
use ember_infer::{
    BurnDecoder, BurnPrefilledHost, Decoder, Generator, HostDecoder, HostWeights, Sampler,
    SamplingConfig, UncachedDecoder, argmax,
};
use ember_nn::Adapter;
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

/// Without a cache, every token is predicted from the last `max_seq_len` tokens, prompt
/// included (nanoGPT's crop): a prompt longer than the window is cropped, not halved.
#[test]
fn uncached_generation_crops_a_long_prompt_to_the_window() {
    let config = &configs()[0].1;
    let model = model(config);
    let window = config.max_seq_len;
    let mut tokens: Vec<u32> = (0..window as u32 + 5).map(|i| (i * 7 + 3) % 29).collect();
    let prompt = tokens.clone();
    let mut want = Vec::new();
    for _ in 0..4 {
        let next = argmax(&reference(&model, &tokens[tokens.len() - window..]));
        tokens.push(next);
        want.push(next);
    }
    let mut sampler = Sampler::new(SamplingConfig::greedy());
    let got = Generator::new(&model, &Default::default(), false)
        .generate(&prompt, 4, &mut sampler, |_| {})
        .unwrap();
    assert_eq!(got, want);
}

/// The host kernels read plain f32 weights only: a projection with an adapter, or with a
/// burn-quantized weight, is refused by name instead of decoded without it.
#[test]
fn the_host_decoder_refuses_adapters_and_quantized_weights() {
    use burn::tensor::quantization::{QuantLevel, QuantScheme, QuantValue};
    let config = &configs()[0].1;
    let mut adapted = model(config);
    adapted.layers[1].attn.v_proj.adapter = Some(Adapter {
        down: None,
        up: None,
        rank_scale: None,
        input_scale: None,
        output_scale: Some(Param::from_tensor(Tensor::ones([32], &Default::default()))),
        magnitude: None,
        scaling: 1.0,
        dropout: burn::nn::DropoutConfig::new(0.0).init(),
    });
    let err = HostDecoder::new(&adapted, HostWeights::F32).unwrap_err();
    assert!(
        err.contains("layers.1.attn.v_proj") && err.contains("adapter"),
        "{err}"
    );

    let mut quantized = model(config);
    let scheme = QuantScheme::default()
        .with_value(QuantValue::Q8S)
        .with_level(QuantLevel::block([32]));
    let up = &mut quantized.layers[0].mlp.as_mut().unwrap().up_proj;
    up.weight = Param::from_tensor(up.weight.val().quantize_dynamic(&scheme));
    let err = HostDecoder::new(&quantized, HostWeights::Int8).unwrap_err();
    assert!(
        err.contains("layers.0.mlp.up_proj.weight") && err.contains("quantized"),
        "{err}"
    );
}
