//! Reading training text: a text file, a directory of text files, or JSONL with a
//! `text` field on every line (or an `anchor` and a `positive`: pairs for a contrastive
//! objective).

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::error::{DataError, io};

/// The documents of every input, in order, with a fingerprint of their sources.
#[derive(Debug, Clone, PartialEq)]
pub struct Corpus {
    pub documents: Vec<String>,
    /// Every source was a `.jsonl` file of `{"anchor", "positive"}` pairs: documents
    /// `2i` and `2i + 1` are pair `i`'s anchor and positive (see [`crate::pairs`]).
    pub paired: bool,
    /// Changes whenever a source file's path, size or modification time changes.
    pub fingerprint: String,
}

impl Corpus {
    /// Reads every path: `.jsonl` files give one document per line (its `text` field),
    /// directories give one document per file (recursively, sorted, hidden files skipped),
    /// other files are one document each.
    pub fn read(paths: &[PathBuf]) -> Result<Self, DataError> {
        if paths.is_empty() {
            return Err(DataError::NoData);
        }
        let mut files = Vec::new();
        for path in paths {
            let meta = std::fs::metadata(path).map_err(io(path))?;
            if meta.is_dir() {
                let before = files.len();
                let mut visited = Vec::new();
                collect_files(path, &mut files, &mut visited)?;
                if files.len() == before {
                    return Err(DataError::EmptyDirectory { path: path.clone() });
                }
            } else if meta.is_file() {
                files.push(path.clone());
            } else {
                return Err(not_regular(path, &meta));
            }
        }
        let mut documents = Vec::new();
        let mut paired = true;
        let mut fingerprint = Fingerprint::default();
        for file in &files {
            let bytes = crate::files::read_regular(file).map_err(io(file))?;
            let meta = std::fs::metadata(file).map_err(io(file))?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            fingerprint.add(format!("{}\0{}\0{}", file.display(), bytes.len(), mtime).as_bytes());
            let text = as_text(file, bytes)?;
            if file.extension().is_some_and(|e| e == "jsonl") {
                let (docs, pairs) = read_jsonl(file, &text)?;
                documents.extend(docs);
                paired &= pairs;
            } else {
                documents.push(text);
                paired = false;
            }
        }
        Ok(Self {
            documents,
            paired,
            fingerprint: fingerprint.hex(),
        })
    }

    /// Every document joined by a newline: the stream a character model trains on.
    pub fn joined(&self) -> String {
        self.documents.join("\n")
    }
}

/// A special file (FIFO, device, socket) given as data.
fn not_regular(path: &Path, meta: &std::fs::Metadata) -> DataError {
    DataError::NotRegular {
        path: path.to_path_buf(),
        kind: crate::files::file_kind(meta),
    }
}

/// Regular files under `dir`, recursively and sorted. `visited` holds the directories
/// already walked (canonical paths), so a symlink loop is walked once.
fn collect_files(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    visited: &mut Vec<PathBuf>,
) -> Result<(), DataError> {
    let canonical = std::fs::canonicalize(dir).map_err(io(dir))?;
    if visited.contains(&canonical) {
        return Ok(());
    }
    visited.push(canonical);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()).map_err(io(dir)))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            collect_files(&path, out, visited)?;
        } else if meta.is_file() {
            out.push(path);
        } else {
            return Err(not_regular(&path, &meta));
        }
    }
    Ok(())
}

/// UTF-8 text without NUL bytes; anything else is reported as binary.
fn as_text(path: &Path, bytes: Vec<u8>) -> Result<String, DataError> {
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(DataError::Binary {
            path: path.to_path_buf(),
            reason: format!("NUL byte at offset {at}"),
        });
    }
    String::from_utf8(bytes).map_err(|e| DataError::Binary {
        path: path.to_path_buf(),
        reason: format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()),
    })
}

/// A `.jsonl` file's documents: one per line (its `text` field), or two per line for
/// a file of `{"anchor", "positive"}` pairs (`true`); the first line decides which, and
/// every other line must be of the same kind.
fn read_jsonl(path: &Path, text: &str) -> Result<(Vec<String>, bool), DataError> {
    let mut documents = Vec::new();
    let mut paired = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| DataError::Jsonl {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let string = |key: &str| match value.get(key) {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(err(format!("field `{key}` is not a string"))),
            None => Ok(None),
        };
        let is_pair =
            *paired.get_or_insert(value.get("text").is_none() && value.get("anchor").is_some());
        if is_pair {
            let anchor = string("anchor")?;
            let positive = string("positive")?;
            match (anchor, positive) {
                (Some(a), Some(p)) if a.trim().is_empty() || p.trim().is_empty() => {
                    return Err(err("an empty `anchor` or `positive`".into()));
                }
                (Some(a), Some(p)) => documents.extend([a, p]),
                _ => {
                    return Err(err(
                        "a file of pairs needs `anchor` and `positive` on every line".into(),
                    ));
                }
            }
        } else {
            match string("text")? {
                Some(s) => documents.push(s),
                None if value.get("anchor").is_some() => {
                    return Err(err(
                        "a pair (`anchor`) in a file of `text` documents; keep pairs in a file of their own".into(),
                    ));
                }
                None => return Err(err("no `text` field".into())),
            }
        }
    }
    if documents.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok((documents, paired == Some(true)))
}

/// FNV-1a over the sources' descriptions.
#[derive(Default)]
pub(crate) struct Fingerprint(u64, bool);

impl Fingerprint {
    pub(crate) fn add(&mut self, bytes: &[u8]) {
        if !self.1 {
            self.0 = 0xcbf2_9ce4_8422_2325;
            self.1 = true;
        }
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}
