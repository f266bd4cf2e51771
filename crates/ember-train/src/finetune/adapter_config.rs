//! `--adapter-config FILE`: a `peft` `adapter_config.json` read as the `[peft]` section, so
//! a configuration made for `peft` trains the same adapter here.

use std::path::Path;

use serde_json::Value;

use crate::config::ConfigError;

/// The `[peft]` keys `path` (an `adapter_config.json`, or a directory holding one) sets.
/// Settings Ember cannot train yet are refused by key rather than ignored.
pub fn peft_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let file = if path.is_dir() {
        path.join("adapter_config.json")
    } else {
        path.to_path_buf()
    };
    let shown = file.display().to_string();
    let err = |msg: String| ConfigError(format!("--adapter-config {shown}: {msg}"));
    let text = ember_data::files::read_regular_text(&file).map_err(|e| err(e.to_string()))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| err(format!("malformed JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(err("expected a JSON object".into()));
    };
    let mut table = toml::Table::new();
    let mut set = |key: &str, v: toml::Value| {
        table.insert(key.to_string(), v);
    };
    let number = |key: &str| -> Result<Option<f64>, ConfigError> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| err(format!("{key} = {v}: expected a number"))),
        }
    };
    let count = |key: &str| -> Result<Option<i64>, ConfigError> {
        match number(key)? {
            Some(x) if x >= 0.0 && x.fract() == 0.0 => Ok(Some(x as i64)),
            Some(x) => Err(err(format!("{key} = {x}: expected a whole number"))),
            None => Ok(None),
        }
    };
    let modules = |key: &str| -> Result<Option<toml::Value>, ConfigError> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s == "all-linear" => {
                Ok(Some(toml::Value::Array(vec![s.clone().into()])))
            }
            Some(Value::String(s)) => Err(err(format!(
                "{key} = {s:?}: a regular expression; Ember takes a list of module names or \"all-linear\""
            ))),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(|s| toml::Value::String(s.to_string()))
                        .ok_or_else(|| err(format!("{key}: {item} is not a module name")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| Some(toml::Value::Array(v))),
            Some(other) => Err(err(format!("{key} = {other}: expected a list of names"))),
        }
    };
    let peft_type = object
        .get("peft_type")
        .and_then(Value::as_str)
        .ok_or_else(|| err("peft_type: missing".into()))?;
    match peft_type {
        "LORA" => {
            for key in ["rank_pattern", "alpha_pattern"] {
                if object
                    .get(key)
                    .and_then(Value::as_object)
                    .is_some_and(|m| !m.is_empty())
                {
                    return Err(err(format!(
                        "{key}: per-module ranks are not supported by `ember finetune` yet"
                    )));
                }
            }
            for key in ["modules_to_save", "layers_to_transform"] {
                if object
                    .get(key)
                    .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
                {
                    return Err(err(format!("{key}: not supported by `ember finetune` yet")));
                }
            }
            let dora = object
                .get("use_dora")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            set("method", (if dora { "dora" } else { "lora" }).into());
            if let Some(r) = count("r")? {
                set("r", r.into());
            }
            if let Some(alpha) = number("lora_alpha")? {
                set("lora_alpha", alpha.into());
            }
            if let Some(dropout) = number("lora_dropout")? {
                set("lora_dropout", dropout.into());
            }
            if let Some(rs) = object.get("use_rslora").and_then(Value::as_bool) {
                set("use_rslora", rs.into());
            }
            if let Some(bias) = object.get("bias").and_then(Value::as_str) {
                set("bias", bias.into());
            }
            match object.get("init_lora_weights") {
                None | Some(Value::Bool(true)) => set("init", "kaiming".into()),
                Some(Value::String(s)) if s == "gaussian" => set("init", "gaussian".into()),
                Some(other) => {
                    return Err(err(format!(
                        "init_lora_weights = {other}: Ember initialises LoRA as peft's true (Kaiming-uniform) or \"gaussian\""
                    )));
                }
            }
            if let Some(targets) = modules("target_modules")? {
                set("target_modules", targets);
            }
        }
        "ADALORA" => {
            if object
                .get("rank_pattern")
                .is_some_and(|v| !v.is_null() && v.as_object().is_none_or(|m| !m.is_empty()))
            {
                return Err(err(
                    "rank_pattern: a pruned adapter; `ember finetune` starts AdaLoRA at init_r (load the adapter with --adapter)".into(),
                ));
            }
            set("method", "adalora".into());
            for key in ["init_r", "target_r", "tinit", "tfinal"] {
                if let Some(v) = count(key)? {
                    set(key, v.into());
                }
            }
            if let Some(v) = count("deltaT")? {
                set("delta_t", v.into());
            }
            for key in [
                "beta1",
                "beta2",
                "orth_reg_weight",
                "lora_alpha",
                "lora_dropout",
            ] {
                if let Some(v) = number(key)? {
                    set(key, v.into());
                }
            }
            if let Some(targets) = modules("target_modules")? {
                set("target_modules", targets);
            }
        }
        "IA3" => {
            set("method", "ia3".into());
            if let Some(targets) = modules("target_modules")? {
                set("target_modules", targets);
            }
            if let Some(ff) = modules("feedforward_modules")? {
                set("feedforward_modules", ff);
            }
        }
        "PREFIX_TUNING" | "PROMPT_TUNING" => {
            let prefix = peft_type == "PREFIX_TUNING";
            set("method", (if prefix { "prefix" } else { "prompt" }).into());
            if let Some(n) = count("num_virtual_tokens")? {
                set("num_virtual_tokens", n.into());
            }
            if prefix && object.get("prefix_projection").and_then(Value::as_bool) == Some(true) {
                return Err(err(
                    "prefix_projection = true: `ember finetune` trains prefixes directly (false); a trained projection's output loads with --adapter".into(),
                ));
            }
            if !prefix {
                match object.get("prompt_tuning_init").and_then(Value::as_str) {
                    None | Some("RANDOM") => set("prompt_init", "random".into()),
                    Some("SAMPLE_VOCAB") => set("prompt_init", "vocab".into()),
                    Some("TEXT") => {
                        set("prompt_init", "text".into());
                        let text = object
                            .get("prompt_tuning_init_text")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        set("prompt_init_text", text.into());
                    }
                    Some(other) => {
                        return Err(err(format!(
                            "prompt_tuning_init = {other:?}: expected \"RANDOM\", \"SAMPLE_VOCAB\" or \"TEXT\""
                        )));
                    }
                }
            }
        }
        other => {
            return Err(err(format!(
                "peft_type = {other:?}: `ember finetune` trains \"LORA\" (with use_dora and use_rslora), \"ADALORA\", \"IA3\", \"PREFIX_TUNING\" and \"PROMPT_TUNING\""
            )));
        }
    }
    Ok(table)
}
