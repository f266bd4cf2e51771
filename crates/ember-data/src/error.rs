//! Errors of the data pipeline; each names the file or input at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: no such file or directory")]
    NotFound { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: is {kind}; data must be regular text files or directories of them")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: the file is empty")]
    Empty { path: PathBuf },
    #[error("{path}: not a text file ({reason})")]
    Binary { path: PathBuf, reason: String },
    #[error("{path}:{line}: {message}")]
    Jsonl {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: contains no text files")]
    EmptyDirectory { path: PathBuf },
    #[error("no data given: pass --data PATH (a text file, a directory of text files, or .jsonl)")]
    NoData,
    #[error("character {ch:?} at offset {offset} is not in the tokenizer's vocabulary")]
    UnknownChar { ch: char, offset: usize },
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    UnknownToken { id: u32, vocab_size: usize },
    #[error("{path}: invalid tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    TokenizerRun(String),
    /// A fine-tuning data file without a single example.
    #[error(
        "{path}: no examples; each non-blank line must be a JSON object with \"prompt\" and \"completion\", \"messages\", or \"text\""
    )]
    NoExamples { path: PathBuf },
    /// A configuration file (such as `tokenizer_config.json`) with a key of the wrong shape.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// A chat template that does not compile or render; `origin` names where it came from
    /// (e.g. `/x/tokenizer_config.json: chat_template`).
    #[error("{origin}: {message}")]
    Template { origin: String, message: String },
    /// A fine-tuning example longer than a row while truncation is off.
    #[error(
        "the example from line {line} has {tokens} tokens, more than the {} a row of block size {block} holds; raise the block size or allow truncation",
        .block + 1
    )]
    ExampleTooLong {
        line: usize,
        tokens: usize,
        block: usize,
    },
    /// A block size of 0 given for packing.
    #[error("the block size must be at least 1")]
    ZeroBlock,
    #[error(
        "the corpus has {tokens} tokens; at least {needed} are needed for block size {block} in each split"
    )]
    TooSmall {
        tokens: usize,
        needed: usize,
        block: usize,
    },
    /// Too few `{"anchor", "positive"}` pairs for a batch of in-batch negatives and a
    /// held-out retrieval set.
    #[error(
        "{pairs} pairs: a contrastive run needs at least {train} for training (one batch) and {val} held out (data.val_fraction)"
    )]
    TooFewPairs {
        pairs: usize,
        train: usize,
        val: usize,
    },
    /// Contrastive training given documents rather than pairs.
    #[error(
        "train.objective = \"contrastive\" trains on pairs: give --data .jsonl files whose lines are {{\"anchor\": ..., \"positive\": ...}}"
    )]
    NotPairs,
}

impl DataError {
    /// Whether the user's input is at fault (a missing, special, empty or malformed data
    /// file, or too little of it), as opposed to a failure while reading or writing.
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            DataError::Io { .. } | DataError::TokenizerRun(_) | DataError::Tokenizer { .. }
        )
    }
}

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}
