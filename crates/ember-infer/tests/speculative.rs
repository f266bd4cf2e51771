//! Speculative decoding against the target model alone: greedy output identical to the
//! batch-1 host decoder's greedy loop (for several draft lengths, with an unrelated
//! draft model and with the target as its own draft), and sampled output following the
//! target's distribution: over 20,000 draws with two drafted tokens per pass, the
//! frequencies of the first two tokens (36 cells on a 6-token vocabulary) pass a
//! chi-square test against the probabilities computed from the target alone
//! (35 degrees of freedom; critical value 66.6 at p = 0.001; fixed seeds).

use burn::backend::Flex;
use ember_infer::{
    HostDecoder, HostWeights, Sampler, SamplingConfig, SpeculativeConfig, argmax,
    speculative_generate,
};
use ember_nn::{Transformer, TransformerConfig};

type B = Flex;

fn host(config: &TransformerConfig, seed: u64, std: f64) -> HostDecoder {
    // burn's seed is global: one model at a time, so each gets its seed's weights.
    static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = SEEDED.lock().unwrap();
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, seed);
    let mut config = config.clone();
    config.init_std = std;
    let model = Transformer::<B>::new(&config, &device).unwrap();
    HostDecoder::new(&model, HostWeights::F32).unwrap()
}

fn greedy_alone(target: &HostDecoder, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut state = target.new_state();
    let mut logits = target.prefill(&mut state, prompt).to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&logits);
        out.push(t);
        logits = target.step(&mut state, t).to_vec();
    }
    out
}

#[test]
fn greedy_speculative_output_is_the_targets_own() {
    let target_config = TransformerConfig::llama(61, 64, 2, 4, 2, 96, 64);
    let draft_config = TransformerConfig::llama(61, 32, 1, 2, 1, 48, 64);
    let target = host(&target_config, 3, 0.3);
    let unrelated = host(&draft_config, 4, 0.3);
    let itself = target.clone();
    let prompt = [5, 9, 14, 2, 33];
    let want = greedy_alone(&target, &prompt, 40);
    for (name, draft) in [("unrelated", &unrelated), ("itself", &itself)] {
        for k in [1, 3, 5] {
            let mut sampler = Sampler::new(SamplingConfig::greedy());
            let mut seen = Vec::new();
            let config = SpeculativeConfig {
                max_new_tokens: 40,
                num_speculative_tokens: k,
                stop_tokens: Vec::new(),
            };
            let (got, stats) =
                speculative_generate(&target, draft, &prompt, &config, &mut sampler, |t| {
                    seen.push(t)
                })
                .unwrap();
            assert_eq!(got, want, "{name} k={k}");
            assert_eq!(seen, want);
            if name == "itself" {
                // A draft identical to the target is always right.
                assert_eq!(stats.accepted, stats.drafted, "k={k}");
                assert!(stats.target_passes <= 40usize.div_ceil(k + 1) + 1);
            }
        }
    }
    // A stop token ends the output where the target alone would.
    let stop = want[7];
    let at = want.iter().position(|&t| t == stop).unwrap();
    let config = SpeculativeConfig {
        max_new_tokens: 40,
        num_speculative_tokens: 4,
        stop_tokens: vec![stop],
    };
    let mut sampler = Sampler::new(SamplingConfig::greedy());
    let (got, _) =
        speculative_generate(&target, &unrelated, &prompt, &config, &mut sampler, |_| {}).unwrap();
    assert_eq!(got, want[..=at]);
}

fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let total: f64 = e.iter().sum();
    e.iter().map(|v| v / total).collect()
}

#[test]
fn sampled_speculative_tokens_follow_the_targets_distribution() {
    let vocab = 6;
    let config = TransformerConfig::llama(vocab, 16, 1, 2, 1, 32, 16);
    let target = host(&config, 21, 0.6);
    let draft = host(&config, 22, 0.6);
    let prompt = [1u32, 4, 2];
    // Exact probabilities of the first two tokens under the target alone.
    let mut state = target.new_state();
    let first = softmax(target.prefill(&mut state, &prompt));
    let mut exact = vec![0f64; vocab * vocab];
    for a in 0..vocab {
        let mut s = state.clone();
        let second = softmax(target.step(&mut s, a as u32));
        for b in 0..vocab {
            exact[a * vocab + b] = first[a] * second[b];
        }
    }
    let draws = 20_000;
    let mut counts = vec![0usize; vocab * vocab];
    let mut drafted = 0;
    let mut accepted = 0;
    let spec = SpeculativeConfig {
        max_new_tokens: 3,
        num_speculative_tokens: 2,
        stop_tokens: Vec::new(),
    };
    // Three new tokens with two drafts per pass: the first pass drafts two tokens, so
    // both counted positions come from kept drafts, replacements from max(0, p - q) or
    // the target's extra token.
    for seed in 0..draws {
        let mut sampler = Sampler::new(SamplingConfig {
            temperature: 1.0,
            seed: seed as u64,
            ..SamplingConfig::greedy()
        });
        let (out, stats) =
            speculative_generate(&target, &draft, &prompt, &spec, &mut sampler, |_| {}).unwrap();
        counts[out[0] as usize * vocab + out[1] as usize] += 1;
        drafted += stats.drafted;
        accepted += stats.accepted;
    }
    let chi2: f64 = counts
        .iter()
        .zip(&exact)
        .map(|(&c, &p)| {
            let e = p * draws as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum();
    assert!(
        chi2 < 66.6,
        "chi-square {chi2:.1} over 35 degrees of freedom"
    );
    // The drafts were really used (and really refused at times).
    assert!(accepted > 0 && accepted < drafted, "{accepted}/{drafted}");
    // The draft's own distribution is far from the target's: sampling the draft would
    // fail the same test.
    let mut d_state = draft.new_state();
    let q_first = softmax(draft.prefill(&mut d_state, &prompt));
    let gap: f64 = q_first.iter().zip(&first).map(|(q, p)| (q - p).abs()).sum();
    assert!(
        gap > 0.2,
        "draft and target too alike to test anything: {gap}"
    );
}
