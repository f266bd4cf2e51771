//! Reading and writing the files a user hands Ember, safely.
//!
//! - Reads accept regular files only: a FIFO would block `open` forever and a device such
//!   as `/dev/zero` never ends, so both are refused before anything is opened.
//! - Writes go through a temporary sibling that is flushed to disk and renamed into place,
//!   so a reader (or a crash) never sees a half-written file.

use std::io::{self, Write};
use std::path::Path;

use crate::error::{DataError, io as io_error};

/// What kind of file system object `meta` describes, in words.
pub fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Fails unless `path` (following symlinks) is a regular file.
pub fn ensure_regular(path: &Path) -> io::Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "is {}, not a regular file (only regular files are read)",
                file_kind(&meta)
            ),
        ));
    }
    Ok(meta)
}

/// The bytes of the regular file `path` (special files are refused, see the module docs).
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    ensure_regular(path)?;
    std::fs::read(path)
}

/// Largest text file (configuration, metadata, metrics) read whole: far above any real
/// one, far below what would exhaust memory.
pub const MAX_TEXT_BYTES: u64 = 1 << 30;

/// The UTF-8 text of the regular file `path` (at most [`MAX_TEXT_BYTES`]).
pub fn read_regular_text(path: &Path) -> io::Result<String> {
    let meta = ensure_regular(path)?;
    if meta.len() > MAX_TEXT_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "is {} bytes, more than a text file Ember reads ({MAX_TEXT_BYTES} bytes)",
                meta.len()
            ),
        ));
    }
    String::from_utf8(std::fs::read(path)?).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// The text of a file the user named, with the data pipeline's errors: a missing file is
/// [`DataError::NotFound`], a special file [`DataError::NotRegular`] (refused before it is
/// opened), bytes that are not UTF-8 [`DataError::Binary`].
pub fn read_user_text(path: &Path) -> Result<String, DataError> {
    let meta = std::fs::metadata(path).map_err(io_error(path))?;
    if !meta.is_file() {
        return Err(DataError::NotRegular {
            path: path.to_path_buf(),
            kind: file_kind(&meta),
        });
    }
    read_regular_text(path).map_err(|e| {
        if e.kind() == io::ErrorKind::InvalidData {
            DataError::Binary {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        } else {
            io_error(path)(e)
        }
    })
}

/// Writes `bytes` to `path` atomically: a temporary sibling `.NAME.tmp`, flushed to disk,
/// renamed over `path`, and the directory entry flushed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_parent(path);
    Ok(())
}

/// Flushes the directory holding `path`, so a rename into it survives a power loss.
/// Best effort: some file systems refuse to sync a directory.
pub fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = std::fs::File::open(parent) {
        let _ = dir.sync_all();
    }
}

/// Flushes every regular file directly inside `dir`, and `dir` itself.
pub fn sync_dir_contents(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_before_opening() {
        let dir = std::env::temp_dir().join(format!("ember-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc_mkfifo(c.as_ptr(), 0o600) }, 0);
        // Opening a FIFO for reading would block here; the check must refuse it first.
        let err = read_regular(&fifo).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        let err = read_regular(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let err = read_regular(&dir).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        write_atomic(&dir.join("a.txt"), b"hello").unwrap();
        assert_eq!(read_regular_text(&dir.join("a.txt")).unwrap(), "hello");
        assert!(!dir.join(".a.txt.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    unsafe extern "C" {
        #[link_name = "mkfifo"]
        fn libc_mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
    }
}
