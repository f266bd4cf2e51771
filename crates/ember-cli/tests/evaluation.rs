//! Evaluation and analysis as users run them: `ember eval` (scores equal to the reference
//! packages' on the committed corpus; generated predictions equal to `ember generate`'s),
//! `ember attention` and `ember plot`. The interactive commands are in `interactive.rs`.

use std::path::Path;

use common::{TINY, assert_fails, assert_succeeds, ember, gpt2, tiny_corpus};

use serde_json::{Value, json};

mod common;

fn eval_fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ember-eval/tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn eval_of_predictions_reproduces_sacrebleu_and_rouge_score() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = eval_fixture("eval_corpus.json");
    let examples = corpus["examples"].as_array().unwrap();
    let data: Vec<Value> = examples
        .iter()
        .map(|e| json!({"prompt": "p", "references": e["references"]}))
        .collect();
    let predictions: Vec<Value> = examples
        .iter()
        .map(|e| json!({"prediction": e["hypothesis"]}))
        .collect();
    let (data_path, pred_path) = (dir.path().join("data.jsonl"), dir.path().join("pred.jsonl"));
    write_jsonl(&data_path, &data);
    write_jsonl(&pred_path, &predictions);
    let out = dir.path().join("report.json");
    for stemmer in [false, true] {
        let mut args = vec![
            "eval",
            "--data",
            data_path.to_str().unwrap(),
            "--predictions",
            pred_path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        if stemmer {
            args.push("--rouge-stemmer");
        }
        let run = ember(&args);
        assert_succeeds(&run);
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        // sacrebleu with each example's own references (`nrefs:var`).
        let bleu = eval_fixture("bleu.json")["corpus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["refs"] == "variable" && c["tokenize"] == "13a")
            .unwrap()
            .clone();
        assert!(
            (report["bleu"]["score"].as_f64().unwrap() - bleu["score"].as_f64().unwrap()).abs()
                < 1e-9
        );
        assert_eq!(report["bleu"]["signature"], bleu["signature"]);
        let chrf = eval_fixture("chrf.json")["corpus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["refs"] == "variable" && c["word_order"] == 0)
            .unwrap()
            .clone();
        assert!(
            (report["chrf"]["score"].as_f64().unwrap() - chrf["score"].as_f64().unwrap()).abs()
                < 1e-9
        );
        let rouge = &eval_fixture("rouge.json")["configs"][usize::from(stemmer)];
        assert_eq!(rouge["use_stemmer"], stemmer);
        for kind in ["rouge1", "rouge2", "rougeL", "rougeLsum"] {
            for field in ["precision", "recall", "fmeasure"] {
                let (got, want) = (
                    report[kind][field].as_f64().unwrap(),
                    rouge["mean_multi"][kind][field].as_f64().unwrap(),
                );
                assert!((got - want).abs() < 1e-9, "{kind} {field}: {got} vs {want}");
            }
        }
        let markdown = std::fs::read_to_string(out.with_extension("md")).unwrap();
        assert!(markdown.contains("| BLEU |") && markdown.contains("| rougeLsum F |"));
    }

    // Bad input: exit 2 naming the file and line.
    std::fs::write(dir.path().join("bad.jsonl"), "{\"prompt\": \"a\"}\n").unwrap();
    let bad = dir.path().join("bad.jsonl");
    assert_fails(
        &ember(&[
            "eval",
            "--data",
            bad.to_str().unwrap(),
            "--predictions",
            pred_path.to_str().unwrap(),
        ]),
        2,
        "bad.jsonl:1: no `reference` or `references` key",
    );
    write_jsonl(&dir.path().join("short.jsonl"), &predictions[..3]);
    let short = dir.path().join("short.jsonl");
    assert_fails(
        &ember(&[
            "eval",
            "--data",
            data_path.to_str().unwrap(),
            "--predictions",
            short.to_str().unwrap(),
        ]),
        2,
        "3 predictions for 46 examples",
    );
    let scoring = |extra: &[&str]| {
        let mut args = vec!["eval", "--data", data_path.to_str().unwrap()];
        args.extend(["--predictions", pred_path.to_str().unwrap()]);
        args.extend_from_slice(extra);
        ember(&args)
    };
    assert_fails(
        &scoring(&["--metrics", "bleu,meteor"]),
        2,
        "--metrics: unknown metric `meteor`",
    );
    assert_fails(&scoring(&["--tokenize", "zh"]), 2, "--tokenize");
    assert_fails(
        &ember(&["eval", "--data", data_path.to_str().unwrap()]),
        2,
        "--model or --predictions",
    );
}

#[test]
fn eval_generates_what_ember_generate_prints() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = [
        "Hello, my name is",
        "The quick brown fox",
        "In the beginning",
    ];
    let data: Vec<Value> = prompts
        .iter()
        .map(|p| json!({"prompt": p, "reference": "some text"}))
        .collect();
    let data_path = dir.path().join("data.jsonl");
    write_jsonl(&data_path, &data);
    let out = dir.path().join("gen.json");
    let model = gpt2();
    let run = ember(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data_path.to_str().unwrap(),
        "--max-new-tokens",
        "6",
        "--metrics",
        "bleu,exact_match,perplexity",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_succeeds(&run);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let generated = ember(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            prompt,
            "--max-new-tokens",
            "6",
            "--temperature",
            "0",
            "--decoder",
            "host",
        ]);
        assert!(generated.status.success());
        let text = String::from_utf8_lossy(&generated.stdout);
        let continuation = text
            .strip_prefix(prompt)
            .unwrap_or(&text)
            .trim_end_matches('\n');
        // The engine, as the server, ends a completion cut inside a character with
        // U+FFFD; `ember generate` leaves the incomplete character out.
        let predicted = report["per_example"][i]["prediction"].as_str().unwrap();
        assert_eq!(
            predicted.trim_end_matches('\u{fffd}'),
            continuation,
            "prompt {prompt:?}"
        );
    }
    let ppl = &report["perplexity"];
    assert!(ppl["tokens"].as_u64().unwrap() >= 6 && ppl["perplexity"].as_f64().unwrap() > 1.0);
    assert!(
        (ppl["mean_nll"].as_f64().unwrap().exp() - ppl["perplexity"].as_f64().unwrap()).abs()
            < 1e-9
    );
}

#[test]
fn attention_writes_heatmaps_and_a_summary_and_compares_models() {
    let dir = tempfile::tempdir().unwrap();
    let model = gpt2();
    let out = dir.path().join("att");
    let run = ember(&[
        "attention",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Hello world, hello",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_succeeds(&run);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let layers = summary["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    let heads = layers[0]["heads"].as_array().unwrap().len();
    // Labelled single-head heatmaps only for a chosen layer or head.
    assert!(!out.join("layer0_head0.png").exists());
    for file in ["overview.png", "rollout.png", "layer0.png"] {
        let bytes = std::fs::read(out.join(file)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{file}");
    }
    for layer in layers {
        for head in layer["heads"].as_array().unwrap() {
            let label = head["pattern"].as_str().unwrap();
            assert!(
                [
                    "previous-token",
                    "first-token",
                    "diagonal",
                    "delimiter",
                    "local",
                    "broad",
                    "mixed"
                ]
                .contains(&label)
            );
        }
    }
    assert_eq!(
        summary["rollout"].as_array().unwrap().len(),
        summary["tokens"].as_array().unwrap().len()
    );

    let cmp = dir.path().join("cmp");
    let run = ember(&[
        "attention",
        "--compare",
        model.to_str().unwrap(),
        model.to_str().unwrap(),
        "--prompt",
        "Hello world",
        "--layer",
        "0",
        "--head",
        "1",
        "--out",
        cmp.to_str().unwrap(),
    ]);
    assert_succeeds(&run);
    let comparison: Value =
        serde_json::from_str(&std::fs::read_to_string(cmp.join("compare.json")).unwrap()).unwrap();
    assert_eq!(
        comparison["heads"].as_array().unwrap().len(),
        layers.len() * heads
    );
    for h in comparison["heads"].as_array().unwrap() {
        assert_eq!(h["pattern_a"], h["pattern_b"]);
        assert_eq!(h["entropy_a"], h["entropy_b"]);
    }
    assert!(cmp.join("a/layer0_head1.png").exists() && !cmp.join("a/layer0_head0.png").exists());

    assert_fails(
        &ember(&[
            "attention",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "hi",
            "--layer",
            "99",
            "--out",
            out.to_str().unwrap(),
        ]),
        2,
        "--layer 99",
    );
    assert_fails(
        &ember(&[
            "attention",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "",
            "--out",
            out.to_str().unwrap(),
        ]),
        2,
        "--prompt",
    );
}

#[test]
fn plot_draws_runs_and_refuses_what_is_not_one() {
    let dir = tempfile::tempdir().unwrap();
    for (run, lr) in [("a", "1e-3"), ("b", "3e-3")] {
        let data = tiny_corpus(dir.path());
        let out = dir.path().join(run);
        let lr = format!("optim.lr={lr}");
        let mut args = vec![
            "train",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.steps=6",
            "--set",
            &lr,
            "--quiet",
        ];
        args.extend_from_slice(TINY);
        let train = ember(&args);
        assert_succeeds(&train);
        // `ember train` draws its own curves at the end.
        assert!(
            std::fs::read(out.join("curves.png"))
                .unwrap()
                .starts_with(b"\x89PNG")
        );
    }
    let figure = dir.path().join("both.png");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let run = ember(&[
        "plot",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        figure.to_str().unwrap(),
    ]);
    assert_succeeds(&run);
    let logged = std::fs::read_to_string(a.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(String::from_utf8_lossy(&run.stdout).contains(&format!("a: {logged} steps logged")));
    assert!(std::fs::read(&figure).unwrap().starts_with(b"\x89PNG"));

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_fails(
        &ember(&[
            "plot",
            empty.to_str().unwrap(),
            "--out",
            figure.to_str().unwrap(),
        ]),
        2,
        "no metrics.jsonl here",
    );
    let torn = dir.path().join("torn.jsonl");
    std::fs::write(
        &torn,
        "{\"step\": 1, \"train_loss\": 2.0}\nnot json\n{\"step\": 3, \"train_loss\": 1.0}\n",
    )
    .unwrap();
    assert_fails(
        &ember(&[
            "plot",
            torn.to_str().unwrap(),
            "--out",
            figure.to_str().unwrap(),
        ]),
        2,
        "torn.jsonl: line 2: not JSON",
    );
    assert_fails(
        &ember(&[
            "plot",
            a.to_str().unwrap(),
            "--out",
            dir.path().join("x.jpg").to_str().unwrap(),
        ]),
        2,
        ".png",
    );
}
