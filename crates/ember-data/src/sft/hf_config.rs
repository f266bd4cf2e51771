//! Chat templates from a Hugging Face model directory: the `chat_template` of
//! `tokenizer_config.json` (or a sibling `chat_template.jinja`) with the special tokens
//! the template may print.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::DataError;
use crate::sft::chat_template::ChatTemplate;
use crate::sft::example::json_kind;

impl ChatTemplate {
    /// The `chat_template` of a Hugging Face `tokenizer_config.json` (a string, or a list
    /// of `{name, template}` where the one named "default" is used), with its
    /// `bos_token`/`eos_token` (a string or an AddedToken object `{"content": ...}`);
    /// `Ok(None)` when the file has no template. Also checks a sibling
    /// `chat_template.jinja` file (newer transformers) when the key is absent.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>, DataError> {
        let config_error = |message: String| DataError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = crate::files::read_user_text(path)?;
        let config: Json =
            serde_json::from_str(&text).map_err(|e| config_error(format!("invalid JSON: {e}")))?;
        let Json::Object(config) = config else {
            return Err(config_error("expected a JSON object".into()));
        };
        let bos_token = special_token(&config, "bos_token").map_err(config_error)?;
        let eos_token = special_token(&config, "eos_token").map_err(config_error)?;
        let key = format!("{}: chat_template", path.display());
        let (source, origin) = match config.get("chat_template") {
            None | Some(Json::Null) => {
                let sibling = path.with_file_name("chat_template.jinja");
                if std::fs::symlink_metadata(&sibling).is_err() {
                    return Ok(None);
                }
                let source = crate::files::read_user_text(&sibling)?;
                (source, sibling.display().to_string())
            }
            Some(Json::String(source)) => (source.clone(), key),
            Some(Json::Array(list)) => {
                let source = named_default(list).map_err(config_error)?;
                (source, format!("{key} \"default\""))
            }
            Some(other) => {
                return Err(config_error(format!(
                    "\"chat_template\" is {}; expected a string or a list of {{\"name\", \"template\"}}",
                    json_kind(other)
                )));
            }
        };
        Self::from_source(&source, &origin, bos_token, eos_token).map(Some)
    }
}

/// `bos_token`/`eos_token`: absent or null, a string, or an AddedToken `{"content": ...}`.
fn special_token(
    config: &serde_json::Map<String, Json>,
    key: &str,
) -> Result<Option<String>, String> {
    match config.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Object(token)) => match token.get("content") {
            Some(Json::String(s)) => Ok(Some(s.clone())),
            _ => Err(format!(
                "\"{key}\" is an object without a string \"content\"; expected a string or {{\"content\": ...}}"
            )),
        },
        Some(other) => Err(format!(
            "\"{key}\" is {}; expected a string or {{\"content\": ...}}",
            json_kind(other)
        )),
    }
}

/// The template named "default" of a `[{name, template}, ...]` list.
fn named_default(list: &[Json]) -> Result<String, String> {
    let mut names = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let name = entry.get("name").and_then(Json::as_str);
        let template = entry.get("template").and_then(Json::as_str);
        let (Some(name), Some(template)) = (name, template) else {
            return Err(format!(
                "\"chat_template\"[{i}] is not an object with string \"name\" and \"template\""
            ));
        };
        if name == "default" {
            return Ok(template.to_string());
        }
        names.push(format!("{name:?}"));
    }
    Err(format!(
        "\"chat_template\" has no template named \"default\" (it has {})",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    ))
}
