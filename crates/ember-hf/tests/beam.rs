//! Beam search against `transformers`' `generate(num_beams=N)` on a committed tiny Llama
//! (`fixtures/beam`, written by `make_beam_fixture.py`): eleven cases over beam counts,
//! length penalties (positive, zero, negative), every `early_stopping` rule, returned
//! sequence counts, and end-of-sequence tokens that finish beams early. The returned
//! tokens must be identical and the scores (`sequences_scores`) equal to 1e-4.

use std::path::Path;

use burn::backend::Flex;
use ember_hf::HfModel;
use ember_infer::{BeamSearchConfig, EarlyStopping, HostDecoder, HostWeights, beam_search};
use serde_json::Value;

#[test]
fn beam_search_returns_what_transformers_returns() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/beam");
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("beam_cases.json")).unwrap())
            .unwrap();
    let model = HfModel::open(&dir.join("model"))
        .unwrap()
        .load_model::<Flex>(&Default::default())
        .unwrap();
    let host = HostDecoder::new(&model, HostWeights::F32).unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let early_stopping = match &case["early_stopping"] {
            Value::Bool(true) => EarlyStopping::True,
            Value::Bool(false) => EarlyStopping::False,
            Value::String(s) if s == "never" => EarlyStopping::Never,
            other => panic!("{name}: early_stopping {other}"),
        };
        let config = BeamSearchConfig {
            num_beams: case["num_beams"].as_u64().unwrap() as usize,
            length_penalty: case["length_penalty"].as_f64().unwrap(),
            early_stopping,
            max_new_tokens: case["max_new_tokens"].as_u64().unwrap() as usize,
            eos_token_ids: vec![case["eos_token_id"].as_u64().unwrap() as u32],
            num_return_sequences: case["num_return_sequences"].as_u64().unwrap() as usize,
        };
        let got = beam_search(&host, &ids(&case["prompt"]), &config).unwrap();
        let expected = &case["expected"];
        let want: Vec<Vec<u32>> = expected["new_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect();
        let tokens: Vec<Vec<u32>> = got.iter().map(|h| h.tokens.clone()).collect();
        assert_eq!(tokens, want, "{name}");
        for (h, (score, finished)) in got.iter().zip(
            expected["sequences_scores"]
                .as_array()
                .unwrap()
                .iter()
                .zip(expected["finished_with_eos"].as_array().unwrap()),
        ) {
            let score = score.as_f64().unwrap();
            assert!(
                (h.score - score).abs() <= 1e-4 * score.abs().max(1.0),
                "{name}: score {} vs {score}",
                h.score
            );
            assert_eq!(h.finished, finished.as_bool().unwrap(), "{name}");
        }
    }
}
