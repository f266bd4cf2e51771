//! `peft` adapters (LoRA, rsLoRA, DoRA, AdaLoRA with a pruned rank pattern, IA³) in and
//! out, on the fixtures `tools/fixtures/make_peft_fixtures.py` and
//! `make_adalora_fixtures.py` made: Ember's logits with each adapter within 1e-4
//! (relative) of `peft`'s, the same greedy continuation, `peft`'s trainable-parameter
//! count; an adapter Ember writes reloads bit-identically and, where a Python with `peft`
//! is found, loads into `peft` with Ember's logits; bad adapters are refused by name.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Int, Tensor, TensorData};
use ember_hf::HfModel;
use ember_hf::peft::{
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, PromptAdapter, load_adapter, load_prompt_adapter,
    read_adalora_config, read_lora_config, save_adalora_adapter, save_ia3_adapter,
    save_lora_adapter, save_prompt_adapter,
};
use ember_infer::{Generator, Sampler, SamplingConfig};
use ember_nn::{ForwardOptions, Transformer};
use serde_json::Value;

type B = burn_flex::Flex;

const ADAPTERS: [&str; 5] = [
    "lora-qv-down",
    "rslora-all-linear",
    "dora-qkv-up",
    "ia3-kv-down",
    "adalora-qv-down",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft")
}

fn base() -> (HfModel, Transformer<B>) {
    let hf = HfModel::open(&fixtures().join("base")).unwrap();
    let model = hf.load_model::<B>(&Default::default()).unwrap();
    (hf, model)
}

fn expected(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(name).join("expected.json")).unwrap(),
    )
    .unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn logits(model: &Transformer<B>, prompt: &[u32]) -> Vec<f32> {
    let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids, [1, prompt.len()]),
        &Default::default(),
    );
    model
        .forward(input, ForwardOptions::default())
        .into_data()
        .to_vec()
        .unwrap()
}

/// `peft`'s recorded logits `[T, vocab]`, flattened.
fn peft_logits(want: &Value) -> Vec<f32> {
    want["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect()
}

fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let max = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / max
}

#[test]
fn peft_adapters_give_peft_logits_and_continuations() {
    for name in ADAPTERS {
        let (hf, model) = base();
        let base_logits = logits(&model, &ids(&expected(name)["prompt"]));
        let (model, report) = load_adapter(
            &fixtures().join(name),
            model,
            hf.arch(),
            &Default::default(),
        )
        .unwrap();
        let want = expected(name);
        let prompt = ids(&want["prompt"]);
        let want_logits = peft_logits(&want);
        let got = logits(&model, &prompt);
        let rel = relative_diff(&got, &want_logits);
        println!(
            "{name}: max |Δlogit| / max |logit| = {rel:.2e}, {} trainable",
            report.trainable
        );
        assert!(rel <= 1e-4, "{name}: logits differ by {rel:.2e} (relative)");
        // The adapter acts: without it the logits are far from peft's.
        assert!(
            relative_diff(&base_logits, &want_logits) > 1e-2,
            "{name}: the adapter changes nothing"
        );
        assert_eq!(
            report.trainable as u64,
            want["trainable_parameters"].as_u64().unwrap(),
            "{name}"
        );
        let greedy = ids(&want["greedy"]);
        let mut sampler = Sampler::new(SamplingConfig::greedy());
        let out = Generator::new(&model, &Default::default(), true)
            .generate(&prompt, greedy.len(), &mut sampler, |_| {})
            .unwrap();
        assert_eq!(out, greedy, "{name}: greedy continuation");
    }
}

/// `$EMBER_PYTHON`, `python3` or `/usr/bin/python3`, the first that imports `peft`.
fn python_with_peft() -> Option<String> {
    std::env::var("EMBER_PYTHON")
        .ok()
        .into_iter()
        .chain(["python3".to_string(), "/usr/bin/python3".to_string()])
        .find(|python| {
            Command::new(python)
                .args(["-c", "import peft, transformers, torch"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Runs `tools/fixtures/check_peft_adapter.py` on the adapter in `adapter` with Ember's
/// logits `rows` for `prompt` (written next to it); returns whether it passed, and what
/// it printed.
fn check_in_peft(
    python: &str,
    adapter: &Path,
    prompt: &[u32],
    rows: &[Vec<f32>],
) -> (bool, String) {
    let file = adapter.with_extension("logits.json");
    std::fs::write(&file, serde_json::to_string(rows).unwrap()).unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures/check_peft_adapter.py");
    let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
    let run = Command::new(python)
        .arg(&script)
        .arg(fixtures().join("base"))
        .arg(adapter)
        .args(["--logits", file.to_str().unwrap(), "--ids", &ids.join(",")])
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: Vec<&str> = printed
        .lines()
        .filter(|l| l.contains("peft vs Ember"))
        .collect();
    println!("{}: {}", adapter.display(), summary.join(" "));
    (run.status.success(), printed)
}

#[test]
fn adapters_ember_writes_reload_and_load_into_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let python = python_with_peft();
    for name in ADAPTERS {
        let (hf, model) = base();
        let (model, _) = load_adapter(
            &fixtures().join(name),
            model,
            hf.arch(),
            &Default::default(),
        )
        .unwrap();
        let out = tmp.path().join(name);
        if name.starts_with("ia3") {
            save_ia3_adapter(&out, &model, hf.arch()).unwrap();
        } else if name.starts_with("adalora") {
            let (config, _) =
                read_adalora_config(&fixtures().join(name), hf.arch(), model.config()).unwrap();
            save_adalora_adapter(&out, &model, &config, hf.arch()).unwrap();
        } else {
            let (config, _) = read_lora_config(&fixtures().join(name)).unwrap();
            save_lora_adapter(&out, &model, &config, hf.arch()).unwrap();
        }
        let (_, fresh) = base();
        let (reloaded, _) = load_adapter(&out, fresh, hf.arch(), &Default::default()).unwrap();
        let prompt = ids(&expected(name)["prompt"]);
        let want = logits(&model, &prompt);
        assert_eq!(logits(&reloaded, &prompt), want, "{name}: reloaded adapter");

        let Some(python) = &python else {
            println!(
                "note: skipping check_peft_adapter.py: no Python with peft (tried $EMBER_PYTHON, python3, /usr/bin/python3)"
            );
            continue;
        };
        let vocab = want.len() / prompt.len();
        let rows: Vec<Vec<f32>> = want.chunks(vocab).map(<[f32]>::to_vec).collect();
        let (ok, printed) = check_in_peft(python, &out, &prompt, &rows);
        assert!(
            ok,
            "{name}: peft does not reproduce Ember's logits:\n{printed}"
        );
        // A control: wrong logits must fail the script.
        let mut wrong = rows.clone();
        wrong[0][0] += 1.0;
        assert!(
            !check_in_peft(python, &out, &prompt, &wrong).0,
            "{name}: the check script accepted wrong logits"
        );
    }
}

/// Copies the fixture adapter `name` to a temporary directory, edited by `edit`.
fn edited(tmp: &Path, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let dir = tmp.join(format!("{name}-edited"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixtures().join(name).join(ADAPTER_WEIGHTS),
        dir.join(ADAPTER_WEIGHTS),
    )
    .unwrap();
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(name).join(ADAPTER_CONFIG)).unwrap(),
    )
    .unwrap();
    edit(&mut config);
    std::fs::write(dir.join(ADAPTER_CONFIG), config.to_string()).unwrap();
    dir
}

/// A change to an adapter's `adapter_config.json`.
type Edit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn bad_adapters_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|c: &mut Value| c["target_modules"] = serde_json::json!(["q_proj", "c_fc"])),
            "`c_fc` is not a module",
        ),
        (
            Box::new(|c: &mut Value| c["r"] = serde_json::json!(3)),
            "expected [3, 32] (r = 3)",
        ),
        (
            Box::new(|c: &mut Value| c["peft_type"] = serde_json::json!("PREFIX_TUNING")),
            "Ember reads \"LORA\"",
        ),
        (
            Box::new(|c: &mut Value| c["target_modules"] = serde_json::json!(["q_proj", "v_proj"])),
            "belongs to no adapted module",
        ),
        (
            Box::new(|c: &mut Value| c["target_modules"] = serde_json::json!(".*proj")),
            "regular expression",
        ),
        (
            Box::new(|c: &mut Value| c["use_dora"] = serde_json::json!(true)),
            "lora_magnitude_vector` is missing",
        ),
        (
            Box::new(|c: &mut Value| c["lora_alpha"] = serde_json::json!("eight")),
            "lora_alpha",
        ),
    ];
    for (i, (edit, message)) in cases.into_iter().enumerate() {
        let dir = edited(&tmp.path().join(i.to_string()), "lora-qv-down", edit);
        let (hf, model) = base();
        let err = load_adapter(&dir, model, hf.arch(), &Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(message), "case {i}: {err}");
        assert!(
            err.contains(&dir.display().to_string()),
            "case {i}: the file is named: {err}"
        );
    }
}

const PROMPT_ADAPTERS: [&str; 3] = ["prefix-5", "prefix-projection-3", "prompt-4"];

fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |best, (i, &x)| if x > best.1 { (i, x) } else { best },
        )
        .0 as u32
}

fn prompt_logits(adapter: &PromptAdapter<B>, model: &Transformer<B>, prompt: &[u32]) -> Vec<f32> {
    let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids, [1, prompt.len()]),
        &Default::default(),
    );
    adapter.forward(model, input).into_data().to_vec().unwrap()
}

/// Prefix tuning (plain, and saved from peft's reparameterisation MLP) and prompt
/// tuning: the real tokens' logits within 1e-4 of peft's, the same 16-token greedy
/// continuation (by repeated full passes: the generator does not take prompt adapters
/// yet), peft's trainable counts; Ember's writes reload bit-identically and load into
/// peft with Ember's logits.
#[test]
fn prefix_and_prompt_tuning_give_peft_logits_and_continuations() {
    let tmp = tempfile::tempdir().unwrap();
    let python = python_with_peft();
    for name in PROMPT_ADAPTERS {
        let (_, model) = base();
        let adapter =
            load_prompt_adapter::<B>(&fixtures().join(name), model.config(), &Default::default())
                .unwrap();
        let want = expected(name);
        let prompt = ids(&want["prompt"]);
        let want_logits = peft_logits(&want);
        let got = prompt_logits(&adapter, &model, &prompt);
        let rel = relative_diff(&got, &want_logits);
        println!(
            "{name}: max |Δlogit| / max |logit| = {rel:.2e}, {} trainable",
            adapter.num_params()
        );
        assert!(rel <= 1e-4, "{name}: logits differ by {rel:.2e} (relative)");
        assert!(
            relative_diff(&logits(&model, &prompt), &want_logits) > 1e-2,
            "{name}: the adapter changes nothing"
        );
        if name != "prefix-projection-3" {
            // peft counts its reparameterisation MLP too, which it saves as its output.
            assert_eq!(
                adapter.num_params() as u64,
                want["trainable_parameters"].as_u64().unwrap(),
                "{name}"
            );
        }
        let mut tokens = prompt.clone();
        let vocab = model.config().vocab_size;
        for _ in 0..ids(&want["greedy"]).len() {
            let all = prompt_logits(&adapter, &model, &tokens);
            tokens.push(argmax(&all[all.len() - vocab..]));
        }
        assert_eq!(
            tokens[prompt.len()..],
            ids(&want["greedy"])[..],
            "{name}: greedy continuation"
        );

        let out = tmp.path().join(name);
        save_prompt_adapter(&out, &adapter, model.config()).unwrap();
        let reloaded = load_prompt_adapter::<B>(&out, model.config(), &Default::default()).unwrap();
        assert_eq!(
            prompt_logits(&reloaded, &model, &prompt),
            got,
            "{name}: reloaded adapter"
        );
        let Some(python) = &python else {
            println!("note: skipping check_peft_adapter.py: no Python with peft");
            continue;
        };
        let rows: Vec<Vec<f32>> = got.chunks(vocab).map(<[f32]>::to_vec).collect();
        let (ok, printed) = check_in_peft(python, &out, &prompt, &rows);
        assert!(
            ok,
            "{name}: peft does not reproduce Ember's logits:\n{printed}"
        );
    }
}

#[test]
fn prompt_adapters_for_another_model_are_refused_by_name() {
    let (_, model) = base();
    let mut other = model.config().clone();
    other.n_layers = 3;
    let err = load_prompt_adapter::<B>(&fixtures().join("prefix-5"), &other, &Default::default())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("num_layers = 2: this model needs 3"),
        "{err}"
    );
    let err = load_prompt_adapter::<B>(
        &fixtures().join("lora-qv-down"),
        model.config(),
        &Default::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("expected \"PREFIX_TUNING\" or \"PROMPT_TUNING\""),
        "{err}"
    );
}

/// Every adapter of `model` (all AdaLoRA here): `(path, rank)`.
fn adalora_ranks(model: &Transformer<B>) -> Vec<(String, usize)> {
    let mut model = model.clone();
    model
        .projections_mut()
        .into_iter()
        .filter_map(|(path, p)| {
            let a = p.adapter.as_ref()?;
            // An adapter without tensors: pruned to rank 0.
            Some((path, a.rank_scale.as_ref().map_or(0, |e| e.dims()[0])))
        })
        .collect()
}

/// AdaLoRA's rank pattern: read as Ember paths (a module pruned to rank 0 included), each
/// module built at its saved rank with `peft`'s `lora_alpha / (init_r + 1e-5)`; an adapter
/// trained at full rank in Ember is written with only the ranks its pattern keeps,
/// reloads with the same logits and (where a Python with peft is found) loads into peft;
/// patterns that do not fit are refused by name.
#[test]
fn adalora_rank_patterns_are_read_written_and_checked() {
    use burn::module::Param;
    use burn::tensor::Distribution;
    use burn::tensor::backend::Backend;
    use ember_peft::{Targets, apply_adalora};

    let device = Default::default();
    let dir = fixtures().join("adalora-qv-down");
    let (hf, model) = base();
    let (config, _) = read_adalora_config(&dir, hf.arch(), model.config()).unwrap();
    let pattern = config.rank_pattern.clone().unwrap();
    assert_eq!(pattern.len(), 6);
    assert_eq!(pattern["layers.1.attn.v_proj"], vec![false; 6]);
    assert_eq!((config.init_r, config.target_r, config.delta_t), (6, 3, 1));
    let (loaded, _) = load_adapter(&dir, model, hf.arch(), &device).unwrap();
    let ranks = adalora_ranks(&loaded);
    assert_eq!(ranks.len(), 6);
    for (path, rank) in &ranks {
        assert_eq!(
            *rank,
            pattern[path].iter().filter(|&&k| k).count(),
            "{path}"
        );
    }

    // Full rank in Ember, E masked by a pattern: saved at the kept ranks.
    let (_, model) = base();
    let mut trained = config.clone();
    trained.rank_pattern = None;
    trained.targets = Targets::Names(vec!["q_proj".into(), "down_proj".into()]);
    let (mut full, _) = apply_adalora(model, &trained, &device).unwrap();
    B::seed(&device, 7);
    let mut chosen = std::collections::BTreeMap::new();
    for (i, (path, p)) in full.projections_mut().into_iter().enumerate() {
        let Some(a) = p.adapter.as_mut() else {
            continue;
        };
        let keep: Vec<bool> = (0..6).map(|k| (k + i) % 3 != 0 && i != 13).collect();
        for slot in [&mut a.down, &mut a.up] {
            let old = slot.take().unwrap();
            let fresh = Tensor::random(old.dims(), Distribution::Normal(0.0, 0.2), &device);
            *slot = Some(Param::initialized(old.id, fresh));
        }
        let old = a.rank_scale.take().unwrap();
        let e: Vec<f32> = Tensor::<B, 1>::random([6], Distribution::Normal(0.0, 0.4), &device)
            .into_data()
            .to_vec()
            .unwrap();
        let e: Vec<f32> = e
            .iter()
            .zip(&keep)
            .map(|(&x, &k)| if k { x } else { 0.0 })
            .collect();
        a.rank_scale = Some(Param::initialized(
            old.id,
            Tensor::from_data(TensorData::new(e, [6]), &device),
        ));
        chosen.insert(path, keep);
    }
    assert!(
        chosen.values().any(|k| k.iter().all(|&x| !x)),
        "a module pruned away"
    );
    trained.rank_pattern = Some(chosen.clone());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("adalora-full");
    save_adalora_adapter(&out, &full, &trained, hf.arch()).unwrap();
    let (_, fresh) = base();
    let (reloaded, report) = load_adapter(&out, fresh, hf.arch(), &device).unwrap();
    let kept: Vec<usize> = chosen
        .values()
        .map(|k| k.iter().filter(|&&x| x).count())
        .collect();
    let mut reloaded_ranks: Vec<(String, usize)> = adalora_ranks(&reloaded);
    reloaded_ranks.sort();
    assert_eq!(
        reloaded_ranks.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
        kept
    );
    assert_eq!(
        report.trainable,
        reloaded_ranks
            .iter()
            .map(|(p, r)| r * if p.ends_with("down_proj") {
                48 + 32 + 1
            } else {
                32 + 32 + 1
            })
            .sum::<usize>()
    );
    let prompt = ids(&expected("adalora-qv-down")["prompt"]);
    let want = logits(&full, &prompt);
    let rel = relative_diff(&logits(&reloaded, &prompt), &want);
    assert!(
        rel <= 1e-6,
        "saved at the kept ranks: logits differ by {rel:.2e}"
    );
    assert!(relative_diff(&logits(&base().1, &prompt), &want) > 1e-3);
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(ADAPTER_CONFIG)).unwrap()).unwrap();
    assert_eq!(
        saved["rank_pattern"]["model.layers.0.self_attn.q_proj.lora_E"],
        serde_json::json!(chosen["layers.0.attn.q_proj"])
    );
    if let Some(python) = python_with_peft() {
        let vocab = want.len() / prompt.len();
        let rows: Vec<Vec<f32>> = want.chunks(vocab).map(<[f32]>::to_vec).collect();
        let (ok, printed) = check_in_peft(&python, &out, &prompt, &rows);
        assert!(ok, "peft does not reproduce Ember's logits:\n{printed}");
    }

    let q = "model.layers.0.self_attn.q_proj.lora_E";
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(move |c: &mut Value| {
                c["rank_pattern"][q] = serde_json::json!([true, true, true, false, false, false])
            }),
            "has shape [2, 32], expected [3, 32]",
        ),
        (
            Box::new(|c: &mut Value| {
                c["rank_pattern"]["model.layers.0.self_attn.k_proj.lora_E"] =
                    serde_json::json!(vec![true; 6])
            }),
            "is not among the adapted target_modules",
        ),
        (
            Box::new(|c: &mut Value| {
                c["rank_pattern"]["model.layers.0.c_fc.lora_E"] = serde_json::json!(vec![true; 6])
            }),
            "names no projection",
        ),
        (
            Box::new(|c: &mut Value| c["init_r"] = serde_json::json!(4)),
            "peft.rank_pattern",
        ),
        (
            Box::new(|c: &mut Value| c["beta1"] = serde_json::json!(1.5)),
            "peft.beta1",
        ),
    ];
    for (i, (edit, message)) in cases.into_iter().enumerate() {
        let dir = edited(&tmp.path().join(i.to_string()), "adalora-qv-down", edit);
        let (hf, model) = base();
        let err = load_adapter(&dir, model, hf.arch(), &device)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(message), "case {i}: {err}");
    }
}
