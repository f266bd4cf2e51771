//! `ember finetune` from the command line: a run on prompt/completion examples and one on
//! chat messages rendered with the model's template, the adapter used by `logits`,
//! `generate` and `perplexity`, peft's trainable count printed, and bad input refused
//! with exit code 2 and a message naming the file, line or key.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "ember failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn usage_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    }
}

/// A GQA Mistral with a byte-level BPE tokenizer (no chat template of its own).
fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ember-hf/tests/fixtures/mistral-sliding-window")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const QUICK: &[&str] = &[
    "--quiet",
    "--set",
    "train.steps=3",
    "--set",
    "data.seq_len=32",
    "--set",
    "train.eval_every=0",
];

#[test]
fn finetune_then_use_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let lines: String = (0..12)
        .map(|i| {
            format!(
                "{{\"prompt\": \"{i} and {i} make\", \"completion\": \" {}\"}}\n",
                2 * i
            )
        })
        .collect();
    let data = write(tmp.path(), "sums.jsonl", &lines);
    let run = tmp.path().join("run");
    let base = base();
    let (base, data_s, run_s) = (
        base.to_str().unwrap(),
        data.to_str().unwrap(),
        run.to_str().unwrap(),
    );
    let mut args = vec![
        "finetune", "--model", base, "--data", data_s, "--out", run_s,
    ];
    args.extend_from_slice(QUICK);
    let out = ok(&ember(&args));
    // q_proj 48→48 and v_proj 48→24, rank 8, two layers: peft's count.
    assert!(
        out.contains("trainable params: 2,688 || all params: 73,200 || trainable%: 3.6721"),
        "{out}"
    );
    assert!(out.contains("done: step 3"), "{out}");
    assert!(run.join("checkpoint/adapter_config.json").is_file());

    // The run is an adapter for every command that loads a model.
    let logits = tmp.path().join("logits.safetensors");
    ok(&ember(&[
        "logits",
        "--model",
        base,
        "--adapter",
        run_s,
        "--ids",
        "5,17,99",
        "--out",
        logits.to_str().unwrap(),
    ]));
    ok(&ember(&[
        "generate",
        "--model",
        base,
        "--adapter",
        run_s,
        "--prompt",
        "3 and 3 make",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
    ]));
    let text = write(tmp.path(), "text.txt", "1 and 1 make 2. 2 and 2 make 4.");
    let out = ok(&ember(&[
        "perplexity",
        "--model",
        base,
        "--adapter",
        run_s,
        "--data",
        text.to_str().unwrap(),
    ]));
    assert!(out.contains("perplexity:"), "{out}");

    // The run directory is no model, and another base is refused by name.
    usage_error(
        &ember(&["generate", "--model", run_s, "--prompt", "x"]),
        &["--model", "--adapter"],
    );
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ember-hf/tests/fixtures/qwen2-bias");
    usage_error(
        &ember(&[
            "generate",
            "--model",
            other.to_str().unwrap(),
            "--adapter",
            run_s,
            "--prompt",
            "x",
        ]),
        &["--adapter", "other base weights"],
    );
    // A resume continues the run with its own settings.
    let mut args = vec![
        "finetune", "--model", base, "--data", data_s, "--out", run_s,
    ];
    args.extend_from_slice(&["--resume", run_s, "--quiet", "--set", "train.steps=5"]);
    let out = ok(&ember(&args));
    assert!(out.contains("done: step 5"), "{out}");
}

#[test]
fn chat_messages_use_the_model_s_template() {
    let tmp = tempfile::tempdir().unwrap();
    // The base with a ChatML template in its tokenizer_config.json.
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(base()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let template = "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";
    write(
        &model,
        "tokenizer_config.json",
        &serde_json::json!({ "chat_template": template, "eos_token": "</s>" }).to_string(),
    );
    let lines: String = (0..8)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"messages": [
                    {"role": "user", "content": format!("say {i}")},
                    {"role": "assistant", "content": format!("{i}")}
                ]})
            )
        })
        .collect();
    let data = write(tmp.path(), "chat.jsonl", &lines);
    let run = tmp.path().join("run");
    let mut args = vec![
        "finetune",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--method",
        "ia3",
    ];
    args.extend_from_slice(QUICK);
    args.retain(|a| *a != "--quiet");
    let out = ok(&ember(&args));
    assert!(
        out.contains("tokenizer_config.json"),
        "the model's template: {out}"
    );
    assert!(out.contains("trainable params:"), "{out}");

    // A template that fails to render names the template.
    write(
        &model,
        "tokenizer_config.json",
        &serde_json::json!({ "chat_template": "{{ raise_exception('roles must alternate') }}" })
            .to_string(),
    );
    let broken = tmp.path().join("broken");
    let mut args = vec![
        "finetune",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        broken.to_str().unwrap(),
    ];
    args.extend_from_slice(QUICK);
    usage_error(
        &ember(&args),
        &[
            "roles must alternate",
            "chat.jsonl:",
            "tokenizer_config.json",
        ],
    );
}

#[test]
fn bad_finetune_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base();
    let base = base.to_str().unwrap();
    let data = write(
        tmp.path(),
        "data.jsonl",
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"c\", \"completion\": \"  \"}\n",
    );
    let out_dir = tmp.path().join("out");
    let run = |extra: &[&str], data: &Path| {
        let mut args = vec![
            "finetune",
            "--model",
            base,
            "--data",
            data.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        ember(&args)
    };
    usage_error(&run(&[], &data), &["data.jsonl:2", "completion"]);
    let good = write(tmp.path(), "good.jsonl", "{\"text\": \"hello there\"}\n");
    usage_error(&run(&["--method", "loha"], &good), &["--method loha"]);
    usage_error(
        &run(&["--set", "peft.target_modules=[\"c_attn\"]"], &good),
        &["peft.target_modules", "c_attn"],
    );
    usage_error(&run(&["--set", "peft.r=0"], &good), &["peft.r"]);
    usage_error(
        &run(&["--set", "data.seq_len=100000"], &good),
        &["data.seq_len"],
    );
    let adapter = write(
        tmp.path(),
        "adapter_config.json",
        "{\"peft_type\": \"LOHA\"}",
    );
    usage_error(
        &run(&["--adapter-config", adapter.to_str().unwrap()], &good),
        &["peft_type = \"LOHA\""],
    );
    assert!(
        !out_dir.join("checkpoint").exists(),
        "a refused run left a checkpoint"
    );

    // Bottleneck adapters run in `logits`; commands that cannot run them say so.
    let mut quick = vec!["--method", "bottleneck"];
    quick.extend(QUICK.iter().filter(|a| **a != "--quiet"));
    ok(&run(&quick, &good));
    let logits = tmp.path().join("logits.safetensors");
    let out_s = out_dir.to_str().unwrap();
    ok(&ember(&[
        "logits",
        "--model",
        base,
        "--adapter",
        out_s,
        "--ids",
        "5,6",
        "--out",
        logits.to_str().unwrap(),
    ]));
    usage_error(
        &ember(&[
            "generate",
            "--model",
            base,
            "--adapter",
            out_s,
            "--prompt",
            "x",
        ]),
        &["--adapter", "bottleneck"],
    );
}
