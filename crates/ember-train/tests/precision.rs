//! `train.matmul_precision = "bf16"` end to end. A binary of its own: the precision is a
//! process-wide setting, and the other training tests compare f32 runs bit for bit.

use burn::backend::{Autodiff, Flex};
use ember_ops::fused::{MatmulPrecision, matmul_precision};
use ember_train::{TrainConfig, TrainOptions, train};

type B = Autodiff<Flex>;

#[test]
fn bf16_matmuls_train_like_f32_and_the_setting_ends_with_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..400 {
        text.push_str(&format!("line {i}: a cat {} sat on the mat.\n", i * 5 % 11));
    }
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, text).unwrap();
    let run = |precision: &str| {
        let sets: Vec<String> = [
            "model.d_model=64",
            "model.n_layers=2",
            "model.d_ff=128",
            "model.max_seq_len=32",
            "train.batch_size=8",
            "train.steps=40",
            "train.eval_every=40",
            "train.eval_batches=4",
            "train.checkpoint_every=0",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("train.matmul_precision={precision}")])
        .collect();
        let config = TrainConfig::resolve(Some("tiny"), None, &sets).unwrap();
        let options = TrainOptions {
            out_dir: tmp.path().join(precision),
            data: vec![corpus.clone()],
            resume: None,
            force: false,
            verbose: false,
            cpu_backend: true,
        };
        let summary = train::<B>(config, &options, &Default::default()).unwrap();
        assert!(summary.checkpoint.exists());
        summary.last_val_loss.unwrap()
    };
    let f32_loss = run("f32");
    let bf16_loss = run("bf16");
    assert_eq!(
        matmul_precision(),
        MatmulPrecision::F32,
        "precision not restored"
    );
    // The same seed and data: bf16 rounding changes the numbers, not the training.
    assert!(
        bf16_loss != f32_loss,
        "bf16 run identical to f32: rounding never applied"
    );
    assert!(
        (bf16_loss - f32_loss).abs() < 0.05 * f32_loss,
        "val loss bf16 {bf16_loss} vs f32 {f32_loss}"
    );
    assert!(
        f32_loss < 2.5,
        "the model did not learn: val loss {f32_loss}"
    );
}
