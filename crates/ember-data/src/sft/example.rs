//! Fine-tuning examples read from JSONL, one JSON object a line, in one of three shapes:
//!
//! - `{"prompt": "...", "completion": "..."}`: the loss covers the completion only;
//! - `{"messages": [{"role": "...", "content": "..."}, ...]}`: a conversation rendered with
//!   a chat template, the loss on the assistant messages only;
//! - `{"text": "..."}`: the loss covers every token.
//!
//! Blank lines are skipped and keys outside these shapes ignored. Every mistake is
//! reported as `path:LINE: ...` naming the key at fault.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::DataError;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks: `system`, `user`, `assistant`, or whatever the chat template knows.
    pub role: String,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A message from `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The role whose messages the loss covers.
pub const ASSISTANT: &str = "assistant";

/// One fine-tuning example.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    /// `{"prompt": "...", "completion": "..."}`: loss on the completion only.
    PromptCompletion { prompt: String, completion: String },
    /// `{"messages": [{"role": "...", "content": "..."}, ...]}`: rendered with a chat
    /// template, loss on assistant messages only.
    Messages(Vec<Message>),
    /// `{"text": "..."}`: loss on every token.
    Text(String),
    /// `{"input_ids": [...]}`: token ids already encoded (no markers added), loss on every
    /// token after the first.
    Tokens(Vec<u32>),
}

/// One example with where it came from, `path:line`, for error messages.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedExample {
    /// The example.
    pub example: Example,
    /// Its line in the file (1-based).
    pub line: usize,
    /// The file it was read from.
    pub path: Arc<Path>,
}

impl SourcedExample {
    /// An error about this example: `path:line: message`.
    pub fn error(&self, message: impl Into<String>) -> DataError {
        DataError::Jsonl {
            path: self.path.to_path_buf(),
            line: self.line,
            message: message.into(),
        }
    }
}

/// Reads every example of the JSONL file `path` (a regular UTF-8 file; see the module
/// docs for the shapes). A file without any example is an error.
pub fn read_jsonl(path: &Path) -> Result<Vec<SourcedExample>, DataError> {
    let text = crate::files::read_user_text(path)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let shared: Arc<Path> = Arc::from(path);
    let mut examples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let example = parse_line(line).map_err(|message| DataError::Jsonl {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        })?;
        examples.push(SourcedExample {
            example,
            line: i + 1,
            path: Arc::clone(&shared),
        });
    }
    if examples.is_empty() {
        return Err(DataError::NoExamples {
            path: path.to_path_buf(),
        });
    }
    Ok(examples)
}

/// One line's example, or what is wrong with it.
fn parse_line(line: &str) -> Result<Example, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        let message = e.to_string();
        let message = message
            .rsplit_once(" at line ")
            .map_or(&*message, |(m, _)| m);
        format!("invalid JSON at column {}: {message}", e.column())
    })?;
    let Value::Object(object) = value else {
        return Err(format!(
            "{} is not an example; each line must be a JSON object with \"prompt\" and \"completion\", \"messages\", \"text\" or \"input_ids\"",
            json_kind(&value)
        ));
    };
    let has = |key: &str| object.contains_key(key);
    let shapes: Vec<&str> = [
        (has("prompt") || has("completion")).then_some("\"prompt\"/\"completion\""),
        has("messages").then_some("\"messages\""),
        has("text").then_some("\"text\""),
        has("input_ids").then_some("\"input_ids\""),
    ]
    .into_iter()
    .flatten()
    .collect();
    match shapes.as_slice() {
        [] => Err(
            "no \"prompt\"/\"completion\", \"messages\", \"text\" or \"input_ids\" key; each example has exactly one of these shapes"
                .into(),
        ),
        [_] if has("text") => {
            let text = string(&object, "text")?;
            not_blank("text", &text)?;
            Ok(Example::Text(text))
        }
        [_] if has("messages") => messages(&object).map(Example::Messages),
        [_] if has("input_ids") => token_ids(&object).map(Example::Tokens),
        [_] => {
            if !has("completion") {
                return Err("\"prompt\" without \"completion\"; the completion is what the model learns".into());
            }
            if !has("prompt") {
                return Err("\"completion\" without \"prompt\"; for text without a prompt use {\"text\": ...}".into());
            }
            let prompt = string(&object, "prompt")?;
            let completion = string(&object, "completion")?;
            not_blank("completion", &completion)?;
            Ok(Example::PromptCompletion { prompt, completion })
        }
        [first, second, ..] => Err(format!(
            "has both {first} and {second}; each example has exactly one of these shapes"
        )),
    }
}

/// The `input_ids` list: at least two token ids, each a whole number below 2³².
fn token_ids(object: &Map<String, Value>) -> Result<Vec<u32>, String> {
    let Value::Array(list) = &object["input_ids"] else {
        return Err(format!(
            "\"input_ids\" is {}; expected a list of token ids",
            json_kind(&object["input_ids"])
        ));
    };
    if list.len() < 2 {
        return Err(format!(
            "\"input_ids\" has {} id(s); an example needs at least 2 (an input and its target)",
            list.len()
        ));
    }
    list.iter()
        .enumerate()
        .map(|(j, v)| {
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("\"input_ids\"[{j}] = {v} is not a token id"))
        })
        .collect()
}

/// The `messages` list: each entry an object with string `role` and `content`, at least
/// one of them from the assistant.
fn messages(object: &Map<String, Value>) -> Result<Vec<Message>, String> {
    let list = match &object["messages"] {
        Value::Array(list) => list,
        other => {
            return Err(format!(
                "\"messages\" is {}; expected a list of {{\"role\", \"content\"}} objects",
                json_kind(other)
            ));
        }
    };
    if list.is_empty() {
        return Err("\"messages\" is empty; every example needs text to learn".into());
    }
    let mut out = Vec::with_capacity(list.len());
    for (j, entry) in list.iter().enumerate() {
        let Value::Object(message) = entry else {
            return Err(format!(
                "\"messages\"[{j}] is {}; expected an object with \"role\" and \"content\"",
                json_kind(entry)
            ));
        };
        let field = |key: &str| match message.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!(
                "\"messages\"[{j}].\"{key}\" is {}; expected a string",
                json_kind(other)
            )),
            None => Err(format!("\"messages\"[{j}] has no \"{key}\"")),
        };
        out.push(Message {
            role: field("role")?,
            content: field("content")?,
        });
    }
    if !out.iter().any(|m| m.role == ASSISTANT) {
        return Err(format!(
            "\"messages\" has no \"{ASSISTANT}\" message; the loss covers assistant messages only, so there is nothing to learn"
        ));
    }
    Ok(out)
}

/// The string under `key` (which is present).
fn string(object: &Map<String, Value>, key: &str) -> Result<String, String> {
    match &object[key] {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!(
            "\"{key}\" is {}; expected a string",
            json_kind(other)
        )),
    }
}

/// Fails when `text` is empty or whitespace only.
fn not_blank(key: &str, text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!(
            "\"{key}\" is empty; every example needs text to learn"
        ));
    }
    Ok(())
}

/// What a JSON value is, in words.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
