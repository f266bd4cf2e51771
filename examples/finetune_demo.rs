//! A learning demonstration of `finetune`: pretrain a small character model on text that
//! repeats words, then teach it with LoRA a task it has never seen (spell each word
//! shifted by one letter, `next cab =` → ` dbc`), and measure exact-match accuracy on
//! held-out words before and after.
//!
//! `cargo run --release -p ember-examples --example finetune_demo` (about three minutes on
//! two cores). Files go to `target/finetune-demo/`.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use ember_data::SplitMix64;
use ember_infer::{Generator, Sampler, SamplingConfig};
use ember_model::ModelDir;
use ember_nn::Transformer;
use ember_train::finetune::{FinetuneCheckpoint, FinetuneSources, attach};
use ember_train::{FinetuneConfig, FinetuneOptions, TrainConfig, TrainOptions};

type B = Autodiff<Flex>;

/// A random lowercase word of three letters.
fn word(rng: &mut SplitMix64) -> String {
    (0..3)
        .map(|_| (b'a' + rng.below(26) as u8) as char)
        .collect()
}

/// Each letter one further along the alphabet (`z` wraps to `a`).
fn shifted(word: &str) -> String {
    word.bytes()
        .map(|b| (b'a' + (b - b'a' + 1) % 26) as char)
        .collect()
}

/// Pretraining text: words said twice (so the model learns to copy) and runs of the
/// alphabet (so it knows which letter follows which), but never a word shifted.
fn corpus(rng: &mut SplitMix64, lines: usize) -> String {
    let mut text = String::new();
    for i in 0..lines {
        if i % 2 == 0 {
            let w = word(rng);
            text.push_str(&format!("copy {w} = {w}\n"));
        } else {
            let start = rng.below(26) as u8;
            let run: String = (0..8).map(|k| (b'a' + (start + k) % 26) as char).collect();
            text.push_str(&format!("abc {run}\n"));
        }
    }
    text
}

/// `{"prompt", "completion"}` lines for `words`.
fn examples(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            format!(
                "{}\n",
                serde_json::json!({"prompt": format!("next {w} ="), "completion": format!(" {}\n", shifted(w))})
            )
        })
        .collect()
}

/// Share of `words` whose greedy completion is exactly the shifted word.
fn accuracy(model: &Transformer<Flex>, dir: &ModelDir, words: &[String]) -> f64 {
    let device = Default::default();
    let mut right = 0;
    for w in words {
        let prompt = dir
            .encode(&format!("next {w} ="), "prompt")
            .expect("known characters");
        let want = format!(" {}\n", shifted(w));
        let mut sampler = Sampler::new(SamplingConfig::greedy());
        let out = Generator::new(model, &device, true)
            .generate(&prompt, want.chars().count(), &mut sampler, |_| {})
            .expect("a valid prompt");
        if dir.decode(&out).as_deref() == Some(want.as_str()) {
            right += 1;
        }
    }
    right as f64 / words.len() as f64
}

fn main() {
    let root = PathBuf::from("target/finetune-demo");
    std::fs::create_dir_all(&root).expect("a writable target/");
    let mut rng = SplitMix64::new(7);
    let corpus_path = root.join("corpus.txt");
    std::fs::write(&corpus_path, corpus(&mut rng, 4000)).unwrap();
    // Held-out words never appear in the fine-tuning data.
    let train_words: Vec<String> = (0..2000).map(|_| word(&mut rng)).collect();
    let heldout: Vec<String> = (0..200)
        .map(|_| word(&mut rng))
        .filter(|w| !train_words.contains(w))
        .take(100)
        .collect();
    let data_path = root.join("shift.jsonl");
    std::fs::write(&data_path, examples(&train_words)).unwrap();

    // 1. Pretrain (the `tiny` preset: a Llama-shaped character model).
    let pretrain = root.join("pretrain");
    let steps = 300;
    let config = TrainConfig::resolve(
        Some("tiny"),
        None,
        &[
            format!("train.steps={steps}"),
            format!("optim.decay_steps={steps}"),
        ],
    )
    .expect("a valid preset");
    let summary = ember_train::train::<B>(
        config,
        &TrainOptions {
            out_dir: pretrain.clone(),
            data: vec![corpus_path],
            resume: None,
            force: true,
            verbose: false,
            cpu_backend: true,
        },
        &Default::default(),
    )
    .expect("pretraining runs");
    println!(
        "pretrained {steps} steps: val loss {:.4}",
        summary.last_val_loss.unwrap_or(f64::NAN)
    );
    let dir = ModelDir::open(&pretrain).expect("the checkpoint");
    let device = Default::default();
    let base = dir.load::<Flex>(&device).expect("weights");
    let before = accuracy(&base, &dir, &heldout);

    // 2. Fine-tune with LoRA on every projection.
    let out = root.join("lora");
    let ft_steps = 150;
    let config = FinetuneConfig::resolve(&FinetuneSources {
        method: Some("lora"),
        overrides: &[
            "peft.target_modules=[\"all-linear\"]".into(),
            "peft.r=16".into(),
            "peft.lora_alpha=32.0".into(),
            "optim.lr=5e-3".into(),
            format!("train.steps={ft_steps}"),
            format!("optim.decay_steps={ft_steps}"),
            "train.batch_size=16".into(),
            "train.eval_every=0".into(),
            "data.seq_len=128".into(),
        ],
        ..Default::default()
    })
    .expect("a valid fine-tune config");
    let summary = ember_train::finetune::<B>(
        config.clone(),
        &FinetuneOptions {
            model: pretrain.clone(),
            data: data_path,
            out_dir: out.clone(),
            resume: None,
            force: true,
            verbose: false,
            cpu_backend: true,
        },
        &Default::default(),
    )
    .expect("fine-tuning runs");
    println!(
        "fine-tuned {} steps: train loss {:.4}; {}",
        summary.step,
        summary.last_train_loss.unwrap_or(f64::NAN),
        ember_train::finetune::trainable_line(&summary.params)
    );

    // 3. The adapter, loaded onto the base as a resume would, merged for decoding.
    let after = {
        let model = dir.load::<B>(&device).expect("weights");
        let (tuned, _) = attach(model, &config, &|_| Ok(vec![]), &device).expect("attaches");
        let tuned = FinetuneCheckpoint::open(&out)
            .and_then(|ckpt| ckpt.load_trainable(tuned))
            .expect("the adapter");
        let mut model = burn::module::AutodiffModule::valid(&tuned.model);
        for (_, projection) in model.projections_mut() {
            *projection = ember_peft::merged(projection);
        }
        accuracy(&model, &dir, &heldout)
    };
    println!(
        "held-out exact match ({} words never seen in training): before {:.1}% -> after {:.1}%",
        heldout.len(),
        100.0 * before,
        100.0 * after
    );
    println!(
        "adapter (peft format): {}",
        Path::new(&out).join("checkpoint").display()
    );
}
