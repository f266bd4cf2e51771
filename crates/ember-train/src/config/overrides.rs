//! Presets, TOML files merged over them and `section.key=value` overrides; optional keys
//! presets leave out.

use super::{ConfigError, PRESETS, TrainConfig};

pub(super) fn preset_table(name: &str) -> Result<toml::Table, ConfigError> {
    let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        ConfigError(format!(
            "--preset {name}: unknown preset (known: {})",
            names.join(", ")
        ))
    })?;
    let table: toml::Table = toml::from_str(text).expect("embedded presets are valid TOML");
    // Round-trip through the typed config so every defaulted key is present and can be
    // overridden by name.
    let config: TrainConfig = toml::Value::Table(table)
        .try_into()
        .expect("embedded presets are valid configs");
    match toml::Value::try_from(&config).expect("configs serialise") {
        toml::Value::Table(table) => Ok(table),
        _ => unreachable!("a struct serialises to a table"),
    }
}

/// Model keys whose default is "absent", so a preset may not list them; a file or
/// `--set` may add them.
const OPTIONAL_MODEL_KEYS: &[&str] = &[
    "rope_scaling",
    "sliding_window",
    "attn_softcap",
    "qkv_bias",
    "moe",
    "head_dim",
];

/// Keys of the other sections that presets leave out (each schedule's table, the
/// recipes' settings).
const OPTIONAL_KEYS: &[&str] = &[
    "optim.inverse_sqrt",
    "optim.wsd",
    "optim.one_cycle",
    "optim.cosine_restarts",
    "train.focal_alpha",
    "train.capture",
    "train.freeze",
    "train.unfreeze",
    "train.prune",
    "train.contrastive",
    "train.ddp_bucket_mb",
];

fn is_optional(path: &str) -> bool {
    path.strip_prefix("model.")
        .is_some_and(|key| OPTIONAL_MODEL_KEYS.contains(&key))
        || OPTIONAL_KEYS.contains(&path)
}

/// Merges `from` into `into`; every key must already exist in `into`.
pub(crate) fn merge(
    into: &mut toml::Table,
    from: toml::Table,
    prefix: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    for (key, value) in from {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => {
                merge(dst, src, &path, origin)?
            }
            (Some(dst), value) if !dst.is_table() => *dst = value,
            (Some(_), _) => {
                return Err(ConfigError(format!(
                    "{origin}: `{path}` is a section, not a value"
                )));
            }
            (None, value) if is_optional(&path) => {
                into.insert(key, value);
            }
            (None, _) => return Err(ConfigError(format!("{origin}: unknown key `{path}`"))),
        }
    }
    Ok(())
}

/// Applies one `section.key=value`; the value is read as TOML (`3`, `1e-3`, `true`,
/// `"text"`), falling back to a plain string.
pub(crate) fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), ConfigError> {
    let bad = |msg: &str| ConfigError(format!("--set {item}: {msg}"));
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| bad("expected section.key=value"))?;
    let (section, field) = key
        .trim()
        .split_once('.')
        .ok_or_else(|| bad("expected section.key=value"))?;
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let section_table = match table.get_mut(section) {
        Some(toml::Value::Table(t)) => t,
        _ => return Err(bad(&format!("unknown section `{section}`"))),
    };
    if !section_table.contains_key(field) && is_optional(&format!("{section}.{field}")) {
        section_table.insert(field.to_string(), value);
        return Ok(());
    }
    if !section_table.contains_key(field) {
        let mut known: Vec<&str> = section_table.keys().map(|k| k.as_str()).collect();
        known.sort_unstable();
        return Err(bad(&format!(
            "unknown key `{section}.{field}` (known: {})",
            known.join(", ")
        )));
    }
    let slot = section_table.get_mut(field).expect("checked above");
    // Let an integer stand where a float is expected (`optim.lr=1`).
    let value = match (&*slot, value) {
        (toml::Value::Float(_), toml::Value::Integer(i)) => toml::Value::Float(i as f64),
        (_, v) => v,
    };
    if slot.type_str() != value.type_str() {
        return Err(bad(&format!(
            "expected {} for `{section}.{field}`, got {}",
            slot.type_str(),
            value.type_str()
        )));
    }
    *slot = value;
    Ok(())
}
