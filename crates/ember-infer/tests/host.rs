//! The host decoder against the burn model it was built from: per-step logits over a
//! 20-token sequence, against burn's cached forward one token at a time, for every
//! supported shape (f32: max |Δ| / max |logit| ≤ 1e-4; int8, whose block quantisation
//! changes the numbers: ≤ 6e-2 on these std-0.2 random weights), identical greedy
//! generation (also past the context window), and clear refusals for what it does not
//! implement. With int8 weights on widths that are not multiples of the 32-column block
//! (d_model 48, d_ff 80), every projection and the LM head is int8 and the logits stay
//! close to the f32 decoder's; a weight int8 cannot represent is an error.

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use ember_infer::host::MatrixCounts;
use ember_infer::{
    ContiguousKvCache, Generator, HostDecoder, HostWeights, Sampler, SamplingConfig,
};
use ember_nn::{
    ForwardOptions, MlpKind, PositionKind, Transformer, TransformerConfig, param_values,
    replace_params,
};
use ember_ops::{RopeLayout, RopeScaling};

type B = Flex;

fn model(config: &TransformerConfig) -> Transformer<B> {
    static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = SEEDED.lock().unwrap();
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 99);
    let mut config = config.clone();
    config.init_std = 0.2;
    Transformer::new(&config, &device).unwrap()
}

fn configs() -> Vec<(&'static str, TransformerConfig)> {
    let llama = TransformerConfig::llama(61, 64, 2, 8, 2, 96, 32);
    let mut gpt2 = TransformerConfig::gpt2(61, 64, 2, 4, 32);
    gpt2.mlp = MlpKind::GeluTanh;
    let mut gpt2_erf_untied = TransformerConfig::gpt2(61, 64, 2, 4, 32);
    gpt2_erf_untied.tie_embeddings = false;
    let mut tied_mqa = TransformerConfig::llama(61, 64, 2, 4, 1, 96, 32);
    tied_mqa.tie_embeddings = true;
    let mut partial = llama.clone();
    partial.rope_layout = RopeLayout::Interleaved;
    partial.partial_rotary_factor = 0.5;
    partial.mlp = MlpKind::GeGlu;
    let mut llama3 = llama.clone();
    llama3.rope_scaling = Some(RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_seq: 8,
    });
    let mut dynamic = llama.clone();
    dynamic.rope_scaling = Some(RopeScaling::DynamicNtk {
        factor: 2.0,
        original_max_seq: 8,
    });
    let mut qwen = llama.clone();
    qwen.qkv_bias = Some(true);
    let mut nope = llama.clone();
    nope.position = PositionKind::None;
    // n_heads · head_dim ≠ d_model (Qwen 3; a model whose heads were pruned).
    let mut head_dim = llama.clone();
    head_dim.head_dim = Some(12);
    vec![
        ("llama-gqa", llama.clone()),
        ("gpt2-tanh", gpt2),
        ("gpt2-erf-untied", gpt2_erf_untied),
        ("llama-mqa-tied", tied_mqa),
        ("interleaved-partial-geglu", partial),
        ("llama3-scaling", llama3),
        ("dynamic-ntk", dynamic),
        (
            "mistral-window-5",
            TransformerConfig::mistral(61, 64, 2, 4, 2, 96, 32, 5),
        ),
        ("qkv-bias", qwen),
        ("nope", nope),
        ("explicit-head-dim", head_dim),
    ]
    .into_iter()
    .chain(odd_width_configs())
    .collect()
}

/// Widths that are not multiples of the int8 block (32 columns): d_model 48 (q/k/v/o,
/// gate/up and the LM head), d_ff 80 (SwiGLU's down projection); untied and tied.
fn odd_width_configs() -> Vec<(&'static str, TransformerConfig)> {
    vec![
        (
            "llama-d48-ff80",
            TransformerConfig::llama(61, 48, 2, 4, 2, 80, 32),
        ),
        ("gpt2-d48-tied", TransformerConfig::gpt2(61, 48, 2, 4, 32)),
    ]
}

const TOKENS: [u32; 20] = [
    3, 17, 59, 2, 2, 40, 11, 8, 33, 60, 0, 21, 5, 5, 47, 19, 26, 1, 38, 12,
];

/// The burn model's logits for `TOKENS` fed one at a time through its KV cache (the
/// frequencies of dynamic NTK then follow each step's length, as in the host decoder's
/// `step`).
fn burn_logits(model: &Transformer<B>) -> Vec<f32> {
    let mut cache = ContiguousKvCache::<B>::new(model.config().n_layers);
    let mut out = Vec::new();
    for &t in &TOKENS {
        let input = Tensor::<B, 2, Int>::from_data(
            TensorData::new(vec![i64::from(t)], [1, 1]),
            &Default::default(),
        );
        let options = ForwardOptions {
            cache: Some(&mut cache),
            ..Default::default()
        };
        let logits: Vec<f32> = model.forward(input, options).into_data().to_vec().unwrap();
        out.extend(logits);
    }
    out
}

#[test]
fn step_logits_match_the_burn_model() {
    for (name, config) in configs() {
        let model = model(&config);
        let want = burn_logits(&model);
        let vocab = config.vocab_size;
        let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (weights, tol) in [(HostWeights::F32, 1e-4), (HostWeights::Int8, 6e-2)] {
            let host = HostDecoder::new(&model, weights).unwrap();
            let mut state = host.new_state();
            let mut worst = 0f32;
            for (t, &token) in TOKENS.iter().enumerate() {
                let got = host.step(&mut state, token);
                let row = &want[t * vocab..(t + 1) * vocab];
                for (a, b) in got.iter().zip(row) {
                    worst = worst.max((a - b).abs() / max);
                }
            }
            // `prefill` runs the same steps; only dynamic NTK sizes its frequencies by the
            // whole block instead of each step's length.
            if !matches!(config.rope_scaling, Some(RopeScaling::DynamicNtk { .. })) {
                let stepped = {
                    let mut state = host.new_state();
                    let mut last = Vec::new();
                    for &t in &TOKENS {
                        last = host.step(&mut state, t).to_vec();
                    }
                    last
                };
                let mut state = host.new_state();
                assert_eq!(
                    host.prefill(&mut state, &TOKENS),
                    stepped.as_slice(),
                    "{name}"
                );
                assert_eq!(state.len(), TOKENS.len());
            }
            println!("{name} {weights:?}: max |Δlogit| / max |logit| = {worst:.2e}");
            assert!(worst <= tol, "{name} {weights:?}: {worst:.2e}");
        }
    }
}

#[test]
fn greedy_generation_matches_the_burn_path() {
    let device = Default::default();
    for (name, config) in configs() {
        let model = model(&config);
        // 50 new tokens after a 3-token prompt run past the 32-token window.
        let run = |host: bool| {
            let mut generator = Generator::new(&model, &device, true);
            if host {
                generator = generator.with_host_decoder(HostWeights::F32).unwrap();
                assert!(generator.uses_host_decoder());
            }
            generator
                .generate(
                    &[4, 9, 16],
                    50,
                    &mut Sampler::new(SamplingConfig::greedy()),
                    |_| {},
                )
                .unwrap()
        };
        assert_eq!(run(true), run(false), "{name}");
    }
}

#[test]
fn unsupported_models_are_named() {
    let mixtral = TransformerConfig::mixtral(61, 48, 1, 4, 2, 80, 32, 3, 2);
    let mut alibi = TransformerConfig::llama(61, 48, 1, 4, 2, 80, 32);
    alibi.position = PositionKind::Alibi;
    let mut qk = TransformerConfig::llama(61, 48, 1, 4, 2, 80, 32);
    qk.qk_norm = true;
    for (config, needle) in [
        (mixtral, "Mixture-of-Experts"),
        (alibi, "Alibi"),
        (qk, "QK-norm"),
    ] {
        let model = model(&config);
        let err = HostDecoder::new(&model, HostWeights::F32).unwrap_err();
        assert!(err.contains(needle), "{err}");
        let generator = Generator::new(&model, &Default::default(), true);
        assert!(generator.with_host_decoder(HostWeights::F32).is_err());
    }
}

#[test]
fn int8_quantises_every_matrix_of_odd_widths_and_stays_close_to_f32() {
    for (name, config) in odd_width_configs() {
        let model = model(&config);
        let f32_host = HostDecoder::new(&model, HostWeights::F32).unwrap();
        let int8_host = HostDecoder::new(&model, HostWeights::Int8).unwrap();
        // q, k, v, o, (gate,) up, down per layer, and the LM head.
        let gated = config.mlp == MlpKind::SwiGlu;
        let total = config.n_layers * (6 + usize::from(gated)) + 1;
        let widths: Vec<usize> = int8_host.matrices().iter().map(|(_, m)| m.cols()).collect();
        // Only GPT-2's down projection (4 · 48 = 192 inputs) fills whole blocks.
        assert!(
            widths.iter().all(|c| c % 32 != 0 || *c == 4 * 48),
            "{name}: {widths:?}"
        );
        let still_f32: Vec<String> = int8_host
            .matrices()
            .into_iter()
            .filter(|(_, m)| !m.is_int8())
            .map(|(n, _)| n)
            .collect();
        assert!(still_f32.is_empty(), "{name}: f32 matrices {still_f32:?}");
        assert_eq!(
            int8_host.matrix_counts(),
            MatrixCounts {
                int8: total,
                int4: 0,
                f32: 0
            },
            "{name}"
        );
        assert_eq!(
            f32_host.matrix_counts(),
            MatrixCounts {
                int8: 0,
                int4: 0,
                f32: total
            },
            "{name}"
        );
        // One byte and a share of a scale per weight against four.
        let (b8, b32) = (int8_host.weight_bytes(), f32_host.weight_bytes());
        assert!(b8 * 3 < b32, "{name}: {b8} vs {b32} bytes");

        let (mut s8, mut s32) = (int8_host.new_state(), f32_host.new_state());
        let (mut worst, mut max) = (0f32, 0f32);
        for &token in &TOKENS {
            let want = f32_host.step(&mut s32, token);
            let got = int8_host.step(&mut s8, token);
            max = want.iter().fold(max, |m, v| m.max(v.abs()));
            for (a, b) in got.iter().zip(want) {
                assert!(a.is_finite(), "{name}");
                worst = worst.max((a - b).abs());
            }
        }
        println!(
            "{name}: int8 vs f32 max |Δlogit| / max |logit| = {:.2e}",
            worst / max
        );
        assert!(worst / max <= 6e-2, "{name}: {:.2e}", worst / max);
    }
}

/// 4-bit weights: every matrix of odd widths quantised (the last group padded), under a
/// quarter of f32's bytes, and logits within 45% of f32's (relative norm) over a 20-step decode of these
/// chaotic std-0.2 random weights (int8 stays within 3%; `quantized_perplexity` in
/// ember-hf bounds both on fixture text).
#[test]
fn int4_quantises_every_matrix_of_odd_widths_and_stays_near_f32() {
    for (name, config) in odd_width_configs() {
        let model = model(&config);
        let f32_host = HostDecoder::new(&model, HostWeights::F32).unwrap();
        let int4_host = HostDecoder::new(&model, HostWeights::Int4).unwrap();
        let total = int4_host.matrices().len();
        assert_eq!(
            int4_host.matrix_counts(),
            MatrixCounts {
                int8: 0,
                int4: total,
                f32: 0
            },
            "{name}"
        );
        let (b4, b32) = (int4_host.weight_bytes(), f32_host.weight_bytes());
        // Half a byte and a share of a scale per weight, plus the padding of these odd
        // widths (48 columns take two 32-column groups).
        assert!(b4 * 4 < b32, "{name}: {b4} vs {b32} bytes");
        // Sixteen levels per group move single logits a lot on these random weights; the
        // bound is on the whole logit vectors: ‖Δ‖ / ‖f32‖ over the 20 steps.
        let (mut s4, mut s32) = (int4_host.new_state(), f32_host.new_state());
        let (mut diff, mut norm) = (0f64, 0f64);
        for &token in &TOKENS {
            let want = f32_host.step(&mut s32, token);
            let got = int4_host.step(&mut s4, token);
            for (a, b) in got.iter().zip(want) {
                assert!(a.is_finite(), "{name}");
                diff += ((a - b) as f64).powi(2);
                norm += (*b as f64).powi(2);
            }
        }
        let relative = (diff / norm).sqrt();
        println!("{name}: int4 vs f32 ‖Δlogits‖ / ‖logits‖ = {relative:.3}");
        assert!(relative <= 0.45, "{name}: {relative:.3}");
    }
}

#[test]
fn a_weight_int8_cannot_represent_is_an_error() {
    let (_, config) = odd_width_configs().swap_remove(0);
    let model = model(&config);
    let values: std::collections::HashMap<String, TensorData> =
        param_values(&model).into_iter().collect();
    let target = "layers.1.attn.k_proj.weight";
    let broken = replace_params(model, &mut |path: &str, _: &[usize]| {
        let data = values[path].clone();
        if path != target {
            return Ok(data);
        }
        let mut v: Vec<f32> = data.to_vec().unwrap();
        v[7] = f32::INFINITY;
        Ok(TensorData::new(v, data.shape.clone()))
    })
    .unwrap();
    assert!(HostDecoder::new(&broken, HostWeights::F32).is_ok());
    let err = HostDecoder::new(&broken, HostWeights::Int8).unwrap_err();
    assert!(err.contains(target) && err.contains("inf"), "{err}");
}

/// `HostDecoder::save` / `load` (what `ember quantize` writes): every stored form of
/// every supported shape reloads to bit-identical logits, and a damaged file is an error
/// naming it.
#[test]
fn saved_decoders_reload_to_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    for (name, config) in configs() {
        let model = model(&config);
        for weights in [HostWeights::F32, HostWeights::Int8, HostWeights::Int4] {
            let host = HostDecoder::new(&model, weights).unwrap();
            let path = dir.path().join(format!("{name}-{weights:?}.safetensors"));
            host.save(&path).unwrap();
            let loaded = HostDecoder::load(&path).unwrap();
            assert_eq!(loaded.weights(), weights);
            assert_eq!(loaded.config(), host.config());
            let (mut a, mut b) = (host.new_state(), loaded.new_state());
            for &token in &TOKENS[..8] {
                assert_eq!(
                    host.step(&mut a, token),
                    loaded.step(&mut b, token),
                    "{name} {weights:?}"
                );
            }
        }
    }
    let path = dir.path().join("broken.safetensors");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let err = HostDecoder::load(&path).unwrap_err();
    assert!(err.contains("broken.safetensors"), "{err}");
}
