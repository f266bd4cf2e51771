//! `finetune`: adapter-only checkpoints that resume bit for bit and refuse another base,
//! the loss on completion tokens only with packed examples kept apart, every method's
//! `peft` files agreeing with what trained, and `peft`'s trainable counts.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use ember_data::sft::{Encoder, PackOptions, pack, read_jsonl};
use ember_hf::HfModel;
use ember_model::ModelDir;
use ember_nn::{ForwardOptions, Transformer};
use ember_train::finetune::{
    FinetuneCheckpoint, FinetuneSources, Framing, attach, heldout_loss, is_finetune,
};
use ember_train::{FinetuneConfig, FinetuneOptions, TrainError, finetune};

mod common;
use common::exclusive;

type B = Autodiff<Flex>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ember-hf/tests/fixtures")
}

/// A GQA Mistral with a sliding window of 6 and a byte-level BPE tokenizer.
fn base() -> PathBuf {
    fixtures().join("mistral-sliding-window")
}

/// `n` arithmetic examples, one JSON object a line.
fn examples(dir: &Path, n: usize) -> PathBuf {
    let mut text = String::new();
    for i in 0..n {
        let (a, b) = (i * 7 % 31, i * 13 % 17);
        text.push_str(&format!(
            "{{\"prompt\": \"{a} plus {b} is\", \"completion\": \" {}\"}}\n",
            a + b
        ));
    }
    let path = dir.join("data.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn config(method: &str, extra: &[&str]) -> FinetuneConfig {
    let mut overrides: Vec<String> = [
        "peft.r=4",
        "data.seq_len=24",
        "train.batch_size=4",
        "train.grad_accum=2",
        "train.batch_shards=2",
        "train.eval_every=3",
        "train.log_every=1",
        "train.checkpoint_every=0",
        "optim.lr=1e-2",
        "optim.warmup_steps=1",
        "optim.decay_steps=10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    overrides.extend(extra.iter().map(|s| s.to_string()));
    FinetuneConfig::resolve(&FinetuneSources {
        method: Some(method),
        overrides: &overrides,
        ..Default::default()
    })
    .unwrap()
}

fn options(out: &Path, data: &Path, resume: Option<PathBuf>) -> FinetuneOptions {
    FinetuneOptions {
        model: base(),
        data: data.to_path_buf(),
        out_dir: out.to_path_buf(),
        resume,
        force: false,
        verbose: false,
        cpu_backend: true,
    }
}

fn run(config: FinetuneConfig, options: &FinetuneOptions) -> Result<(), TrainError> {
    let _turn = exclusive();
    finetune::<B>(config, options, &Default::default()).map(|_| ())
}

/// Per step: the logged training loss, bit for bit.
fn losses(run_dir: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["train_loss"].as_f64().unwrap().to_bits(),
            )
        })
        .collect()
}

#[test]
fn a_resumed_finetune_is_bit_identical_to_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = examples(tmp.path(), 40);
    let whole = tmp.path().join("whole");
    let cut = tmp.path().join("cut");
    // LoRA dropout draws per step: the resume must reseed it exactly.
    let extra = [
        "train.steps=6",
        "peft.lora_dropout=0.1",
        "train.batch_shards=1",
    ];
    run(config("lora", &extra), &options(&whole, &data, None)).unwrap();
    run(
        config(
            "lora",
            &[
                "train.steps=3",
                "peft.lora_dropout=0.1",
                "train.batch_shards=1",
            ],
        ),
        &options(&cut, &data, None),
    )
    .unwrap();
    let saved = FinetuneCheckpoint::open(&cut).unwrap();
    assert_eq!(saved.state.step, 3);
    let resumed = FinetuneConfig::resolve(&FinetuneSources {
        overrides: &["train.steps=6".to_string()],
        saved: Some(&saved.config),
        ..Default::default()
    })
    .unwrap();
    run(resumed, &options(&cut, &data, Some(cut.clone()))).unwrap();

    let trained = |dir: &Path| std::fs::read(dir.join("checkpoint/trainable.safetensors")).unwrap();
    assert_eq!(trained(&whole), trained(&cut), "adapter tensors differ");
    assert_eq!(losses(&whole), losses(&cut));
    assert_eq!(losses(&whole).len(), 6);
    let (a, b) = (
        FinetuneCheckpoint::open(&whole).unwrap(),
        FinetuneCheckpoint::open(&cut).unwrap(),
    );
    assert_eq!(a.state.last_val_loss, b.state.last_val_loss);
    assert_eq!(a.state.sampler, b.state.sampler);
}

#[test]
fn checkpoints_hold_the_adapter_only_and_refuse_another_base() {
    let tmp = tempfile::tempdir().unwrap();
    let data = examples(tmp.path(), 24);
    let out = tmp.path().join("run");
    run(
        config("lora", &["train.steps=2"]),
        &options(&out, &data, None),
    )
    .unwrap();
    let ckpt = FinetuneCheckpoint::open(&out).unwrap();
    assert!(is_finetune(&ckpt.dir));
    // Only adapter tensors are saved, and optimizer state exists for them alone: two
    // moments of 4-byte floats, far below the base's 73k parameters.
    let bytes = std::fs::read(ckpt.dir.join("trainable.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let trainable: usize = file
        .tensors()
        .iter()
        .map(|(name, view)| {
            assert!(
                name.contains(".adapter."),
                "{name} is not an adapter tensor"
            );
            view.shape().iter().product::<usize>()
        })
        .sum();
    // q_proj 48→48 and v_proj 48→24 in each of 2 layers, rank 4: A is [d_in, 4], B [4, d_out].
    assert_eq!(trainable, 2 * (4 * 48 + 4 * 48 + 4 * 48 + 4 * 24));
    let optim: u64 = ["optim-decay.bin", "optim-no-decay.bin"]
        .iter()
        .map(|f| std::fs::metadata(ckpt.dir.join(f)).unwrap().len())
        .sum();
    assert!(
        optim < (2 * 4 * trainable) as u64 + 16_384,
        "optimizer state of {optim} bytes for {trainable} trainable parameters"
    );
    // The recorded fingerprint is the base's.
    let device = Default::default();
    let model = ModelDir::open(&base())
        .unwrap()
        .load::<Flex>(&device)
        .unwrap();
    assert_eq!(ckpt.base.fingerprint, ember_model::base_fingerprint(&model));

    // Resuming onto other weights is refused by name.
    // The same model with one weight's last byte changed.
    let changed = tmp.path().join("changed");
    std::fs::create_dir(&changed).unwrap();
    for entry in std::fs::read_dir(base()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), changed.join(entry.file_name())).unwrap();
    }
    let weights = changed.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    let mut other = options(&out, &data, Some(out.clone()));
    other.model = changed;
    let err = run(ckpt.config.clone(), &other).unwrap_err().to_string();
    assert!(err.contains("other base weights"), "{err}");
    assert!(matches!(
        run(ckpt.config.clone(), &other),
        Err(TrainError::Config(_))
    ));
}

/// Cross-entropy of `model` over `tokens[1..]` where `trained`, summed, computed on the
/// host from the logits of the example alone.
fn reference_nll(model: &Transformer<Flex>, tokens: &[u32], trained: &[bool]) -> (f64, usize) {
    let device = Default::default();
    let n = tokens.len() - 1;
    let input = Tensor::<Flex, 2, Int>::from_data(
        TensorData::new(tokens[..n].iter().map(|&t| i64::from(t)).collect(), [1, n]),
        &device,
    );
    let logits: Vec<f32> = model
        .forward(input, ForwardOptions::default())
        .into_data()
        .to_vec()
        .unwrap();
    let vocab = logits.len() / n;
    let (mut total, mut count) = (0.0, 0);
    for j in 0..n {
        if !trained[j + 1] {
            continue;
        }
        let row = &logits[j * vocab..(j + 1) * vocab];
        let max = row.iter().fold(f64::MIN, |m, &x| m.max(f64::from(x)));
        let lse = max
            + row
                .iter()
                .map(|&x| (f64::from(x) - max).exp())
                .sum::<f64>()
                .ln();
        total += lse - f64::from(row[tokens[j + 1] as usize]);
        count += 1;
    }
    (total, count)
}

#[test]
fn the_loss_covers_completions_only_and_packed_examples_see_only_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let data = examples(tmp.path(), 6);
    let dir = ModelDir::open(&base()).unwrap();
    let framing = Framing::of(&dir, "--model").unwrap();
    let encoder = Encoder {
        tokenizer: framing.tokenizer.as_ref(),
        template: &framing.template,
        bos: framing.bos,
        eos: framing.eos,
    };
    let encoded: Vec<_> = read_jsonl(&data)
        .unwrap()
        .iter()
        .map(|e| encoder.encode(e).unwrap())
        .collect();
    let packed = pack(
        &encoded,
        &PackOptions {
            block: 60,
            pack: true,
            pad_id: framing.pad,
            truncate: true,
        },
    )
    .unwrap();
    assert!(packed.rows() < encoded.len(), "nothing was packed");

    let device = Default::default();
    let model = dir.load::<Flex>(&device).unwrap();
    let (mut total, mut count) = (0.0, 0);
    for e in &encoded {
        let (t, c) = reference_nll(&model, &e.tokens, &e.trained);
        total += t;
        count += c;
    }
    let want = total / count as f64;
    // LoRA starts as the identity (B = 0): the adapted model is the base.
    let (tuned, _) = attach(
        model,
        &config("lora", &[]),
        &|_| Err("unused".into()),
        &device,
    )
    .unwrap();
    let got = heldout_loss(&tuned, &packed, 2, &device).unwrap();
    assert!(
        (got - want).abs() < 1e-5 * want.abs(),
        "packed loss {got} vs examples alone {want}"
    );
}

/// Logits of `tokens` with the `peft` adapter in `dir` applied to the base; with
/// `nf4_block`, to the base with every projection but the head replaced by its NF4
/// round trip (what QLoRA trains on).
fn peft_logits(dir: &Path, tokens: &[i64], nf4_block: Option<usize>) -> Vec<f32> {
    let device = Default::default();
    let hf = HfModel::open(&base()).unwrap();
    let mut model = hf.load_model::<Flex>(&device).unwrap();
    if let Some(block) = nf4_block {
        for (path, projection) in model.projections_mut() {
            if path != "lm_head" {
                let q = ember_nn::QuantizedWeight::quantize(
                    projection.weight.val(),
                    ember_peft::QuantFormat::Nf4,
                    block,
                )
                .unwrap();
                projection.weight = burn::module::Param::from_tensor(q.dequantize());
            }
        }
    }
    let input = || {
        Tensor::<Flex, 2, Int>::from_data(
            TensorData::new(tokens.to_vec(), [1, tokens.len()]),
            &device,
        )
    };
    let logits = match ember_hf::peft::peft_type(dir).unwrap().as_str() {
        ember_hf::peft::BOTTLENECK_TYPE => {
            let adapters =
                ember_hf::peft::load_bottleneck_adapter::<Flex>(dir, model.config(), &device)
                    .unwrap();
            let mut hooks = adapters.hooks();
            model.forward(
                input(),
                ForwardOptions {
                    hooks: Some(&mut hooks),
                    ..Default::default()
                },
            )
        }
        "PREFIX_TUNING" | "PROMPT_TUNING" => {
            ember_hf::peft::load_prompt_adapter::<Flex>(dir, model.config(), &device)
                .unwrap()
                .forward(&model, input())
        }
        _ => {
            let (model, _) = ember_hf::peft::load_adapter(dir, model, hf.arch(), &device).unwrap();
            model.forward(input(), ForwardOptions::default())
        }
    };
    logits.into_data().to_vec().unwrap()
}

#[test]
fn every_method_trains_and_saves_what_peft_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let data = examples(tmp.path(), 16);
    let tokens: Vec<i64> = vec![5, 17, 99, 3, 42, 8, 250, 11];
    for (method, extra) in [
        (
            "lora",
            vec![
                "peft.use_rslora=true",
                "peft.target_modules=[\"all-linear\"]",
            ],
        ),
        (
            "dora",
            vec!["peft.target_modules=[\"q_proj\", \"up_proj\"]"],
        ),
        ("ia3", vec![]),
        ("prefix", vec!["peft.num_virtual_tokens=3"]),
        (
            "prompt",
            vec!["peft.prompt_init=\"text\"", "peft.prompt_init_text=\"add\""],
        ),
        (
            "bottleneck",
            vec!["peft.reduction_factor=8", "peft.non_linearity=\"gelu\""],
        ),
        ("adalora", vec!["peft.init_r=6", "peft.target_r=2"]),
        (
            "qlora",
            vec!["peft.quant_format=\"nf4\"", "peft.quant_block_size=16"],
        ),
    ] {
        let out = tmp.path().join(method);
        let mut extra = extra.clone();
        extra.push("train.steps=3");
        let config = config(method, &extra);
        run(config.clone(), &options(&out, &data, None)).unwrap();
        let ckpt = FinetuneCheckpoint::open(&out).unwrap();
        // The trained tensors moved from their start (the loss had a gradient to follow).
        let log = losses(&out);
        assert_eq!(log.len(), 3, "{method}");
        // The trainable tensors, loaded as a resume would, give the peft files' logits.
        let device = Default::default();
        let model = ModelDir::open(&base()).unwrap().load::<B>(&device).unwrap();
        let (tuned, report) = attach(model, &config, &|_| Ok(vec![7, 9]), &device).unwrap();
        let tuned = ckpt.load_trainable(tuned).unwrap();
        let input = Tensor::<B, 2, Int>::from_data(
            TensorData::new(tokens.clone(), [1, tokens.len()]),
            &device,
        );
        let ours: Vec<f32> = tuned
            .forward(input, None, None)
            .into_data()
            .to_vec()
            .unwrap();
        let nf4 = (method == "qlora").then_some(16);
        let theirs = peft_logits(&ckpt.dir, &tokens, nf4);
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = ours
            .iter()
            .zip(&theirs)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-5 * scale, "{method}: {diff} vs scale {scale}");
        // And the adapter changed the model: training did something.
        let plain = peft_logits_base(&tokens);
        let moved = plain
            .iter()
            .zip(&theirs)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            moved > 1e-4 * scale,
            "{method}: the adapter left the logits unchanged"
        );
        assert!(report.trainable > 0 && report.trainable < report.total);
        if method == "adalora" {
            // The allocator pruned to the final budget: target_r ranks per module on
            // average (4 modules: q_proj and v_proj of 2 layers), saved as peft does.
            let saved: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(ckpt.dir.join("adapter_config.json")).unwrap(),
            )
            .unwrap();
            let kept: usize = saved["rank_pattern"]
                .as_object()
                .expect("a rank_pattern")
                .values()
                .map(|v| {
                    v.as_array()
                        .unwrap()
                        .iter()
                        .filter(|b| b.as_bool() == Some(true))
                        .count()
                })
                .sum();
            assert_eq!(kept, 2 * 4, "{saved}");
        }
    }
}

fn peft_logits_base(tokens: &[i64]) -> Vec<f32> {
    let device = Default::default();
    let model = ModelDir::open(&base())
        .unwrap()
        .load::<Flex>(&device)
        .unwrap();
    let input = Tensor::<Flex, 2, Int>::from_data(
        TensorData::new(tokens.to_vec(), [1, tokens.len()]),
        &device,
    );
    model
        .forward(input, ForwardOptions::default())
        .into_data()
        .to_vec()
        .unwrap()
}

#[test]
fn trainable_counts_are_peft_s_for_its_own_adapter_configs() {
    let peft_dir = fixtures().join("peft");
    let device = Default::default();
    for name in [
        "lora-qv-down",
        "rslora-all-linear",
        "dora-qkv-up",
        "ia3-kv-down",
        "prefix-5",
        "prompt-4",
    ] {
        let config = FinetuneConfig::resolve(&FinetuneSources {
            adapter_config: Some(&peft_dir.join(name).join("adapter_config.json")),
            ..Default::default()
        })
        .unwrap();
        let model = HfModel::open(&peft_dir.join("base"))
            .unwrap()
            .load_model::<B>(&device)
            .unwrap();
        let (_, report) = attach(model, &config, &|_| Ok(vec![1]), &device).unwrap();
        let expected: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(peft_dir.join(name).join("expected.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            report.trainable as u64,
            expected["trainable_parameters"].as_u64().unwrap(),
            "{name}"
        );
    }
    // A projection MLP is refused by name rather than trained as something else.
    let err = FinetuneConfig::resolve(&FinetuneSources {
        adapter_config: Some(&peft_dir.join("prefix-projection-3/adapter_config.json")),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("prefix_projection"), "{err}");
}

#[test]
fn bad_settings_and_examples_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = examples(tmp.path(), 8);
    let expect = |config: FinetuneConfig, data: &Path, needle: &str| {
        let out = tmp.path().join("bad");
        let err = run(config, &options(&out, data, None))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
        assert!(
            !out.join("checkpoint").exists(),
            "a failed start wrote a checkpoint"
        );
    };
    // A target module the base does not have.
    expect(
        config("lora", &["peft.target_modules=[\"c_attn\"]"]),
        &data,
        "peft.target_modules: `c_attn`",
    );
    // A line without a completion.
    let broken = tmp.path().join("broken.jsonl");
    std::fs::write(
        &broken,
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"x\"}\n",
    )
    .unwrap();
    expect(config("lora", &[]), &broken, "broken.jsonl:2");
    // An example longer than a row, with truncation off.
    let long = tmp.path().join("long.jsonl");
    std::fs::write(
        &long,
        format!(
            "{{\"prompt\": \"{}\", \"completion\": \"b\"}}\n",
            "word ".repeat(50)
        ),
    )
    .unwrap();
    expect(
        config("lora", &["data.truncate=false"]),
        &long,
        "long.jsonl:1",
    );
    // Prompt learning with packing.
    let err = FinetuneConfig::resolve(&FinetuneSources {
        method: Some("prefix"),
        overrides: &["data.pack=true".to_string()],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("data.pack"), "{err}");
    // A peft_type Ember does not train.
    let loha = tmp.path().join("adapter_config.json");
    std::fs::write(&loha, "{\"peft_type\": \"LOHA\", \"r\": 4}").unwrap();
    let err = FinetuneConfig::resolve(&FinetuneSources {
        adapter_config: Some(&loha),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("peft_type = \"LOHA\""), "{err}");
}

/// The adapter tensors of a fine-tune's checkpoint, by name, as f32.
fn adapter(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("checkpoint/trainable.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `train.activation_checkpointing` in a fine-tune: LoRA (with dropout: the same masks),
/// QLoRA and a full fine-tune train as without it — the same losses and adapters.
#[test]
fn activation_checkpointing_fine_tunes_like_none() {
    let tmp = tempfile::tempdir().unwrap();
    let data = examples(tmp.path(), 40);
    for (method, extra) in [
        ("lora", &["peft.lora_dropout=0.1"][..]),
        ("qlora", &[][..]),
        ("full", &[][..]),
    ] {
        let run_with = |setting: &str| {
            let out = tmp
                .path()
                .join(format!("{method}-{}", setting.replace(':', "")));
            let mut sets = vec![
                "train.steps=3",
                "train.batch_shards=1",
                "train.eval_every=0",
            ];
            sets.extend_from_slice(extra);
            let checkpointing = format!("train.activation_checkpointing={setting}");
            sets.push(&checkpointing);
            let config = config(method, &sets);
            if setting == "selective" {
                let _turn = exclusive();
                finetune::<
                    Autodiff<
                        Flex,
                        burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing,
                    >,
                >(config, &options(&out, &data, None), &Default::default())
                .unwrap();
            } else {
                run(config, &options(&out, &data, None)).unwrap();
            }
            out
        };
        let plain = run_with("none");
        for setting in ["blocks", "selective"] {
            let other = run_with(setting);
            let what = format!("{method}, {setting}");
            let (a, b) = (losses(&plain), losses(&other));
            assert_eq!(a.len(), 3, "{what}");
            for ((_, x), (_, y)) in a.iter().zip(&b) {
                let (x, y) = (f64::from_bits(*x), f64::from_bits(*y));
                assert!((x - y).abs() <= 1e-6 * x, "{what}: loss {x} vs {y}");
            }
            for ((name, x), (_, y)) in adapter(&plain).iter().zip(adapter(&other)) {
                let worst = x
                    .iter()
                    .zip(&y)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f32::max);
                assert!(worst <= 1e-6, "{what}: {name} differs by {worst}");
            }
        }
    }
    // Methods outside the projections cannot checkpoint: the key is named.
    let err = FinetuneConfig::resolve(&FinetuneSources {
        method: Some("prefix"),
        overrides: &["train.activation_checkpointing=blocks".to_string()],
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.0.starts_with("train.activation_checkpointing"), "{err}");
}

/// Data-parallel LoRA with the ranks as threads: resumed from the same one-step
/// checkpoint (rank 0's is sent to the other), two ranks train like one process with the
/// same global batch (every step's loss, the adapter), and only the adapter's gradients
/// take part (the base is frozen on every rank).
#[test]
fn a_data_parallel_finetune_trains_like_one_process() {
    use ember_train::ddp::{Collective as _, DataParallel, LocalGroup};
    use ember_train::finetune_with;
    use std::sync::{Arc, Mutex};
    let _turn = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = examples(tmp.path(), 40);
    let settings = ["train.batch_shards=1", "peft.lora_dropout=0.0"];
    let mut first = config("lora", &settings);
    first.train.steps = 1;
    let start = tmp.path().join("start");
    finetune::<B>(first, &options(&start, &data, None), &Default::default()).unwrap();
    let mut rest = config("lora", &settings);
    rest.train.steps = 4;
    let single = tmp.path().join("single");
    finetune::<B>(
        rest.clone(),
        &options(&single, &data, Some(start.clone())),
        &Default::default(),
    )
    .unwrap();
    let ddp = tmp.path().join("ddp");
    let groups = LocalGroup::new(2, std::time::Duration::from_secs(60));
    std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|group| {
                let out = match group.rank() {
                    0 => ddp.clone(),
                    _ => tmp.path().join("rank1-unused"),
                };
                let options = options(&out, &data, Some(start.clone()));
                let rest = rest.clone();
                s.spawn(move || {
                    let dp = DataParallel::new(Arc::new(Mutex::new(group)));
                    finetune_with::<B>(rest, &options, Some(dp), &Default::default())
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap().unwrap();
        }
    });
    assert!(!tmp.path().join("rank1-unused").exists());
    let loss = |dir: &Path| -> Vec<(u64, f64)> {
        losses(dir)
            .into_iter()
            .map(|(step, bits)| (step, f64::from_bits(bits)))
            .collect()
    };
    let (a, b) = (loss(&single), loss(&ddp));
    assert_eq!(a.len(), b.len());
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "step {step}: {x} vs {y}");
    }
    let (wa, wb) = (adapter(&single), adapter(&ddp));
    assert!(!wa.is_empty());
    assert_eq!(wa.len(), wb.len());
    for ((name, x), (_, y)) in wa.iter().zip(&wb) {
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() < 1e-5, "{name}: {p} vs {q}");
        }
    }
}
