use burn::backend::Flex;
use ember_infer::sampling::argmax;
use ember_infer::{Generator, Sampler, SamplingConfig};
use ember_nn::{Transformer, TransformerConfig};

type B = Flex;

/// Two models with the same seeded weights in every run (tests run in parallel threads and
/// the backend's random generator is global, so creation is serialised).
fn models() -> Vec<Transformer<B>> {
    static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = SEEDED.lock().unwrap();
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 1234);
    let mut gpt = TransformerConfig::gpt2(30, 32, 2, 4, 24);
    gpt.init_std = 0.3;
    let mut llama = TransformerConfig::llama(30, 32, 2, 4, 2, 48, 24);
    llama.init_std = 0.3;
    vec![
        Transformer::new(&gpt, &device).unwrap(),
        Transformer::new(&llama, &device).unwrap(),
    ]
}

#[test]
fn cached_and_uncached_greedy_decoding_agree() {
    let device = Default::default();
    for model in models() {
        let prompt = [1, 5, 9, 2];
        // 20 new tokens stay inside the 24-token window.
        let run = |cache: bool| {
            let mut sampler = Sampler::new(SamplingConfig::greedy());
            Generator::new(&model, &device, cache)
                .generate(&prompt, 20, &mut sampler, |_| {})
                .unwrap()
        };
        let cached = run(true);
        let uncached = run(false);
        assert_eq!(cached, uncached);
        assert_eq!(cached.len(), 20);
        // Random weights at this scale do not collapse to one repeated token.
        assert!(cached.iter().any(|&t| t != cached[0]), "{cached:?}");
    }
}

#[test]
fn generation_continues_past_the_context_window() {
    let device = Default::default();
    let model = &models()[1];
    let mut sampler = Sampler::new(SamplingConfig::greedy());
    let mut streamed = Vec::new();
    let out = Generator::new(model, &device, true)
        .generate(&[3, 4], 60, &mut sampler, |t| streamed.push(t))
        .unwrap();
    assert_eq!(out.len(), 60);
    assert_eq!(streamed, out);
    let err = Generator::new(model, &device, true).generate(&[], 3, &mut sampler, |_| {});
    assert!(err.is_err());
    let err = Generator::new(model, &device, true).generate(&[31], 3, &mut sampler, |_| {});
    assert_eq!(
        err.unwrap_err().to_string(),
        "token id 31 is outside the model's vocabulary of 30"
    );
}

#[test]
fn sampling_filters_and_seeds() {
    let logits = [2.0f32, 1.0, 0.5, 3.0, -1.0];
    assert_eq!(argmax(&logits), 3);
    let config = |temperature, top_k, top_p| SamplingConfig {
        temperature,
        top_k,
        top_p,
        min_p: None,
        seed: 42,
    };
    // Temperature 1, no filtering: softmax computed independently here.
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64).exp()).collect();
    let total: f64 = exp.iter().sum();
    let probs = Sampler::new(config(1.0, None, None))
        .distribution(&logits)
        .unwrap();
    for (p, e) in probs.iter().zip(&exp) {
        assert!((p - e / total).abs() < 1e-12);
    }
    // top-k = 2 keeps tokens 3 and 0.
    let probs = Sampler::new(config(1.0, Some(2), None))
        .distribution(&logits)
        .unwrap();
    let z = exp[3] + exp[0];
    assert!((probs[3] - exp[3] / z).abs() < 1e-12 && (probs[0] - exp[0] / z).abs() < 1e-12);
    assert_eq!(probs.iter().filter(|&&p| p > 0.0).count(), 2);
    // top-p = 0.6: token 3 alone has 0.61 of the mass.
    let probs = Sampler::new(config(1.0, None, Some(0.6)))
        .distribution(&logits)
        .unwrap();
    assert_eq!(probs, vec![0.0, 0.0, 0.0, 1.0, 0.0]);
    // Temperature 0 is greedy; seeds make sampling reproducible.
    assert!(
        Sampler::new(config(0.0, None, None))
            .distribution(&logits)
            .is_none()
    );
    let draw = |seed| {
        let mut s = Sampler::new(SamplingConfig {
            seed,
            ..config(1.0, None, None)
        });
        (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
    };
    assert_eq!(draw(1), draw(1));
    assert_ne!(draw(1), draw(2));
    // Frequencies follow the distribution.
    let mut s = Sampler::new(config(1.0, None, None));
    let n = 20_000;
    let hits = (0..n).filter(|_| s.sample(&logits) == 3).count() as f64 / n as f64;
    assert!((hits - exp[3] / total).abs() < 0.02, "{hits}");
}

/// The filtered distribution over a large vocabulary equals one computed naively with a
/// full sort (the sampler sorts only the prefix it needs).
#[test]
fn filtered_distributions_match_a_full_sort() {
    let logits: Vec<f32> = (0..5000u64)
        .map(|i| ((i.wrapping_mul(2654435761) % 10007) as f32 / 1000.0).sin() * 6.0)
        .collect();
    for (temperature, top_k, top_p) in [
        (1.0, Some(50), None),
        (0.7, None, Some(0.9)),
        (1.3, Some(400), Some(0.5)),
        (0.5, None, Some(0.999)),
        (2.0, Some(4999), Some(0.3)),
    ] {
        let config = SamplingConfig {
            temperature,
            top_k,
            top_p,
            min_p: None,
            seed: 0,
        };
        let got = Sampler::new(config).distribution(&logits).unwrap();
        // Naive: softmax, full stable sort by probability (ties to the lower id).
        let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / temperature).collect();
        let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let probs: Vec<f64> = scaled.iter().map(|l| (l - max).exp()).collect();
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let mut keep = top_k.unwrap_or(probs.len()).min(probs.len());
        if let Some(p) = top_p {
            let total: f64 = order[..keep].iter().map(|&i| probs[i]).sum();
            let mut cumulative = 0.0;
            keep = order[..keep]
                .iter()
                .position(|&i| {
                    cumulative += probs[i] / total;
                    cumulative >= p
                })
                .map_or(keep, |n| n + 1);
        }
        let kept: f64 = order[..keep].iter().map(|&i| probs[i]).sum();
        let mut want = vec![0.0; probs.len()];
        for &i in &order[..keep] {
            want[i] = probs[i] / kept;
        }
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{temperature} {top_k:?} {top_p:?}");
        }
        assert_eq!(
            got.iter().filter(|&&p| p > 0.0).count(),
            keep,
            "{temperature} {top_k:?} {top_p:?}"
        );
    }
}

/// `--max-new-tokens` is a user's number: nothing may be reserved in proportion to it
/// (a `Vec::with_capacity(usize::MAX)` aborts the process). Every id is a stop token here,
/// so each run ends after one token, whatever the limit.
#[test]
fn an_absurd_token_limit_reserves_nothing() {
    let device = Default::default();
    let all: Vec<u32> = (0..30).collect();
    for model in models() {
        for cache in [true, false] {
            let mut sampler = Sampler::new(SamplingConfig::greedy());
            let out = Generator::new(&model, &device, cache)
                .with_stop_tokens(&all)
                .generate(&[1, 2], usize::MAX, &mut sampler, |_| {})
                .unwrap();
            assert_eq!(out.len(), 1);
        }
    }
}
