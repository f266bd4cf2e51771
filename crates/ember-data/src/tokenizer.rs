//! Character-level and byte-level BPE tokenizers, saved beside a checkpoint.
//!
//! - char: the sorted set of characters in the corpus (nanoGPT's `shakespeare_char`),
//!   saved as `char_vocab.json`;
//! - BPE: byte-level BPE trained with the `tokenizers` crate, saved as `tokenizer.json`.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

use crate::error::{DataError, io};

/// File name of a saved character vocabulary.
pub const CHAR_VOCAB_FILE: &str = "char_vocab.json";
/// File name of a saved Hugging Face tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The document separator BPE tokenizers reserve.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// One id per distinct character, in sorted order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
    ids: HashMap<char, u32>,
}

#[derive(Serialize, Deserialize)]
struct CharVocabFile {
    kind: String,
    chars: Vec<char>,
}

impl CharTokenizer {
    /// The vocabulary of every character in `text`, sorted.
    pub fn from_text(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::from_chars(chars)
    }

    fn from_chars(chars: Vec<char>) -> Self {
        let ids = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u32))
            .collect();
        Self { chars, ids }
    }

    pub fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        text.char_indices()
            .map(|(offset, ch)| {
                self.ids
                    .get(&ch)
                    .copied()
                    .ok_or(DataError::UnknownChar { ch, offset })
            })
            .collect()
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        ids.iter()
            .map(|&id| {
                self.chars
                    .get(id as usize)
                    .copied()
                    .ok_or(DataError::UnknownToken {
                        id,
                        vocab_size: self.chars.len(),
                    })
            })
            .collect()
    }
}

/// Byte-level BPE through the `tokenizers` crate.
#[derive(Debug, Clone)]
pub struct BpeTokenizer {
    inner: tokenizers::Tokenizer,
}

impl BpeTokenizer {
    /// Trains a byte-level BPE vocabulary of at most `vocab_size` entries on `documents`.
    pub fn train(documents: &[String], vocab_size: usize) -> Result<Self, DataError> {
        let run = |e: tokenizers::Error| DataError::TokenizerRun(e.to_string());
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(0)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .build();
        let mut tokenizer =
            TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
                .with_model(BPE::default())
                .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
                .with_post_processor(Some(ByteLevel::new(false, true, true)))
                .with_decoder(Some(ByteLevel::new(false, true, true)))
                .build()
                .map_err(run)?;
        tokenizer
            .train(&mut trainer, documents.iter())
            .map_err(run)?;
        Ok(Self {
            inner: tokenizers::Tokenizer::from(tokenizer),
        })
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let bytes = crate::files::read_regular(path).map_err(io(path))?;
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| DataError::Tokenizer {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self { inner })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        self.encode_with(text, false)
    }

    /// Encodes `text`; with `add_special_tokens` the tokenizer's post-processor adds its
    /// markers (e.g. Llama's `<s>`), as Python's `Tokenizer.encode` does by default.
    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, DataError> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| DataError::TokenizerRun(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Parses a Hugging Face `tokenizer.json` document (`source` names it in errors).
    pub fn from_json(json: &str, source: &Path) -> Result<Self, DataError> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| DataError::Tokenizer {
                path: source.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self { inner })
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        self.decode_with(ids, false)
    }

    /// Decodes `ids`; with `skip_special_tokens` special tokens (such as `<s>`) are left
    /// out, as Python's `Tokenizer.decode` does by default.
    pub fn decode_with(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, DataError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size()) {
            return Err(DataError::UnknownToken {
                id,
                vocab_size: self.vocab_size(),
            });
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| DataError::TokenizerRun(e.to_string()))
    }

    /// The id of `token`, when the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary's entry for `id` as stored (byte-level tokens in their printable
    /// alphabet, such as `Ġthe`), when the vocabulary has it.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of the `<|endoftext|>` separator, when the vocabulary has one.
    pub fn end_of_text(&self) -> Option<u32> {
        self.inner.token_to_id(END_OF_TEXT)
    }

    fn to_json(&self) -> Result<String, DataError> {
        self.inner
            .to_string(false)
            .map_err(|e| DataError::TokenizerRun(e.to_string()))
    }
}

/// Either tokenizer, behind one interface.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    Char(CharTokenizer),
    Bpe(Box<BpeTokenizer>),
}

impl Tokenizer {
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char(t) => t.vocab_size(),
            Tokenizer::Bpe(t) => t.vocab_size(),
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Char(t) => t.encode(text),
            Tokenizer::Bpe(t) => t.encode(text),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        match self {
            Tokenizer::Char(t) => t.decode(ids),
            Tokenizer::Bpe(t) => t.decode(ids),
        }
    }

    /// Whether `other` has as many entries and gives every id the same text, special
    /// tokens included (an id either cannot decode counts as a difference).
    pub fn same_vocabulary(&self, other: &Tokenizer) -> bool {
        let piece = |t: &Tokenizer, id: u32| match t {
            Tokenizer::Char(c) => c.decode(&[id]),
            Tokenizer::Bpe(b) => b.decode_with(&[id], false),
        };
        self.vocab_size() == other.vocab_size()
            && (0..self.vocab_size() as u32).all(|id| match (piece(self, id), piece(other, id)) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            })
    }

    /// Like [`Self::encode`], with the tokenizer's special markers added (Hugging Face
    /// tokenizers with a post-processor; character vocabularies have none).
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Char(t) => t.encode(text),
            Tokenizer::Bpe(t) => t.encode_with(text, true),
        }
    }

    /// The tokenizer as a Hugging Face `tokenizer.json` document. A character vocabulary
    /// becomes a `WordLevel` model over single characters (each character split off by
    /// the pre-tokenizer, pieces joined by the `Fuse` decoder), which encodes and decodes
    /// exactly as [`CharTokenizer`] does.
    pub fn to_hf_json(&self) -> Result<String, DataError> {
        match self {
            Tokenizer::Bpe(t) => t.to_json(),
            Tokenizer::Char(t) => {
                let vocab: serde_json::Map<String, serde_json::Value> = t
                    .chars
                    .iter()
                    .enumerate()
                    .map(|(id, ch)| (ch.to_string(), serde_json::json!(id)))
                    .collect();
                let doc = serde_json::json!({
                    "version": "1.0",
                    "truncation": null,
                    "padding": null,
                    "added_tokens": [],
                    "normalizer": null,
                    "pre_tokenizer": {
                        "type": "Split",
                        "pattern": {"Regex": "[\\s\\S]"},
                        "behavior": "Isolated",
                        "invert": false
                    },
                    "post_processor": null,
                    "decoder": {"type": "Fuse"},
                    "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
                });
                Ok(doc.to_string())
            }
        }
    }

    /// Writes the tokenizer into `dir` (`char_vocab.json` or `tokenizer.json`).
    pub fn save(&self, dir: &Path) -> Result<(), DataError> {
        let (name, contents) = match self {
            Tokenizer::Char(t) => (
                CHAR_VOCAB_FILE,
                serde_json::to_string(&CharVocabFile {
                    kind: "char".into(),
                    chars: t.chars.clone(),
                })
                .expect("a char list serialises"),
            ),
            Tokenizer::Bpe(t) => (TOKENIZER_FILE, t.to_json()?),
        };
        let path = dir.join(name);
        crate::files::write_atomic(&path, contents.as_bytes()).map_err(io(&path))
    }

    /// Reads the tokenizer saved in `dir` by [`Tokenizer::save`] (or a Hugging Face
    /// `tokenizer.json`).
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        let char_path = dir.join(CHAR_VOCAB_FILE);
        if char_path.exists() {
            let bytes = crate::files::read_regular(&char_path).map_err(io(&char_path))?;
            let file: CharVocabFile =
                serde_json::from_slice(&bytes).map_err(|e| DataError::Tokenizer {
                    path: char_path.clone(),
                    message: e.to_string(),
                })?;
            if file.kind != "char" || file.chars.is_empty() {
                return Err(DataError::Tokenizer {
                    path: char_path,
                    message: "expected a non-empty character vocabulary".into(),
                });
            }
            return Ok(Tokenizer::Char(CharTokenizer::from_chars(file.chars)));
        }
        let path = dir.join(TOKENIZER_FILE);
        if !path.exists() {
            return Err(DataError::NotFound {
                path: dir.join(format!("{CHAR_VOCAB_FILE} or {TOKENIZER_FILE}")),
            });
        }
        Ok(Tokenizer::Bpe(Box::new(BpeTokenizer::load(&path)?)))
    }
}
