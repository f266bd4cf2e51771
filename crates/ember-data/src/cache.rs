//! A corpus tokenized once into `tokens.bin` (little-endian `u32`) beside its tokenizer,
//! reused while the sources and the tokenizer settings are unchanged.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::corpus::Corpus;
use crate::error::{DataError, io};
use crate::tokenizer::{BpeTokenizer, CharTokenizer, Tokenizer};

/// Which tokenizer to build from a corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TokenizerKind {
    Char,
    Bpe { vocab_size: usize },
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct CacheMeta {
    fingerprint: String,
    tokenizer: TokenizerKind,
    n_tokens: usize,
}

/// The tokens of a corpus and the tokenizer that produced them.
#[derive(Debug, Clone)]
pub struct TokenCache {
    pub tokenizer: Tokenizer,
    pub tokens: Vec<u32>,
    /// `true` when the token file was reused rather than rebuilt.
    pub reused: bool,
    pub dir: PathBuf,
}

impl TokenCache {
    /// Reuses `dir`'s token file when it was built from the same sources with the same
    /// tokenizer settings; otherwise reads the corpus, builds the tokenizer, tokenizes and
    /// writes the cache (files first, metadata last, each through a temp file + rename).
    pub fn load_or_build(
        dir: &Path,
        paths: &[PathBuf],
        kind: TokenizerKind,
    ) -> Result<Self, DataError> {
        let corpus = Corpus::read(paths)?;
        let meta_path = dir.join("tokens.json");
        let tokens_path = dir.join("tokens.bin");
        if let Some(cached) =
            Self::try_reuse(dir, &meta_path, &tokens_path, &corpus.fingerprint, kind)
        {
            return Ok(cached);
        }
        let (tokenizer, tokens) = match kind {
            TokenizerKind::Char => {
                let text = corpus.joined();
                let tokenizer = CharTokenizer::from_text(&text);
                let tokens = tokenizer.encode(&text)?;
                (Tokenizer::Char(tokenizer), tokens)
            }
            TokenizerKind::Bpe { vocab_size } => {
                let tokenizer = BpeTokenizer::train(&corpus.documents, vocab_size)?;
                let eot = tokenizer.end_of_text();
                let mut tokens = Vec::new();
                for doc in &corpus.documents {
                    tokens.extend(tokenizer.encode(doc)?);
                    tokens.extend(eot);
                }
                (Tokenizer::Bpe(Box::new(tokenizer)), tokens)
            }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        tokenizer.save(dir)?;
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        write_atomic(&tokens_path, &bytes)?;
        let meta = CacheMeta {
            fingerprint: corpus.fingerprint,
            tokenizer: kind,
            n_tokens: tokens.len(),
        };
        write_atomic(
            &meta_path,
            serde_json::to_string_pretty(&meta).unwrap().as_bytes(),
        )?;
        Ok(Self {
            tokenizer,
            tokens,
            reused: false,
            dir: dir.to_path_buf(),
        })
    }

    fn try_reuse(
        dir: &Path,
        meta_path: &Path,
        tokens_path: &Path,
        fingerprint: &str,
        kind: TokenizerKind,
    ) -> Option<Self> {
        let meta: CacheMeta =
            serde_json::from_slice(&crate::files::read_regular(meta_path).ok()?).ok()?;
        if meta.fingerprint != fingerprint || meta.tokenizer != kind {
            return None;
        }
        let bytes = crate::files::read_regular(tokens_path).ok()?;
        if Some(bytes.len()) != meta.n_tokens.checked_mul(4) {
            return None;
        }
        let tokens: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let tokenizer = Tokenizer::load(dir).ok()?;
        // A damaged or foreign token file is rebuilt: every id must be one the tokenizer
        // can produce, or it would index past the model's embedding table.
        let vocab = tokenizer.vocab_size();
        if tokens.iter().any(|&t| t as usize >= vocab) {
            return None;
        }
        Some(Self {
            tokenizer,
            tokens,
            reused: true,
            dir: dir.to_path_buf(),
        })
    }
}

/// Writes `bytes` to `path` atomically (see [`crate::files::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    crate::files::write_atomic(path, bytes).map_err(io(path))
}
