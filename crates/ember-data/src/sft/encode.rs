//! Examples turned into token ids, each marked with whether the loss covers it.
//!
//! - prompt/completion: `[bos] + prompt` untrained, `completion + [eos]` trained;
//! - text: `[bos]` untrained, `text + [eos]` trained;
//! - messages: the chat template's [`segments`](ChatTemplate::segments), each encoded on
//!   its own and marked with its flag; no `bos`/`eos` is added (templates write their own,
//!   and special-token text such as `<|im_end|>` becomes the special token's id when the
//!   tokenizer has it as an added token).
//!
//! Every piece is encoded on its own, so the prompt's tokens are exactly those of the
//! prompt alone, as at generation time. A tokenizer that adds a prefix space to every
//! `encode` call (SentencePiece `Metaspace` with `prepend_scheme: first`) adds it to each
//! piece too.

use crate::error::DataError;
use crate::sft::chat_template::ChatTemplate;
use crate::sft::example::{Example, SourcedExample};
use crate::tokenizer::Tokenizer;

/// One example as token ids, and which of them the loss covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The token ids.
    pub tokens: Vec<u32>,
    /// `trained[i]`: token i is a target the loss covers.
    pub trained: Vec<bool>,
    /// Source line, for messages.
    pub line: usize,
}

impl Encoded {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Encodes examples with a tokenizer and a chat template.
pub struct Encoder<'a> {
    /// Encodes text (without the post-processor's special tokens); `None` for a model
    /// without one, which can only take `input_ids` examples.
    pub tokenizer: Option<&'a Tokenizer>,
    /// Renders `messages` examples.
    pub template: &'a ChatTemplate,
    /// Put before prompt/completion and text examples, untrained, when given.
    pub bos: Option<u32>,
    /// Put after prompt/completion and text examples, trained, when given.
    pub eos: Option<u32>,
}

impl Encoder<'_> {
    /// The tokens of `example` and which the loss covers. An example with fewer than two
    /// tokens, or no trained token after the first (the first is never a target), is an
    /// error naming `path:line`; so are template and vocabulary failures.
    pub fn encode(&self, example: &SourcedExample) -> Result<Encoded, DataError> {
        let mut out = Encoded {
            tokens: Vec::new(),
            trained: Vec::new(),
            line: example.line,
        };
        let in_context = |e: DataError| match e {
            DataError::Template { .. } | DataError::UnknownChar { .. } => {
                example.error(e.to_string())
            }
            other => other,
        };
        if let Example::Tokens(ids) = &example.example {
            if let Some(tokenizer) = self.tokenizer {
                let vocab = tokenizer.vocab_size();
                if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(example.error(format!(
                        "\"input_ids\" holds {id}, outside the vocabulary of {vocab}"
                    )));
                }
            }
            out.extend(ids.iter().copied(), true);
        } else {
            let tokenizer = self.tokenizer.ok_or_else(|| {
                example.error(
                    "is text, but the model has no tokenizer.json; give token ids as {\"input_ids\": [...]}",
                )
            })?;
            match &example.example {
                Example::PromptCompletion { prompt, completion } => {
                    out.extend(self.bos, false);
                    out.extend(tokenizer.encode(prompt).map_err(in_context)?, false);
                    out.extend(tokenizer.encode(completion).map_err(in_context)?, true);
                    out.extend(self.eos, true);
                }
                Example::Text(text) => {
                    out.extend(self.bos, false);
                    out.extend(tokenizer.encode(text).map_err(in_context)?, true);
                    out.extend(self.eos, true);
                }
                Example::Messages(messages) => {
                    for (piece, trained) in self.template.segments(messages).map_err(in_context)? {
                        out.extend(tokenizer.encode(&piece).map_err(in_context)?, trained);
                    }
                }
                Example::Tokens(_) => unreachable!("handled above"),
            }
        }
        if out.tokens.len() < 2 {
            return Err(example.error(format!(
                "encodes to {} token(s); an example needs at least 2 (an input and its target)",
                out.tokens.len()
            )));
        }
        if !out.trained[1..].iter().any(|&t| t) {
            return Err(example.error(
                "has no trained token: nothing of it is text the model learns to generate",
            ));
        }
        Ok(out)
    }
}

impl Encoded {
    /// Appends `ids`, each marked `trained`.
    fn extend(&mut self, ids: impl IntoIterator<Item = u32>, trained: bool) {
        for id in ids {
            self.tokens.push(id);
            self.trained.push(trained);
        }
    }
}
