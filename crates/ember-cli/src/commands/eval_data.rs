//! `ember eval`'s inputs: the examples of `--data` and the predictions of
//! `--predictions`, `.jsonl` files read with every error naming the file and line.

use std::path::Path;

use serde_json::Value;

use crate::error::CliError;

/// One line of --data.
pub struct Example {
    pub prompt: String,
    pub references: Vec<String>,
}

/// A usage error (exit 2).
pub fn usage(m: String) -> CliError {
    CliError::Usage(m)
}

/// A line of a `.jsonl` file: its number (from 1) and its object.
type JsonLine = (usize, serde_json::Map<String, Value>);

/// Reads `path`'s lines as JSON objects (blank lines skipped), naming file and line in
/// every error.
fn read_jsonl(flag: &str, path: &Path) -> Result<Vec<JsonLine>, CliError> {
    let text = ember_data::files::read_user_text(path).map_err(|e| CliError::from_data(flag, e))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{flag} {}:{}", path.display(), i + 1);
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => rows.push((i + 1, map)),
            Ok(_) => return Err(usage(format!("{}: expected a JSON object", at()))),
            Err(e) => return Err(usage(format!("{}: not JSON: {e}", at()))),
        }
    }
    if rows.is_empty() {
        return Err(usage(format!(
            "{flag} {}: holds no examples",
            path.display()
        )));
    }
    Ok(rows)
}

pub fn read_examples(path: &Path) -> Result<Vec<Example>, CliError> {
    read_jsonl("--data", path)?
        .into_iter()
        .map(|(line, map)| {
            let at = format!("--data {}:{line}", path.display());
            let prompt = match map.get("prompt") {
                Some(Value::String(s)) => s.clone(),
                Some(_) => return Err(usage(format!("{at}: `prompt` must be a string"))),
                None => return Err(usage(format!("{at}: no `prompt` key"))),
            };
            let references = match (map.get("reference"), map.get("references")) {
                (Some(Value::String(s)), None) => vec![s.clone()],
                (None, Some(Value::Array(list))) if !list.is_empty() => list
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| {
                            usage(format!("{at}: `references` must be a list of strings"))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                (None, Some(Value::Array(_))) => {
                    return Err(usage(format!("{at}: `references` is empty")));
                }
                (Some(_), Some(_)) => {
                    return Err(usage(format!(
                        "{at}: give `reference` or `references`, not both"
                    )));
                }
                (None, None) => {
                    return Err(usage(format!("{at}: no `reference` or `references` key")));
                }
                _ => {
                    return Err(usage(format!(
                        "{at}: `reference` must be a string and `references` a list of strings"
                    )));
                }
            };
            Ok(Example { prompt, references })
        })
        .collect()
}

pub fn read_predictions(path: &Path, expected: usize) -> Result<Vec<String>, CliError> {
    let rows = read_jsonl("--predictions", path)?;
    if rows.len() != expected {
        return Err(usage(format!(
            "--predictions {}: {} predictions for {expected} examples in --data; they pair up line by line",
            path.display(),
            rows.len()
        )));
    }
    rows.into_iter()
        .map(|(line, map)| match map.get("prediction") {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(usage(format!(
                "--predictions {}:{line}: needs a `prediction` string",
                path.display()
            ))),
        })
        .collect()
}
