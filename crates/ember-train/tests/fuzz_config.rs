//! Bounded, deterministic fuzzing of the training configuration reader:
//! [`TrainConfig::resolve`] over mutated preset TOML files and `--set section.key=value`
//! overrides. Any panic fails the test and prints the input; an accepted configuration
//! must validate, serialise ([`TrainConfig::to_toml`]) and read back the same.
//!
//! Environment: `EMBER_FUZZ_SEED` (default fixed), `EMBER_FUZZ_ITERS` (multiplies the
//! iteration count, default 1), `EMBER_FUZZ_SECS` (time budget, default 8).

use std::path::{Path, PathBuf};

use ember_train::{PRESETS, TrainConfig};

#[path = "../../../tools/testing/fuzz_harness.rs"]
mod fuzz_harness;
use fuzz_harness::{Rng, fuzz_loop, no_panic};

/// One call of [`TrainConfig::resolve`].
#[derive(Debug)]
struct Input {
    preset: Option<String>,
    /// The `--config` file's bytes.
    file: Option<Vec<u8>>,
    overrides: Vec<String>,
}

impl Input {
    fn describe(&self) -> String {
        let file = match &self.file {
            Some(bytes) => format!(
                "--config file ({} bytes):\n{}",
                bytes.len(),
                bytes.escape_ascii()
            ),
            None => "no --config file".into(),
        };
        format!(
            "--preset {:?}\n--set {:?}\n{file}",
            self.preset, self.overrides
        )
    }
}

fn work_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("ember-train-fuzz-config")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Resolves `input` (writing its file to `path`) and checks an accepted configuration.
fn exercise(input: &Input, path: &Path) -> bool {
    if let Some(bytes) = &input.file {
        std::fs::write(path, bytes).unwrap();
    }
    let file = input.file.as_ref().map(|_| path);
    let resolved = TrainConfig::resolve(input.preset.as_deref(), file, &input.overrides);
    let config = match resolved {
        Ok(config) => config,
        Err(e) => {
            assert!(!e.0.is_empty());
            return false;
        }
    };
    config.validate().expect("a resolved config validates");
    config
        .tokenizer_kind()
        .expect("a resolved config has a tokenizer");
    let _ = config.model.num_params();
    let _ = config.model.head_dim();
    // A checkpoint stores `to_toml`; reading it back must give the same configuration.
    let text = config.to_toml();
    let again_path = path.with_extension("again.toml");
    std::fs::write(&again_path, &text).unwrap();
    let again = TrainConfig::resolve(None, Some(&again_path), &[])
        .unwrap_or_else(|e| panic!("to_toml's output does not read back: {e}\n{text}"));
    assert_eq!(again.to_toml(), text, "to_toml does not round-trip");
    true
}

fn toml_values() -> Vec<toml::Value> {
    use toml::Value as V;
    let mut table = toml::Table::new();
    table.insert("factor".into(), V::Float(4.0));
    let mut moe = toml::Table::new();
    moe.insert("n_experts".into(), V::Integer(4));
    moe.insert("top_k".into(), V::Integer(9));
    let mut rope = toml::Table::new();
    rope.insert("type".into(), V::String("dynamic_ntk".into()));
    rope.insert("factor".into(), V::Float(1e300));
    rope.insert("original_max_seq".into(), V::Integer(i64::MAX));
    let mut yarn = toml::Table::new();
    yarn.insert("type".into(), V::String("yarn".into()));
    yarn.insert("factor".into(), V::Float(f64::INFINITY));
    yarn.insert("original_max_seq".into(), V::Integer(0));
    let mut values = vec![
        V::Integer(0),
        V::Integer(1),
        V::Integer(2),
        V::Integer(3),
        V::Integer(7),
        V::Integer(64),
        V::Integer(-1),
        V::Integer(i64::MIN),
        V::Integer(i64::MAX),
        V::Integer(1 << 32),
        V::Integer(1 << 40),
        V::Integer(1 << 53),
        V::Integer(1 << 62),
        V::Float(0.0),
        V::Float(-0.0),
        V::Float(0.5),
        V::Float(1.0),
        V::Float(-1.0),
        V::Float(1e-300),
        V::Float(5e-324),
        V::Float(1e300),
        V::Float(f64::MAX),
        V::Float(f64::NAN),
        V::Float(f64::INFINITY),
        V::Float(f64::NEG_INFINITY),
        V::Float(3.5e38),
        V::Boolean(true),
        V::Boolean(false),
        V::Array(vec![]),
        V::Array(vec![V::Integer(1), V::String("x".into())]),
        V::Table(toml::Table::new()),
        V::Table(table),
        V::Table(moe),
        V::Table(rope),
        V::Table(yarn),
        V::Datetime("1979-05-27T07:32:00Z".parse().unwrap()),
    ];
    for s in [
        "",
        "char",
        "bpe",
        "f32",
        "bf16",
        "f16",
        "rmsnorm",
        "layernorm",
        "groupnorm",
        "pre",
        "post",
        "sandwich",
        "gelu",
        "gelutanh",
        "swiglu",
        "geglu",
        "rope",
        "learned",
        "alibi",
        "sinusoidal",
        "none",
        "gpt2",
        "normal",
        "xavier",
        "kaiming",
        "rotate_half",
        "interleaved",
        "linear",
        "yarn",
        "\u{0}",
        "\u{1F600}",
        "\n",
    ] {
        values.push(V::String(s.into()));
    }
    values
}

/// TOML literals for `--set` values, including ones TOML rejects (read as strings).
const LITERALS: &[&str] = &[
    "0",
    "1",
    "-1",
    "3",
    "1e-3",
    "1e400",
    "-1e400",
    "nan",
    "inf",
    "-inf",
    "+nan",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "0x7fffffffffffffff",
    "0b1",
    "1_000",
    "true",
    "false",
    "\"bpe\"",
    "\"char\"",
    "\"bf16\"",
    "\"f32\"",
    "rope",
    "'",
    "\"",
    "\"\"\"",
    "",
    " ",
    "=",
    "[]",
    "[1, 2]",
    "{}",
    "{ factor = 2.0 }",
    "{ type = \"linear\", factor = 2.0 }",
    "{ type = \"dynamic_ntk\", factor = 1e308, original_max_seq = 1 }",
    "{ n_experts = 4, top_k = 2 }",
    "{ n_experts = 9223372036854775807, top_k = 1 }",
    "1979-05-27",
    "1\n[model]\nd_model = 0",
    "1\nv = 2",
    "\u{1F600}",
];

/// Every `section.key` of a preset (after its defaults are filled in), and the optional
/// model keys a file or `--set` may add.
fn all_keys() -> Vec<(String, String)> {
    let text = TrainConfig::preset("tiny").unwrap().to_toml();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let mut keys = Vec::new();
    for (section, value) in &table {
        if let toml::Value::Table(t) = value {
            for key in t.keys() {
                keys.push((section.clone(), key.clone()));
            }
        }
    }
    for key in [
        "rope_scaling",
        "sliding_window",
        "attn_softcap",
        "qkv_bias",
        "moe",
    ] {
        keys.push(("model".into(), key.into()));
    }
    keys.push(("model".into(), "no_such_key".into()));
    keys.push(("nope".into(), "x".into()));
    keys
}

/// A value from `values`, most often of the same TOML type as `current` (so that more
/// inputs get past the type checks to the value checks behind them).
fn value_for(rng: &mut Rng, values: &[toml::Value], current: Option<&toml::Value>) -> toml::Value {
    if let Some(current) = current
        && rng.chance(70)
    {
        let same: Vec<&toml::Value> = values
            .iter()
            .filter(|v| v.type_str() == current.type_str())
            .collect();
        if !same.is_empty() {
            return (*rng.pick(&same)).clone();
        }
    }
    rng.pick(values).clone()
}

/// Applies one structural mutation to a parsed configuration table.
fn mutate_table(
    rng: &mut Rng,
    table: &mut toml::Table,
    keys: &[(String, String)],
    values: &[toml::Value],
) {
    let (section, key) = rng.pick(keys).clone();
    match rng.below(7) {
        0..=3 => {
            let current = table.get(&section).and_then(|t| t.get(&key));
            let value = value_for(rng, values, current);
            match table.get_mut(&section) {
                Some(toml::Value::Table(t)) => {
                    t.insert(key, value);
                }
                _ => {
                    table.insert(section, value);
                }
            }
        }
        4 => {
            if let Some(toml::Value::Table(t)) = table.get_mut(&section) {
                t.remove(&key);
            }
        }
        5 => {
            // A whole section replaced or removed.
            if rng.chance(50) {
                table.remove(&section);
            } else {
                table.insert(section, rng.pick(values).clone());
            }
        }
        _ => {
            // Inside an optional table (`model.moe`, `model.rope_scaling`).
            let inner = rng.pick(&["moe", "rope_scaling"]).to_string();
            let field = rng
                .pick(&[
                    "n_experts",
                    "top_k",
                    "capacity_factor",
                    "aux_loss_coef",
                    "renormalize",
                    "type",
                    "factor",
                    "original_max_seq",
                    "low_freq_factor",
                    "high_freq_factor",
                    "beta_fast",
                    "attention_factor",
                ])
                .to_string();
            if let Some(toml::Value::Table(model)) = table.get_mut("model") {
                let slot = model
                    .entry(inner)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(t) = slot {
                    let value = value_for(rng, values, t.get(&field));
                    t.insert(field, value);
                }
            }
        }
    }
}

/// Inserts, deletes or overwrites a few bytes of TOML text.
fn splice_text(rng: &mut Rng, text: &mut Vec<u8>) {
    const PIECES: &[&[u8]] = &[
        b"[",
        b"]",
        b"[[",
        b"{",
        b"}",
        b"=",
        b"\"",
        b"'''",
        b"\n",
        b"#",
        b".",
        b"\\u",
        b"\xff",
        b"\xc3",
        b"\0",
        b"nan",
        b"1e999",
        b"[model]\n",
        b"[model.moe]\n",
        b"a.b.c = 1\n",
    ];
    rng.splice(text, PIECES, b"[]{}=\"'#.,\n -+0123456789eE\xff\x00", 12);
}

fn random_override(rng: &mut Rng, keys: &[(String, String)], values: &[toml::Value]) -> String {
    let (section, key) = rng.pick(keys);
    // A TOML literal of a typical value, or one from the list of awkward ones.
    let typical;
    let value = if rng.chance(50) {
        typical = toml::Value::to_string(&value_for(rng, values, None));
        typical.as_str()
    } else {
        rng.pick(LITERALS)
    };
    match rng.below(10) {
        0 => value.to_string(),
        1 => format!("{section}{key}={value}"),
        2 => format!("{section}.{key}.extra={value}"),
        3 => format!(" {section} . {key} = {value} "),
        4 => format!("{section}.={value}"),
        5 => format!(".{key}={value}"),
        _ => format!("{section}.{key}={value}"),
    }
}

#[test]
fn harness_reports_panics() {
    let caught = no_panic(|| -> u8 { panic!("deliberate") });
    assert_eq!(caught, Err("deliberate".to_string()));
    let input = Input {
        preset: None,
        file: Some(b"\x00\xff[model]".to_vec()),
        overrides: vec!["a.b=1".into()],
    };
    let text = input.describe();
    assert!(
        text.contains(r"\x00\xff[model]") && text.contains("a.b=1"),
        "{text}"
    );
}

#[test]
fn presets_resolve() {
    let dir = work_dir("presets");
    for (name, _) in PRESETS {
        let input = Input {
            preset: Some(name.to_string()),
            file: None,
            overrides: vec![],
        };
        assert!(exercise(&input, &dir.join("config.toml")), "{name}");
    }
}

#[test]
fn toml_config_and_overrides_never_panic() {
    let dir = work_dir("fuzz");
    let path = dir.join("config.toml");
    let keys = all_keys();
    let values = toml_values();
    // Typical values per key come from the presets themselves.
    let typical: Vec<toml::Value> = PRESETS
        .iter()
        .flat_map(|(_, text)| {
            let table: toml::Table = toml::from_str(text).unwrap();
            table
                .into_iter()
                .filter_map(|(_, v)| v.as_table().cloned())
                .flat_map(|t| t.into_iter().map(|(_, v)| v))
                .collect::<Vec<_>>()
        })
        .collect();
    let presets: Vec<(String, toml::Table)> = PRESETS
        .iter()
        .map(|(name, text)| (name.to_string(), toml::from_str(text).unwrap()))
        .collect();
    let mut accepted = 0usize;
    let mut iterations = 0usize;
    fuzz_loop("train-config", 6_000, |rng, i| {
        iterations += 1;
        let (name, base) = rng.pick(&presets).clone();
        let preset = match rng.below(10) {
            0 => None,
            1 => Some(
                rng.pick(&["", "nope", "TINY", "tiny ", "tiny\0"])
                    .to_string(),
            ),
            _ => Some(name),
        };
        let file = if rng.chance(70) {
            let mut table = base;
            for _ in 0..rng.below(4) {
                mutate_table(rng, &mut table, &keys, &values);
            }
            let mut text = toml::to_string(&table).unwrap_or_default().into_bytes();
            if rng.chance(30) {
                for _ in 0..1 + rng.below(3) {
                    splice_text(rng, &mut text);
                }
            }
            Some(text)
        } else {
            None
        };
        let overrides = (0..rng.below(4))
            .map(|_| random_override(rng, &keys, &typical))
            .collect();
        let input = Input {
            preset,
            file,
            overrides,
        };
        match no_panic(|| exercise(&input, &path)) {
            Ok(ok) => accepted += usize::from(ok),
            Err(m) => panic!(
                "fuzz train-config, input {i}: TrainConfig::resolve panicked: {m}\n{}",
                input.describe()
            ),
        }
    });
    eprintln!("fuzz train-config: {accepted} of {iterations} inputs accepted");
    assert!(accepted > 0 && accepted < iterations);
    let _ = std::fs::remove_dir_all(&dir);
}
