//! Hugging Face chat templates (Jinja), rendered with `minijinja` set up as transformers
//! sets up Jinja2: `trim_blocks` and `lstrip_blocks`, loop controls, Python string and dict
//! methods (`.strip()`, `.startswith()`, `.items()`, ... through `minijinja-contrib`),
//! `raise_exception(msg)` and transformers' `tojson`. `strftime_now` is not provided
//! (templates that use it test `strftime_now is defined` and fall back to a fixed date,
//! which also keeps training data deterministic).
//!
//! [`ChatTemplate::segments`] finds the text of each assistant turn by rendering prefixes
//! of the conversation, so the loss can be limited to what the model must generate.

use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind, Value, context};

use crate::error::DataError;
use crate::sft::example::{ASSISTANT, Message};

/// Name of the template inside its environment (it appears in minijinja's messages).
const NAME: &str = "template";
/// Instructions (and 64-byte units of output) one rendering may take: far above any real
/// conversation, low enough that a runaway template stops within seconds.
const FUEL: u64 = 200_000_000;
/// Ember's template for models without one: ChatML.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A compiled chat template with the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    origin: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    env: Arc<Environment<'static>>,
}

impl ChatTemplate {
    /// Ember's built-in template for models without one: ChatML
    /// (`<|im_start|>{role}\n{content}<|im_end|>\n` per message, and
    /// `<|im_start|>assistant\n` as the generation prompt).
    pub fn builtin() -> Self {
        Self::from_source(CHATML, "Ember's built-in ChatML template", None, None)
            .expect("the built-in template compiles")
    }

    /// A template from source text (`origin` names it in errors); fails when the source
    /// does not compile.
    pub fn from_source(
        source: &str,
        origin: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, DataError> {
        let fail = |e: Error| template_error(origin, &e);
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(fail)?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", super::tojson::tojson);
        env.add_template_owned(NAME, without_generation_tags(source))
            .map_err(fail)?;
        Ok(Self {
            source: source.to_string(),
            origin: origin.to_string(),
            bos_token,
            eos_token,
            env: Arc::new(env),
        })
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from, as errors name it.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The `bos_token` given to the template, when known.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The `eos_token` given to the template, when known.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The conversation rendered; `add_generation_prompt` as in transformers'
    /// `apply_chat_template`. Variables given to the template: `messages` (list of
    /// {role, content}), `add_generation_prompt`, `bos_token`, `eos_token` (empty string
    /// when unknown), and `tools` and `documents` as none (as transformers passes them).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, DataError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_deref().unwrap_or(""),
            eos_token => self.eos_token.as_deref().unwrap_or(""),
            tools => (),
            documents => (),
        };
        self.env
            .get_template(NAME)
            .and_then(|t| t.render(ctx))
            .map_err(|e| template_error(&self.origin, &e))
    }

    /// The rendered conversation cut into `(text, trained)` pieces whose concatenation is
    /// `render(messages, false)`: the text of each assistant turn (what the model must
    /// generate after the generation prompt, including the template's end-of-turn marker)
    /// is trained, everything else is not. Empty pieces are left out.
    ///
    /// For assistant message `i`, `P = render(messages[..i], true)` and
    /// `F = render(messages[..=i], false)`; `F` must start with `P`, and the trained piece
    /// is `F[P.len()..]`. Each `P` must start with the previous `F`, and the full rendering
    /// with the last `F`. A template that does not render prefixes consistently is an
    /// error naming the origin and the message index.
    pub fn segments(&self, messages: &[Message]) -> Result<Vec<(String, bool)>, DataError> {
        fn push(pieces: &mut Vec<(String, bool)>, text: &str, trained: bool) {
            if !text.is_empty() {
                pieces.push((text.to_string(), trained));
            }
        }
        let mut pieces = Vec::new();
        let mut covered = String::new();
        for (i, message) in messages.iter().enumerate() {
            if message.role != ASSISTANT {
                continue;
            }
            let prompt = self.render(&messages[..i], true)?;
            let full = self.render(&messages[..=i], false)?;
            let before = prompt.strip_prefix(covered.as_str()).ok_or_else(|| {
                self.inconsistent(
                    i,
                    "messages[..i] with the generation prompt",
                    &covered,
                    &prompt,
                )
            })?;
            let turn = full
                .strip_prefix(prompt.as_str())
                .ok_or_else(|| self.inconsistent(i, "messages[..=i]", &prompt, &full))?;
            push(&mut pieces, before, false);
            push(&mut pieces, turn, true);
            covered = full;
        }
        let all = self.render(messages, false)?;
        let rest = all.strip_prefix(covered.as_str()).ok_or_else(|| {
            let after = messages.iter().rposition(|m| m.role == ASSISTANT);
            let index = after.map_or(0, |i| i + 1);
            self.inconsistent(index, "the whole conversation", &covered, &all)
        })?;
        push(&mut pieces, rest, false);
        Ok(pieces)
    }

    /// The error for a rendering (`what`, at assistant message `index`) that does not
    /// start with the rendering before it (`prefix`).
    fn inconsistent(&self, index: usize, what: &str, prefix: &str, text: &str) -> DataError {
        let at = prefix
            .char_indices()
            .zip(text.chars())
            .find(|((_, a), b)| a != b)
            .map_or(prefix.len().min(text.len()), |((at, _), _)| at);
        let excerpt = |s: &str| {
            let end = (at + 40).min(s.len());
            let end = (end..=s.len())
                .find(|&e| s.is_char_boundary(e))
                .unwrap_or(s.len());
            format!("{:?}", &s[at..end])
        };
        DataError::Template {
            origin: self.origin.clone(),
            message: format!(
                "does not render prefixes of the conversation consistently (at message {index}): \
                 rendering {what} does not start with the rendering before it; they differ \
                 at byte {at}: {} versus {}. Assistant turns cannot be found for loss masking \
                 with this template",
                excerpt(prefix),
                excerpt(text)
            ),
        }
    }
}

/// `raise_exception(msg)`: fails the rendering with `msg`, as transformers' helper does.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// A minijinja failure as a [`DataError`] naming `origin`.
fn template_error(origin: &str, error: &Error) -> DataError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        message.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    DataError::Template {
        origin: origin.to_string(),
        message,
    }
}

/// transformers' `{% generation %}...{% endgeneration %}` marks assistant text for its own
/// masking; Ember finds that text by rendering prefixes, so the tags become a plain
/// `{% if true %}...{% endif %}` block (whitespace control markers kept).
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(end) = tag.find("%}") else {
            rest = tag;
            break;
        };
        let inner = &tag[2..end];
        let left = inner.strip_prefix(['-', '+']).map_or("", |_| &inner[..1]);
        let body = &inner[left.len()..];
        let right = body
            .strip_suffix(['-', '+'])
            .map_or("", |_| &body[body.len() - 1..]);
        let body = &body[..body.len() - right.len()];
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{left} if true {right}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{left} endif {right}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::without_generation_tags;

    #[test]
    fn generation_tags_become_plain_blocks_keeping_whitespace_control() {
        assert_eq!(
            without_generation_tags(
                "a{%- generation +%}b{%endgeneration-%}c{% if x %}{{ '%}' }}{% endif %}"
            ),
            "a{%- if true +%}b{% endif -%}c{% if x %}{{ '%}' }}{% endif %}"
        );
        assert_eq!(
            without_generation_tags("x {% generations %} {%"),
            "x {% generations %} {%"
        );
    }
}
