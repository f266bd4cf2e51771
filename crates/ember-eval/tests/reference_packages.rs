//! BLEU, chrF, ROUGE and the Porter stemmer against the scores sacrebleu 2.6.0,
//! rouge-score 0.1.2 and NLTK 3.10.4 printed for the committed corpus
//! (`tests/fixtures/*.json`, written by `tools/fixtures/make_eval_fixtures.py`).

use std::collections::HashMap;

use ember_eval::metrics::bleu_tokenizer::BleuTokenizer;
use ember_eval::metrics::porter::stem;
use ember_eval::metrics::rouge_tokenizer::rouge_tokens;
use ember_eval::metrics::{
    Bleu, BleuConfig, Bootstrap, ChrfConfig, RougeScorer, RougeType, corpus_chrf, sentence_chrf,
};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

struct Corpus {
    hypotheses: Vec<String>,
    references: Vec<Vec<String>>,
}

fn corpus(key: &str) -> Corpus {
    let c = fixture("eval_corpus.json");
    let examples = c[key].as_array().unwrap();
    Corpus {
        hypotheses: examples
            .iter()
            .map(|e| e["hypothesis"].as_str().unwrap().to_string())
            .collect(),
        references: examples
            .iter()
            .map(|e| {
                e["references"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect()
            })
            .collect(),
    }
}

/// The corpus a fixture's `refs` names: the first reference of each example, each
/// example's own references, or the three-reference corpus.
fn streams(refs: &str) -> Corpus {
    match refs {
        "single" => {
            let c = corpus("examples");
            Corpus {
                hypotheses: c.hypotheses,
                references: c
                    .references
                    .into_iter()
                    .map(|r| vec![r[0].clone()])
                    .collect(),
            }
        }
        "variable" => corpus("examples"),
        "multi3" => corpus("multi3"),
        other => panic!("unknown refs {other}"),
    }
}

/// The `nrefs` field of a fixture's sacrebleu signature (`1`, `3` or `var`).
fn nrefs_of(case: &Value) -> String {
    let signature = case["signature"].as_str().unwrap();
    signature
        .split('|')
        .next()
        .unwrap()
        .trim_start_matches("nrefs:")
        .to_string()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0)
}

fn check_bleu(got: &ember_eval::metrics::BleuScore, want: &Value, what: &str) {
    assert!(
        close(got.score, want["score"].as_f64().unwrap(), 1e-12),
        "{what}: BLEU {} vs {}",
        got.score,
        want["score"]
    );
    assert_eq!(got.counts, f64s(&want["counts"]), "{what}: counts");
    assert_eq!(got.totals, f64s(&want["totals"]), "{what}: totals");
    for (g, w) in got.precisions.iter().zip(f64s(&want["precisions"])) {
        assert!(close(*g, w, 1e-12), "{what}: precision {g} vs {w}");
    }
    assert!(
        close(got.bp, want["bp"].as_f64().unwrap(), 1e-12),
        "{what}: bp"
    );
    assert_eq!(
        got.sys_len as u64,
        want["sys_len"].as_u64().unwrap(),
        "{what}: sys_len"
    );
    assert_eq!(
        got.ref_len as u64,
        want["ref_len"].as_u64().unwrap(),
        "{what}: ref_len"
    );
}

#[test]
fn bleu_tokenizers_match_sacrebleu() {
    let f = fixture("bleu.json");
    let tokenizers = [
        ("13a", BleuTokenizer::Mteval13a),
        ("none", BleuTokenizer::None),
        ("intl", BleuTokenizer::Intl),
        ("char", BleuTokenizer::Char),
    ];
    let cases = f["tokenized"].as_array().unwrap();
    assert!(cases.len() > 100);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        for (name, t) in tokenizers {
            assert_eq!(
                t.tokenize(text),
                case[name].as_str().unwrap(),
                "{name} on {text:?}"
            );
        }
    }
}

#[test]
fn corpus_bleu_matches_sacrebleu_for_every_tokenizer_and_reference_set() {
    let f = fixture("bleu.json");
    for case in f["corpus"].as_array().unwrap() {
        let refs = case["refs"].as_str().unwrap();
        let tokenize = case["tokenize"].as_str().unwrap();
        let lowercase = case["lowercase"].as_bool().unwrap();
        let c = streams(refs);
        let mut bleu = Bleu::new(BleuConfig {
            tokenizer: tokenize.parse().unwrap(),
            lowercase,
            ..BleuConfig::default()
        });
        let got = bleu.corpus_score(&c.hypotheses, &c.references).unwrap();
        let what = format!("{refs}/{tokenize}/lowercase={lowercase}");
        check_bleu(&got, case, &what);
        assert_eq!(
            bleu.signature(),
            case["signature"].as_str().unwrap(),
            "{what}"
        );
    }
}

#[test]
fn sentence_bleu_matches_sacrebleu() {
    let f = fixture("bleu.json");
    for (key, corpus_key) in [("sentence", "examples"), ("sentence_multi3", "multi3")] {
        let c = corpus(corpus_key);
        let cases = f[key].as_array().unwrap();
        assert_eq!(cases.len(), c.hypotheses.len());
        for (i, want) in cases.iter().enumerate() {
            let mut bleu = Bleu::new(BleuConfig::sentence());
            let got = bleu
                .sentence_score(&c.hypotheses[i], &c.references[i])
                .unwrap();
            check_bleu(&got, want, &format!("{key}[{i}] {:?}", c.hypotheses[i]));
            assert_eq!(bleu.signature(), want["signature"].as_str().unwrap());
        }
    }
}

#[test]
fn chrf_matches_sacrebleu() {
    let f = fixture("chrf.json");
    for case in f["corpus"].as_array().unwrap() {
        let refs = case["refs"].as_str().unwrap();
        let word_order = case["word_order"].as_u64().unwrap() as usize;
        let c = streams(refs);
        let config = ChrfConfig {
            word_order,
            ..ChrfConfig::default()
        };
        let got = corpus_chrf(&config, &c.hypotheses, &c.references).unwrap();
        let want = case["score"].as_f64().unwrap();
        assert!(
            close(got.score, want, 1e-12),
            "{refs}/nw={word_order}: {} vs {want}",
            got.score
        );
        let nrefs = nrefs_of(case);
        assert_eq!(
            config.signature(&nrefs),
            case["signature"].as_str().unwrap()
        );
    }
    for (key, corpus_key) in [("sentence", "examples"), ("sentence_multi3", "multi3")] {
        let c = corpus(corpus_key);
        for (i, want) in f[key].as_array().unwrap().iter().enumerate() {
            for (name, config) in [
                ("chrf", ChrfConfig::default()),
                ("chrf_pp", ChrfConfig::plus_plus()),
            ] {
                let got = sentence_chrf(&config, &c.hypotheses[i], &c.references[i]).unwrap();
                let w = want[name]["score"].as_f64().unwrap();
                assert!(
                    close(got.score, w, 1e-12),
                    "{key}[{i}] {name}: {} vs {w} for {:?}",
                    got.score,
                    c.hypotheses[i]
                );
            }
        }
    }
}

#[test]
fn porter_stems_and_rouge_tokens_match_nltk_and_rouge_score() {
    let f = fixture("porter.json");
    let stems = f["stems"].as_object().unwrap();
    assert!(stems.len() > 4000);
    for (word, want) in stems {
        assert_eq!(stem(word), want.as_str().unwrap(), "stem({word:?})");
    }
    for case in f["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            rouge_tokens(text, false),
            strings(&case["tokens"]),
            "{text:?}"
        );
        assert_eq!(
            rouge_tokens(text, true),
            strings(&case["stemmed"]),
            "{text:?} stemmed"
        );
    }
}

const TYPES: [RougeType; 4] = [
    RougeType::N(1),
    RougeType::N(2),
    RougeType::L,
    RougeType::Lsum,
];

#[test]
fn rouge_matches_rouge_score_with_and_without_the_stemmer() {
    let f = fixture("rouge.json");
    let c = corpus("examples");
    for config in f["configs"].as_array().unwrap() {
        let stemmer = config["use_stemmer"].as_bool().unwrap();
        let scorer = RougeScorer::new(&TYPES, stemmer);
        let mut sums: HashMap<(RougeType, &str), f64> = HashMap::new();
        for (i, want) in config["examples"].as_array().unwrap().iter().enumerate() {
            let multi = scorer.score_multi(&c.references[i], &c.hypotheses[i]);
            let first = scorer.score(&c.references[i][0], &c.hypotheses[i]);
            for kind in TYPES {
                let name = kind.to_string();
                for (got, key) in [(multi[&kind], "multi"), (first[&kind], "first")] {
                    for (field, value) in [
                        ("precision", got.precision),
                        ("recall", got.recall),
                        ("fmeasure", got.fmeasure),
                    ] {
                        let w = want[key][&name][field].as_f64().unwrap();
                        assert!(
                            close(value, w, 1e-12),
                            "stemmer={stemmer} example {i} {key} {name} {field}: {value} vs {w} ({:?})",
                            c.hypotheses[i]
                        );
                        if key == "multi" {
                            *sums.entry((kind, field)).or_insert(0.0) += value;
                        }
                    }
                }
            }
        }
        let n = c.hypotheses.len() as f64;
        for kind in TYPES {
            for field in ["precision", "recall", "fmeasure"] {
                let w = config["mean_multi"][kind.to_string()][field]
                    .as_f64()
                    .unwrap();
                let got = sums[&(kind, field)] / n;
                assert!(close(got, w, 1e-12), "mean {kind} {field}: {got} vs {w}");
                // The bootstrap interval is random: ours and rouge-score's bracket the
                // mean alike, with widths within 30% of each other.
                let per_example: Vec<f64> = c
                    .hypotheses
                    .iter()
                    .zip(&c.references)
                    .map(|(h, r)| {
                        let s = scorer.score_multi(r, h)[&kind];
                        match field {
                            "precision" => s.precision,
                            "recall" => s.recall,
                            _ => s.fmeasure,
                        }
                    })
                    .collect();
                let ours = Bootstrap::default().interval(&per_example).unwrap();
                let theirs = &config["bootstrap"]["result"][kind.to_string()];
                let (lo, hi) = (
                    theirs["low"][field].as_f64().unwrap(),
                    theirs["high"][field].as_f64().unwrap(),
                );
                assert!(ours.low <= got && got <= ours.high && lo <= got && got <= hi);
                let ratio = (ours.high - ours.low) / (hi - lo);
                assert!(
                    (0.7..1.3).contains(&ratio),
                    "{kind} {field}: interval width ratio {ratio}"
                );
            }
        }
    }
}

#[test]
fn settings_beyond_the_defaults_match_sacrebleu() {
    use ember_eval::metrics::Smoothing;
    for (file, is_bleu) in [("bleu.json", true), ("chrf.json", false)] {
        let f = fixture(file);
        let variants = f["variants"].as_array().unwrap();
        assert!(variants.len() >= 14);
        for case in variants {
            let refs = case["refs"].as_str().unwrap();
            let c = streams(refs);
            let s = &case["settings"];
            let what = format!("{file} {refs} {s}");
            if is_bleu {
                let smoothing = match s["smooth_method"].as_str() {
                    None | Some("exp") => Smoothing::Exp,
                    Some("none") => Smoothing::None,
                    Some("floor") => Smoothing::Floor(s["smooth_value"].as_f64().unwrap_or(0.1)),
                    Some("add-k") => Smoothing::AddK(s["smooth_value"].as_f64().unwrap_or(1.0)),
                    Some(other) => panic!("{other}"),
                };
                let mut bleu = Bleu::new(BleuConfig {
                    tokenizer: s["tokenize"].as_str().unwrap().parse().unwrap(),
                    lowercase: s["lowercase"].as_bool().unwrap_or(false),
                    smoothing,
                    max_ngram_order: s["max_ngram_order"].as_u64().unwrap_or(4) as usize,
                    effective_order: s["effective_order"].as_bool().unwrap_or(false),
                });
                let got = bleu.corpus_score(&c.hypotheses, &c.references).unwrap();
                check_bleu(&got, case, &what);
                assert_eq!(
                    bleu.signature(),
                    case["signature"].as_str().unwrap(),
                    "{what}"
                );
            } else {
                let config = ChrfConfig {
                    char_order: s["char_order"].as_u64().unwrap_or(6) as usize,
                    word_order: s["word_order"].as_u64().unwrap_or(0) as usize,
                    beta: s["beta"].as_u64().unwrap_or(2) as u32,
                    lowercase: s["lowercase"].as_bool().unwrap_or(false),
                    whitespace: s["whitespace"].as_bool().unwrap_or(false),
                    eps_smoothing: s["eps_smoothing"].as_bool().unwrap_or(false),
                };
                let got = corpus_chrf(&config, &c.hypotheses, &c.references).unwrap();
                let want = case["score"].as_f64().unwrap();
                assert!(
                    close(got.score, want, 1e-12),
                    "{what}: {} vs {want}",
                    got.score
                );
                let nrefs = nrefs_of(case);
                assert_eq!(
                    config.signature(&nrefs),
                    case["signature"].as_str().unwrap(),
                    "{what}"
                );
            }
        }
    }
}
