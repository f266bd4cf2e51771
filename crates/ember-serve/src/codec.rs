//! Text in and out of the served model: its tokenizer, chat template and stop tokens.

use std::sync::Arc;

use ember_data::Tokenizer;
use ember_data::sft::{ChatTemplate, Message};
use ember_model::ModelDir;

use crate::engine::Detokenize;

/// What turns requests into token ids and token ids into text.
pub struct Codec {
    tokenizer: Option<Tokenizer>,
    template: ChatTemplate,
    stop_tokens: Vec<u32>,
    vocab_size: usize,
    max_seq_len: usize,
}

impl Codec {
    pub fn new(
        tokenizer: Option<Tokenizer>,
        template: ChatTemplate,
        stop_tokens: Vec<u32>,
        vocab_size: usize,
        max_seq_len: usize,
    ) -> Self {
        Self {
            tokenizer,
            template,
            stop_tokens,
            vocab_size,
            max_seq_len,
        }
    }

    /// The tokenizer, chat template (`tokenizer_config.json`'s, else Ember's built-in
    /// ChatML) and end-of-sequence tokens of a model directory.
    pub fn of(dir: &ModelDir) -> Result<Self, String> {
        let config_dir = match dir {
            ModelDir::Hf(hf) => Some(&hf.dir),
            ModelDir::Quantized(q) => Some(&q.dir),
            ModelDir::Ember(_) => None,
        };
        let template = match config_dir.map(|d| d.join("tokenizer_config.json")) {
            Some(path) if path.exists() => {
                ChatTemplate::from_tokenizer_config(&path).map_err(|e| e.to_string())?
            }
            _ => None,
        }
        .unwrap_or_else(ChatTemplate::builtin);
        let config = dir.config();
        Ok(Self::new(
            dir.tokenizer().cloned(),
            template,
            dir.stop_tokens(),
            config.vocab_size,
            config.max_seq_len,
        ))
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Positions a sequence may hold, prompt and completion together.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// The model's end-of-sequence tokens.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    fn tokenizer(&self, what: &str) -> Result<&Tokenizer, String> {
        self.tokenizer.as_ref().ok_or_else(|| {
            format!("{what}: this model has no tokenizer; send the prompt as token ids")
        })
    }

    /// A completion prompt's ids, with the tokenizer's special markers (a Llama `<s>`).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, String> {
        let ids = self
            .tokenizer("prompt")?
            .encode_with_special(text)
            .map_err(|e| format!("prompt: {e}"))?;
        self.in_vocab("prompt", ids)
    }

    /// `ids`, unless the tokenizer produced one the model has no embedding for.
    fn in_vocab(&self, what: &str, ids: Vec<u32>) -> Result<Vec<u32>, String> {
        match ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            Some(id) => Err(format!(
                "{what}: the tokenizer gave token id {id}, outside the model's vocabulary of {}",
                self.vocab_size
            )),
            None => Ok(ids),
        }
    }

    /// A conversation rendered by the chat template with the generation prompt, then
    /// tokenized without adding markers (the template writes its own).
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>, String> {
        let tokenizer = self.tokenizer("messages")?;
        let text = self
            .template
            .render(messages, true)
            .map_err(|e| format!("messages: {e}"))?;
        let ids = tokenizer
            .encode(&text)
            .map_err(|e| format!("messages: {e}"))?;
        self.in_vocab("messages", ids)
    }

    /// The text of `ids`, special tokens left out, and ids past the tokenizer's
    /// vocabulary too (models pad their embedding tables beyond it; such ids have no
    /// text).
    pub fn decode(&self, ids: &[u32]) -> Option<String> {
        let tokenizer = self.tokenizer.as_ref()?;
        let known = tokenizer.vocab_size();
        let kept: Vec<u32>;
        let ids = if ids.iter().any(|&id| id as usize >= known) {
            kept = ids
                .iter()
                .copied()
                .filter(|&id| (id as usize) < known)
                .collect();
            &kept[..]
        } else {
            ids
        };
        match tokenizer {
            Tokenizer::Bpe(t) => t.decode_with(ids, true).ok(),
            t => t.decode(ids).ok(),
        }
    }

    /// One token's own text, for log-probability listings: its decoded text when that is
    /// whole characters, else its vocabulary entry (a byte-level piece of a character
    /// decodes to U+FFFD, which would not tell tokens apart), else `token_id:{id}`.
    pub fn token_text(&self, id: u32) -> String {
        let (text, entry) = match self.tokenizer.as_ref() {
            Some(Tokenizer::Bpe(t)) => (t.decode_with(&[id], false).ok(), t.id_to_token(id)),
            Some(t) => (t.decode(&[id]).ok(), None),
            None => (None, None),
        };
        text.filter(|t| !t.is_empty() && !t.contains('\u{fffd}'))
            .or(entry)
            .unwrap_or_else(|| format!("token_id:{id}"))
    }

    /// [`Self::decode`] as the engine calls it; without a tokenizer, no text.
    pub fn detokenize(self: &Arc<Self>) -> Detokenize {
        let codec = self.clone();
        Arc::new(move |ids: &[u32]| {
            if codec.tokenizer.is_none() {
                return Some(String::new());
            }
            codec.decode(ids)
        })
    }
}
