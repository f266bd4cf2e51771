//! The contrastive objective: InfoNCE and its gradient against a naive f64
//! implementation and finite differences, pooling against each text run alone, a run on
//! `{"anchor", "positive"}` pairs that learns to retrieve and resumes exactly, and its
//! configuration errors.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use ember_data::pairs::pair_batch;
use ember_data::{Pair, SplitMix64};
use ember_nn::{Transformer, TransformerConfig};
use ember_train::objective::{Pooling, info_nce, pooled_embeddings};
use ember_train::train;

use super::common::{exclusive, quiet_options, weights};
use super::{config, metrics};

type AD = Autodiff<Flex>;

/// `mean_i −log softmax_j(a_i·p_j / τ)[i]` in f64, rows already unit length.
fn naive_info_nce(a: &[Vec<f64>], p: &[Vec<f64>], tau: f64) -> f64 {
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(u, v)| u * v).sum::<f64>();
    let mut total = 0.0;
    for i in 0..a.len() {
        let logits: Vec<f64> = p.iter().map(|pj| dot(&a[i], pj) / tau).collect();
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let log_z = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        total += log_z - logits[i];
    }
    total / a.len() as f64
}

fn unit_rows(rng: &mut SplitMix64, n: usize, d: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|_| {
            let row: Vec<f64> = (0..d)
                .map(|_| (rng.below(2001) as f64 - 1000.0) / 1000.0)
                .collect();
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            row.into_iter().map(|v| v / norm).collect()
        })
        .collect()
}

fn tensor<Bk: Backend>(rows: &[Vec<f64>]) -> Tensor<Bk, 2> {
    let (n, d) = (rows.len(), rows[0].len());
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(flat, [n, d]), &Default::default())
}

#[test]
fn info_nce_matches_a_naive_implementation_and_finite_differences() {
    let mut rng = SplitMix64::new(11);
    let (a, p) = (unit_rows(&mut rng, 6, 5), unit_rows(&mut rng, 6, 5));
    let tau = 0.2;
    let anchors = tensor::<AD>(&a).require_grad();
    let nce = info_nce(anchors.clone(), tensor::<AD>(&p), tau);
    let loss = nce.loss.clone().into_scalar().elem::<f64>();
    let want = naive_info_nce(&a, &p, tau);
    assert!(
        (loss - want).abs() < 1e-5 * want.abs().max(1.0),
        "{loss} vs {want}"
    );
    // Accuracy: the anchors whose largest similarity is their own positive.
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(u, v)| u * v).sum::<f64>();
    let hits = (0..6)
        .filter(|&i| (0..6).all(|j| dot(&a[i], &p[j]) <= dot(&a[i], &p[i])))
        .count();
    let accuracy = nce.accuracy.into_scalar().elem::<f64>();
    assert!(
        (accuracy - hits as f64 / 6.0).abs() < 1e-6,
        "{accuracy} vs {hits}/6"
    );
    // The gradient with respect to the anchors, by central differences of the naive loss.
    let grads = nce.loss.backward();
    let grad: Vec<f32> = anchors.grad(&grads).unwrap().into_data().to_vec().unwrap();
    let eps = 1e-5;
    for i in 0..6 {
        for k in 0..5 {
            let mut plus = a.clone();
            plus[i][k] += eps;
            let mut minus = a.clone();
            minus[i][k] -= eps;
            let fd =
                (naive_info_nce(&plus, &p, tau) - naive_info_nce(&minus, &p, tau)) / (2.0 * eps);
            let got = f64::from(grad[i * 5 + k]);
            assert!(
                (got - fd).abs() < 1e-4 + 1e-3 * fd.abs(),
                "∂/∂a[{i}][{k}]: {got} vs {fd}"
            );
        }
    }
}

#[test]
fn pooled_embeddings_are_each_text_run_alone() {
    let device = Default::default();
    Flex::seed(&device, 5);
    let mut config = TransformerConfig::llama(13, 16, 2, 4, 2, 24, 12);
    config.init_std = 0.2;
    let model = Transformer::<Flex>::new(&config, &device).unwrap();
    let pairs = [
        Pair {
            anchor: vec![1, 2, 3],
            positive: vec![4, 5, 6, 7, 8, 9],
        },
        Pair {
            anchor: vec![10, 11, 12, 3, 2, 1, 0, 5],
            positive: vec![7],
        },
    ];
    let batch = pair_batch(pairs.iter());
    let rows = [
        &pairs[0].anchor,
        &pairs[1].anchor,
        &pairs[0].positive,
        &pairs[1].positive,
    ];
    for pooling in [Pooling::Mean, Pooling::Last] {
        let inputs = Tensor::<Flex, 2, Int>::from_data(
            TensorData::new(batch.inputs.clone(), [batch.batch, batch.block]),
            &device,
        );
        let got: Vec<f32> = pooled_embeddings(&model, inputs, &batch, pooling, Default::default())
            .into_data()
            .to_vec()
            .unwrap();
        for (r, ids) in rows.iter().enumerate() {
            // The text alone, no padding: its final hidden states, pooled on the host.
            let tokens: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
            let n = tokens.len();
            let alone = Tensor::<Flex, 2, Int>::from_data(TensorData::new(tokens, [1, n]), &device);
            let hidden: Vec<f32> = model
                .hidden(model.embed(alone, 0), Default::default())
                .into_data()
                .to_vec()
                .unwrap();
            let mut v = [0f64; 16];
            for t in 0..n {
                let w = match pooling {
                    Pooling::Mean => 1.0 / n as f64,
                    Pooling::Last => f64::from(u8::from(t == n - 1)),
                };
                for (k, x) in v.iter_mut().enumerate() {
                    *x += w * f64::from(hidden[t * 16 + k]);
                }
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            for k in 0..16 {
                let want = v[k] / norm;
                let have = f64::from(got[r * 16 + k]);
                assert!(
                    (have - want).abs() < 1e-5,
                    "{pooling:?} row {r}[{k}]: {have} vs {want}"
                );
            }
        }
    }
}

/// Pairs of a four-letter word over `a..m` and the same word with every letter moved 13
/// places (`"abcd"` → `"nopq"`): the two sides share no character, so what makes a pair
/// must be learnt (an untrained model retrieves at about chance).
fn pairs_file(dir: &Path, n: usize) -> PathBuf {
    let mut rng = SplitMix64::new(3);
    let mut text = String::new();
    for _ in 0..n {
        let word: String = (0..4)
            .map(|_| (b'a' + rng.below(13) as u8) as char)
            .collect();
        let shifted: String = word.bytes().map(|b| (b + 13) as char).collect();
        text.push_str(&serde_json::json!({"anchor": word, "positive": shifted}).to_string());
        text.push('\n');
    }
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

const CONTRASTIVE: &[&str] = &[
    "train.objective=\"contrastive\"",
    "train.contrastive={temperature=0.1}",
    "train.batch_size=16",
    "optim.lr=3e-3",
    "optim.warmup_steps=5",
    "optim.decay_steps=60",
];

#[test]
fn contrastive_training_learns_to_retrieve_and_resumes_exactly() {
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![pairs_file(tmp.path(), 400)];
    let device = Default::default();
    let run = |out: &str, steps: usize, resume: bool, extra: &[&str]| {
        let steps = format!("train.steps={steps}");
        let mut sets = CONTRASTIVE.to_vec();
        sets.push(&steps);
        sets.extend(extra);
        let options = quiet_options(
            tmp.path().join(out),
            &data,
            resume.then(|| tmp.path().join(out)),
        );
        train::<AD>(config(&sets), &options, &device).unwrap()
    };
    run("long", 60, false, &["train.eval_every=1"]);
    let logged = metrics(&tmp.path().join("long"));
    let evaluated: Vec<_> = logged.iter().filter(|m| m.val_loss.is_some()).collect();
    let (first, last) = (evaluated[0], evaluated[evaluated.len() - 1]);
    let (acc_first, acc_last) = (
        first.retrieval_accuracy.unwrap(),
        last.retrieval_accuracy.unwrap(),
    );
    // 40 held-out pairs: chance is 2.5%.
    assert!(
        acc_first <= 0.2 && acc_last >= 0.5,
        "retrieval accuracy {acc_first} at step {} → {acc_last} at step {}",
        first.step,
        last.step
    );
    assert!(last.val_loss.unwrap() < first.val_loss.unwrap());
    assert!(
        logged
            .iter()
            .all(|m| m.objective.contains_key("in_batch_accuracy"))
    );

    run("straight", 6, false, &[]);
    run("split", 3, false, &[]);
    run("split", 6, true, &[]);
    assert!(
        weights(&tmp.path().join("straight")) == weights(&tmp.path().join("split")),
        "6 contrastive steps differ from 3 + resume + 3"
    );
}

#[test]
fn contrastive_settings_that_cannot_work_name_their_key() {
    let err = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        ember_train::TrainConfig::resolve(None, None, &sets)
            .unwrap_err()
            .to_string()
    };
    let on = "train.objective=\"contrastive\"";
    for (sets, want) in [
        (vec![on, "train.batch_shards=2"], "train.batch_shards"),
        (
            vec![on, "train.batch_size=1", "train.batch_shards=1"],
            "train.batch_size",
        ),
        (vec![on, "data.packing=true"], "data.packing"),
        (
            vec![on, "train.contrastive={temperature=0.0}"],
            "train.contrastive.temperature",
        ),
        (
            vec!["train.contrastive={temperature=0.1}"],
            "train.contrastive: is set",
        ),
        (
            vec![on, "train.contrastive={pooling=\"max\"}"],
            "train.contrastive: unknown variant `max`",
        ),
        (
            vec!["train.objective=\"triplet\""],
            "\"causal_lm\" or \"contrastive\"",
        ),
    ] {
        let got = err(&sets);
        assert!(got.contains(want), "{sets:?}: {got}");
    }
    // Plain text is not pairs; pairs files say which line is wrong.
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "just some text\n".repeat(50)).unwrap();
    let options = quiet_options(tmp.path().join("run"), &[text], None);
    let sets = [on, "train.steps=1"];
    let got = train::<AD>(config(&sets), &options, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(got.contains("\"anchor\""), "{got}");
    let mixed = tmp.path().join("mixed.jsonl");
    std::fs::write(
        &mixed,
        "{\"anchor\": \"a\", \"positive\": \"b\"}\n{\"text\": \"c\"}\n",
    )
    .unwrap();
    let options = quiet_options(tmp.path().join("run2"), &[mixed], None);
    let got = train::<AD>(config(&sets), &options, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        got.contains("mixed.jsonl:2") && got.contains("positive"),
        "{got}"
    );
}
