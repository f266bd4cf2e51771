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
    /// Where each document starts in `tokens` (ascending, the first at 0); a document's
    /// separator (the newline between documents, BPE's end-of-text) is its last token.
    pub documents: Vec<usize>,
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
        let documents_path = dir.join("documents.bin");
        if let Some(cached) = Self::try_reuse(
            dir,
            [&meta_path, &tokens_path, &documents_path],
            &corpus.fingerprint,
            kind,
        ) {
            return Ok(cached);
        }
        let mut documents = Vec::with_capacity(corpus.documents.len());
        let (tokenizer, tokens) = match kind {
            TokenizerKind::Char => {
                let text = corpus.joined();
                let tokenizer = CharTokenizer::from_text(&text);
                let tokens = tokenizer.encode(&text)?;
                // One token per character; documents joined by one newline.
                let mut start = 0;
                for doc in &corpus.documents {
                    documents.push(start);
                    start += doc.chars().count() + 1;
                }
                (Tokenizer::Char(tokenizer), tokens)
            }
            TokenizerKind::Bpe { vocab_size } => {
                let tokenizer = BpeTokenizer::train(&corpus.documents, vocab_size)?;
                let eot = tokenizer.end_of_text();
                let mut tokens = Vec::new();
                for doc in &corpus.documents {
                    documents.push(tokens.len());
                    tokens.extend(tokenizer.encode(doc)?);
                    tokens.extend(eot);
                }
                (Tokenizer::Bpe(Box::new(tokenizer)), tokens)
            }
        };
        documents.retain(|&s| s < tokens.len().max(1));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        tokenizer.save(dir)?;
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        write_atomic(&tokens_path, &bytes)?;
        let starts: Vec<u8> = documents
            .iter()
            .flat_map(|&s| (s as u64).to_le_bytes())
            .collect();
        write_atomic(&documents_path, &starts)?;
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
            documents,
            reused: false,
            dir: dir.to_path_buf(),
        })
    }

    fn try_reuse(
        dir: &Path,
        [meta_path, tokens_path, documents_path]: [&Path; 3],
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
        // Document starts: ascending from 0, inside the stream (else rebuilt).
        let starts: Vec<usize> = crate::files::read_regular(documents_path)
            .ok()?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
            .collect();
        let ordered = starts.first() == Some(&0) && starts.windows(2).all(|w| w[0] < w[1]);
        if !ordered || starts.last().is_some_and(|&s| s >= tokens.len()) {
            return None;
        }
        Some(Self {
            tokenizer,
            tokens,
            documents: starts,
            reused: true,
            dir: dir.to_path_buf(),
        })
    }
}

/// Writes `bytes` to `path` atomically (see [`crate::files::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    crate::files::write_atomic(path, bytes).map_err(io(path))
}
