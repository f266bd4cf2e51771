//! Weight-only quantization on real checkpoints: the perplexity of the fixtures' text
//! under the host decoder with int8 and 4-bit weights against the same model in f32,
//! each within a stated margin, for a GPT-2 and a Llama fixture.

use std::path::Path;

use burn::backend::Flex;
use ember_hf::HfModel;
use ember_infer::{HostDecoder, HostWeights, log_softmax};

fn perplexity(host: &HostDecoder, ids: &[u32]) -> f64 {
    let mut state = host.new_state();
    let mut nll = 0f64;
    let window = host.config().max_seq_len.min(ids.len());
    for (i, &t) in ids[..window - 1].iter().enumerate() {
        let logits = host.step(&mut state, t);
        nll -= log_softmax(logits)[ids[i + 1] as usize] as f64;
    }
    (nll / (window - 1) as f64).exp()
}

#[test]
fn int8_and_int4_perplexity_stay_within_their_margins_of_f32() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let text = std::fs::read_to_string(fixtures.join("text.txt")).unwrap();
    // Stated margins: relative perplexity increase over f32.
    let margins = [(HostWeights::Int8, 0.01), (HostWeights::Int4, 0.10)];
    for name in ["gpt2", "llama-gqa3"] {
        let hf = HfModel::open(&fixtures.join(name)).unwrap();
        let ids = hf.tokenizer.as_ref().unwrap().encode(&text).unwrap();
        let model = hf.load_model::<Flex>(&Default::default()).unwrap();
        let base = perplexity(&HostDecoder::new(&model, HostWeights::F32).unwrap(), &ids);
        for (weights, margin) in margins {
            let ppl = perplexity(&HostDecoder::new(&model, weights).unwrap(), &ids);
            let change = ppl / base - 1.0;
            println!(
                "{name} {weights:?}: perplexity {ppl:.3} vs f32 {base:.3} ({:+.2}%)",
                100.0 * change
            );
            assert!(
                change.abs() <= margin,
                "{name} {weights:?}: {ppl} vs {base}"
            );
        }
    }
}
