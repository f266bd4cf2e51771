//! The `ember` binary end to end: a short training run, generation, info, and every bad
//! input the CLI must reject with a clear message, exit code 2 (usage/config) or 1
//! (runtime), and no panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod data_parallel;

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .unwrap()
}

fn corpus(dir: &Path) -> PathBuf {
    let text: String = (0..300)
        .map(|i| format!("line {i}: all the world's a stage {}.\n", i % 7))
        .collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

const SMALL: &[&str] = &[
    "--set",
    "model.d_model=32",
    "--set",
    "model.n_layers=1",
    "--set",
    "model.d_ff=64",
    "--set",
    "model.max_seq_len=16",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.eval_every=2",
    "--set",
    "train.eval_batches=1",
    "--quiet",
];

fn train(dir: &Path, out: &str, steps: usize, extra: &[&str]) -> Output {
    let data = corpus(dir);
    let out = dir.join(out);
    let steps = format!("train.steps={steps}");
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        &steps,
    ];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    ember(&args)
}

fn assert_fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn train_generate_info_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let out = train(tmp.path(), "run", 4, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = tmp.path().join("run");
    let model = run.to_str().unwrap();
    let generated = ember(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "line",
        "--max-new-tokens",
        "20",
        "--seed",
        "3",
    ]);
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let text = String::from_utf8(generated.stdout).unwrap();
    assert!(
        text.starts_with("line") && text.chars().count() >= 24,
        "{text:?}"
    );
    // Greedy text, with and without the KV cache: the prompt and exactly 12 characters
    // (one per token of the char tokenizer), the same both ways.
    let greedy_text = |cache: bool| {
        let mut args = vec![
            "generate",
            "--model",
            model,
            "--prompt",
            "line 1",
            "--temperature",
            "0",
            "--max-new-tokens",
            "12",
        ];
        if !cache {
            args.push("--no-cache");
        }
        stdout_of(&ember(&args))
    };
    let text = greedy_text(true);
    assert!(
        text.starts_with("line 1") && text.trim_end_matches('\n').chars().count() == 6 + 12,
        "{text:?}"
    );
    assert_eq!(text, greedy_text(false));
    assert_greedy_ids_agree(model);
    let info = String::from_utf8(ember(&["info", "--model", model]).stdout).unwrap();
    assert!(
        info.contains("step: 4") && info.contains("last val loss:"),
        "{info}"
    );
    assert!(run.join("metrics.jsonl").exists());
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "ember failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The values of the single f32 tensor `name` of a safetensors file.
fn read_f32_tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let entry = &header[name];
    assert_eq!(entry["dtype"], "F32", "{entry}");
    let shape = entry["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let offsets = entry["data_offsets"].as_array().unwrap();
    let data = &bytes[8 + header_len..];
    let span = offsets[0].as_u64().unwrap() as usize..offsets[1].as_u64().unwrap() as usize;
    let values = data[span]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, values)
}

/// Greedy decoding by every path (`--no-cache`, which recomputes the context with burn;
/// burn with the KV cache; the host decoder; `auto`) prints the same 12 new ids, and each
/// is the arg-max of the model's logits (`ember logits`) at its position.
fn assert_greedy_ids_agree(model: &str) {
    const PROMPT: &str = "5,9,2,7";
    const NEW: usize = 12;
    let new = NEW.to_string();
    let ids = |extra: &[&str]| -> Vec<u32> {
        let mut args = vec![
            "generate",
            "--model",
            model,
            "--ids",
            PROMPT,
            "--temperature",
            "0",
            "--max-new-tokens",
            &new,
            "--print-ids",
        ];
        args.extend_from_slice(extra);
        let printed = stdout_of(&ember(&args));
        let ids: Vec<u32> = printed
            .trim()
            .split(',')
            .map(|id| {
                id.parse()
                    .unwrap_or_else(|e| panic!("{extra:?}: {id:?} in {printed:?}: {e}"))
            })
            .collect();
        assert_eq!(ids.len(), NEW, "{extra:?}: {printed:?}");
        ids
    };
    let reference = ids(&["--no-cache"]);
    println!("greedy ids after {PROMPT}: {reference:?}");
    for extra in [
        &["--decoder", "burn"][..],
        &["--decoder", "host"],
        &["--decoder", "auto"],
    ] {
        assert_eq!(ids(extra), reference, "{extra:?} vs --no-cache");
    }
    // One forward pass over the prompt and all but the last new id: the logits at the
    // position before each new id pick that id (up to a near-tie).
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("logits.safetensors");
    let mut context: Vec<String> = PROMPT.split(',').map(str::to_string).collect();
    let prompt_len = context.len();
    context.extend(reference[..NEW - 1].iter().map(u32::to_string));
    stdout_of(&ember(&[
        "logits",
        "--model",
        model,
        "--ids",
        &context.join(","),
        "--out",
        file.to_str().unwrap(),
    ]));
    let (shape, logits) = read_f32_tensor(&file, "logits");
    assert_eq!(shape[0], prompt_len + NEW - 1);
    let vocab = shape[1];
    for (i, &id) in reference.iter().enumerate() {
        let row = &logits[(prompt_len - 1 + i) * vocab..][..vocab];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!(
            row[id as usize] >= max - 1e-4,
            "new token {i}: id {id} has logit {} but the maximum is {max}",
            row[id as usize]
        );
    }
}

#[test]
fn bad_data_files() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.txt");
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let binary = tmp.path().join("binary.dat");
    std::fs::write(&binary, [0u8, 159, 146, 150, 0, 1]).unwrap();
    for (path, needle) in [
        (&missing, "no such file"),
        (&empty, "empty"),
        (&binary, "not a text file"),
    ] {
        let out = ember(&[
            "train",
            "--data",
            path.to_str().unwrap(),
            "--out",
            tmp.path().join("o").to_str().unwrap(),
            "--quiet",
        ]);
        // Inputs at fault (missing, empty, not text) are the user's to fix: exit 2.
        assert_fails(&out, 2, needle);
        assert_fails(&out, 2, path.to_str().unwrap());
    }
}

#[test]
fn bad_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let bad_toml = tmp.path().join("bad.toml");
    std::fs::write(&bad_toml, "[model\nd_model = ").unwrap();
    assert_fails(
        &train(
            tmp.path(),
            "a",
            1,
            &["--config", bad_toml.to_str().unwrap()],
        ),
        2,
        "malformed TOML",
    );
    assert_fails(
        &train(tmp.path(), "a", 1, &["--preset", "gpt9"]),
        2,
        "--preset gpt9: unknown preset",
    );
    assert_fails(
        &train(tmp.path(), "a", 1, &["--set", "train.nope=1"]),
        2,
        "unknown key `train.nope`",
    );
    assert_fails(
        &train(tmp.path(), "a", 1, &["--set", "model.d_model=30"]),
        2,
        "not divisible by n_heads",
    );
    assert_fails(
        &train(tmp.path(), "a", 1, &["--set", "model.n_kv_heads=3"]),
        2,
        "n_kv_heads",
    );
    assert_fails(
        &train(tmp.path(), "a", 1, &["--set", "optim.lr=0"]),
        2,
        "optim.lr: must be positive",
    );
    assert_fails(&ember(&["train"]), 2, "--data");
}

#[test]
fn bad_checkpoints_and_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(train(tmp.path(), "run", 2, &[]).status.success());
    let run = tmp.path().join("run");
    let model = run.to_str().unwrap();
    assert_fails(
        &ember(&["generate", "--model", model, "--prompt", "☃ snow"]),
        2,
        "--prompt: character '☃'",
    );
    assert_fails(
        &ember(&["info", "--model", tmp.path().join("nope").to_str().unwrap()]),
        1,
        "no such directory",
    );
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "hello").unwrap();
    assert_fails(
        &ember(&["info", "--model", foreign.to_str().unwrap()]),
        1,
        "neither an Ember checkpoint",
    );
    // A config.json makes it a Hugging Face directory, which this one is not.
    std::fs::write(foreign.join("config.json"), "{}").unwrap();
    assert_fails(
        &ember(&["info", "--model", foreign.to_str().unwrap()]),
        1,
        "config.json: `model_type` is missing",
    );
    // A truncated weights file.
    let weights = run.join("checkpoint/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &ember(&[
            "generate",
            "--model",
            model,
            "--prompt",
            "line",
            "--max-new-tokens",
            "2",
        ]),
        1,
        "model.safetensors",
    );
    // Resuming with a different model.
    assert!(train(tmp.path(), "run2", 2, &[]).status.success());
    let resume = tmp.path().join("run2");
    assert_fails(
        &train(
            tmp.path(),
            "run3",
            4,
            &[
                "--resume",
                resume.to_str().unwrap(),
                "--set",
                "model.n_layers=2",
            ],
        ),
        2,
        "model.n_layers: checkpoint 1, now 2",
    );
}

/// `ember prune` zeroes the requested share of block weights and reports perplexity;
/// `ember soup` averages same-shaped models (uniform: the element-wise mean; greedy: by
/// validation loss) and refuses models of another shape.
#[test]
fn prune_and_soup_write_loadable_models() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = corpus(dir);
    let data = data.to_str().unwrap();
    for seed in 1..=3 {
        let set = format!("train.seed={seed}");
        stdout_of(&train(dir, &format!("seed{seed}"), 4, &["--set", &set]));
    }
    let run = |seed: usize| dir.join(format!("seed{seed}"));
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let weight = "model.layers.0.mlp.up_proj.weight";

    let pruned = dir.join("pruned");
    let out = stdout_of(&ember(&[
        "prune",
        "--model",
        &path(&run(1)),
        "--sparsity",
        "0.5",
        "--scope",
        "layer",
        "--data",
        data,
        "--out",
        &path(&pruned),
    ]));
    assert!(out.contains("sparsity: 50.00% of"), "{out}");
    assert!(out.contains("perplexity: before"), "{out}");
    let (_, values) = read_f32_tensor(&pruned.join("model.safetensors"), weight);
    let zeros = values.iter().filter(|v| **v == 0.0).count();
    assert_eq!(zeros, values.len() / 2, "layer scope: half of each matrix");
    stdout_of(&ember(&[
        "perplexity",
        "--model",
        &path(&pruned),
        "--data",
        data,
    ]));

    // Structured: half of every layer's heads go for real; the written directory loads
    // to the model that was measured, and generates.
    let heads = dir.join("heads");
    let out = stdout_of(&ember(&[
        "prune",
        "--method",
        "heads",
        "--model",
        &path(&run(1)),
        "--sparsity",
        "0.5",
        "--data",
        data,
        "--importance-windows",
        "8",
        "--out",
        &path(&heads),
    ]));
    assert!(out.contains("layer 0: removed heads"), "{out}");
    let counts: Vec<usize> = out
        .split("heads: ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(4)
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(counts[2] * 2, counts[0], "{out}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(heads.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_attention_heads"], counts[2], "{config}");
    let after = out.split("after ").nth(1).unwrap();
    let after_nll = after
        .split("mean nll ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let measured = stdout_of(&ember(&[
        "perplexity",
        "--model",
        &path(&heads),
        "--data",
        data,
    ]));
    let nll: f64 = measured
        .split("mean nll: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(format!("{nll:.4}"), after_nll.trim(), "{measured} vs {out}");
    stdout_of(&ember(&[
        "generate",
        "--model",
        &path(&heads),
        "--prompt",
        "line",
        "--max-new-tokens",
        "4",
    ]));
    let out = ember(&[
        "prune",
        "--method",
        "heads",
        "--model",
        &path(&run(1)),
        "--sparsity",
        "0.5",
        "--out",
        &path(&dir.join("bad")),
    ]);
    assert_fails(&out, 2, "--method heads: give --data");
    let out = ember(&[
        "prune",
        "--method",
        "heads",
        "--scope",
        "layer",
        "--model",
        &path(&run(1)),
        "--sparsity",
        "0.5",
        "--data",
        data,
        "--out",
        &path(&dir.join("bad")),
    ]);
    assert_fails(&out, 2, "--scope: applies to --method magnitude");
    // GPT-2's config.json cannot say the heads' width: refused before any work.
    stdout_of(&train(
        dir,
        "gpt2",
        1,
        &["--preset", "gpt2", "--set", "model.n_heads=4"],
    ));
    let out = ember(&[
        "prune",
        "--method",
        "heads",
        "--model",
        &path(&dir.join("gpt2")),
        "--sparsity",
        "0.5",
        "--data",
        data,
        "--out",
        &path(&dir.join("bad")),
    ]);
    assert_fails(&out, 2, "GPT-2 heads are n_embd / n_head wide");

    // The uniform soup is the element-wise mean of the ingredients' weights.
    let soup = dir.join("soup");
    let models: Vec<String> = (1..=3).map(|s| path(&run(s))).collect();
    let mut args = vec!["soup", "--models"];
    args.extend(models.iter().map(String::as_str));
    let soup_path = path(&soup);
    args.extend(["--out", &soup_path]);
    let out = stdout_of(&ember(&args));
    assert!(out.contains("uniform soup of 3 models"), "{out}");
    let mut mean: Vec<f64> = Vec::new();
    for s in 1..=3 {
        let exported = dir.join(format!("export{s}"));
        stdout_of(&ember(&[
            "export",
            "--model",
            &path(&run(s)),
            "--out",
            &path(&exported),
        ]));
        let (_, v) = read_f32_tensor(&exported.join("model.safetensors"), weight);
        mean.resize(v.len(), 0.0);
        for (m, x) in mean.iter_mut().zip(v) {
            *m += x as f64 / 3.0;
        }
    }
    let (_, souped) = read_f32_tensor(&soup.join("model.safetensors"), weight);
    for (a, b) in souped.iter().zip(&mean) {
        assert!((*a as f64 - b).abs() < 1e-6, "{a} vs mean {b}");
    }

    let greedy = dir.join("greedy");
    let mut args = vec!["soup", "--greedy", "--data", data, "--models"];
    args.extend(models.iter().map(String::as_str));
    let greedy_path = path(&greedy);
    args.extend(["--out", &greedy_path]);
    let out = stdout_of(&ember(&args));
    assert!(out.contains("greedy soup of"), "{out}");
    assert_eq!(out.matches("ingredient ").count(), 3, "{out}");

    // Bad requests: another shape, a sparsity out of range, --greedy without --data.
    stdout_of(&train(dir, "wide", 1, &["--set", "model.d_ff=96"]));
    let wide = path(&dir.join("wide"));
    let out = ember(&[
        "soup",
        "--models",
        &models[0],
        &wide,
        "--out",
        &path(&dir.join("bad")),
    ]);
    assert_fails(&out, 2, "its architecture differs");
    let out = ember(&[
        "prune",
        "--model",
        &models[0],
        "--sparsity",
        "1.5",
        "--out",
        &path(&dir.join("bad")),
    ]);
    assert_fails(&out, 2, "--sparsity: must be in [0, 1)");
    let out = ember(&[
        "soup",
        "--greedy",
        "--models",
        &models[0],
        &models[1],
        "--out",
        &path(&dir.join("bad")),
    ]);
    assert_fails(&out, 2, "--data");
    assert!(!dir.join("bad").exists());
}

/// `ember distill` trains a student on a teacher's soft targets (logged as `kd_loss`);
/// a teacher with another tokenizer is refused by name; `ember train --init-from` starts
/// from a pruned model's weights.
#[test]
fn distill_and_init_from() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    stdout_of(&train(dir, "teacher", 3, &["--set", "model.d_model=64"]));
    let data = corpus(dir);
    let student = dir.join("student");
    let teacher = path(&dir.join("teacher"));
    let distill = |teacher: &str, data: &Path, out: &Path| {
        let (data, out) = (path(data), path(out));
        let mut args = vec![
            "distill",
            "--teacher",
            teacher,
            "--alpha",
            "0.7",
            "--temperature",
            "2.0",
            "--data",
            &data,
            "--out",
            &out,
            "--set",
            "train.steps=3",
        ];
        args.extend_from_slice(SMALL);
        ember(&args)
    };
    let out = distill(&teacher, &data, &student);
    stdout_of(&out);
    let metrics = std::fs::read_to_string(student.join("metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            record["objective"]["kd_loss"].as_f64().unwrap() > 0.0,
            "{line}"
        );
    }
    // Another corpus makes another character vocabulary.
    let other = dir.join("other.txt");
    std::fs::write(&other, "xyz XYZ 0123456789 qwerty\n".repeat(200)).unwrap();
    let out = distill(&teacher, &other, &dir.join("mismatch"));
    assert_fails(&out, 2, "--teacher");
    assert_fails(&out, 2, "tokenizer");
    let out = ember(&[
        "distill",
        "--teacher",
        &teacher,
        "--alpha",
        "1.5",
        "--data",
        &path(&data),
    ]);
    assert_fails(&out, 2, "--alpha: must be in [0, 1]");

    // Recovery training from a pruned model, keeping its sparsity.
    let pruned = dir.join("pruned");
    stdout_of(&ember(&[
        "prune",
        "--model",
        &path(&student),
        "--sparsity",
        "0.5",
        "--out",
        &path(&pruned),
    ]));
    let recovered = dir.join("recovered");
    stdout_of(&train(
        dir,
        "recovered",
        2,
        &[
            "--init-from",
            &path(&pruned),
            "--set",
            "train.prune={sparsity=0.5, start=0, end=1, every=1}",
        ],
    ));
    let exported = dir.join("recovered-hf");
    stdout_of(&ember(&[
        "export",
        "--model",
        &path(&recovered),
        "--out",
        &path(&exported),
    ]));
    let name = "model.layers.0.mlp.up_proj.weight";
    let (_, values) = read_f32_tensor(&exported.join("model.safetensors"), name);
    let (_, before) = read_f32_tensor(&pruned.join("model.safetensors"), name);
    // Every weight the pruned model had at zero is still zero: the recovery run kept
    // the cuts from its first step.
    for (i, (b, a)) in before.iter().zip(&values).enumerate() {
        assert!(*b != 0.0 || *a == 0.0, "weight {i} regrew: {a}");
    }
    let zeros = values.iter().filter(|v| **v == 0.0).count();
    assert!(
        zeros * 10 >= values.len() * 4,
        "{zeros} of {}",
        values.len()
    );
    // The weights must fit the configuration.
    let out = train(
        dir,
        "misfit",
        1,
        &["--init-from", &path(&pruned), "--set", "model.d_ff=96"],
    );
    assert_fails(&out, 2, "--init-from: the model differs");
}
