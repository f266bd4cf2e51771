//! Saving a checkpoint so that a complete one is under its name at every instant.
//!
//! 1. Everything is written into the sibling `.NAME.tmp`, the marker (with each file's
//!    size and CRC-32) last, and flushed to disk.
//! 2. `.NAME.tmp` and `NAME` swap places in one `renameat2(RENAME_EXCHANGE)`; where the
//!    file system lacks it, `NAME` is renamed to `.NAME.old` and the new one into place
//!    (a loader finding no `NAME` then falls back to either sibling, see [`super::read`]).
//! 3. The previous checkpoint is deleted only once the new one is in place.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use ember_data::files::{sync_dir_contents, sync_parent};
use ember_nn::Transformer;

use super::format::{CheckpointError, MARKER, Marker, error};

/// The weights file of a checkpoint.
pub const WEIGHTS: &str = "model.safetensors";

/// The siblings of checkpoint directory `dir`: `(.NAME.tmp, .NAME.old)`.
pub fn siblings(dir: &Path) -> (PathBuf, PathBuf) {
    let name = dir
        .file_name()
        .map_or("checkpoint".into(), |n| n.to_string_lossy().into_owned());
    let parent = dir.parent().unwrap_or(Path::new("."));
    (
        parent.join(format!(".{name}.tmp")),
        parent.join(format!(".{name}.old")),
    )
}

/// Writes `model`'s parameters into checkpoint directory `dir` as `model.safetensors`
/// (f32, burn-store's names with enum variants left out).
pub fn write_weights<B: Backend>(
    dir: &Path,
    model: &Transformer<B>,
) -> Result<(), CheckpointError> {
    let path = dir.join(WEIGHTS);
    model
        .save_into(&mut SafetensorsStore::from_file(&path).skip_enum_variants(true))
        .map_err(|e| error(&path, e))
}

/// Writes a complete checkpoint of step `step` to `dir` atomically (see the module
/// docs): `fill` writes every file but the marker into the directory it is given.
pub fn save(
    dir: &Path,
    step: usize,
    fill: impl FnOnce(&Path) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| error(parent, e))?;
    let (tmp, old) = siblings(dir);
    // When `dir` is missing (a crash between the two renames of the fallback path) or
    // damaged while a sibling is complete, that sibling is the only loadable copy: put
    // it back under the name before the siblings are reused (a damaged `dir` is kept
    // aside as `.NAME.damaged`).
    if Marker::verify(dir, false).is_err()
        && let Ok((found, _)) = super::read::locate(dir)
        && found != dir
    {
        if std::fs::symlink_metadata(dir).is_ok() {
            let damaged = dir.with_file_name(format!(
                ".{}.damaged",
                dir.file_name()
                    .map_or("checkpoint".into(), |n| n.to_string_lossy())
            ));
            remove(&damaged)?;
            std::fs::rename(dir, &damaged).map_err(|e| error(dir, e))?;
        }
        std::fs::rename(&found, dir).map_err(|e| error(dir, e))?;
        sync_parent(dir);
    }
    remove(&tmp)?;
    std::fs::create_dir_all(&tmp).map_err(|e| error(&tmp, e))?;
    fill(&tmp)?;
    fault_point("files", step);
    // The marker goes last: a directory without it is never taken for a checkpoint.
    let marker = Marker::describe(&tmp).map_err(|e| error(&tmp, e))?;
    let marker_path = tmp.join(MARKER);
    std::fs::write(&marker_path, marker.to_json()).map_err(|e| error(&marker_path, e))?;
    sync_dir_contents(&tmp).map_err(|e| error(&tmp, e))?;
    fault_point("marker", step);

    if !dir.exists() {
        std::fs::rename(&tmp, dir).map_err(|e| error(dir, e))?;
        sync_parent(dir);
        return Ok(());
    }
    // Crash tests take the fallback path with `EMBER_FAULT_NO_EXCHANGE` set.
    let exchanged = match std::env::var_os("EMBER_FAULT_NO_EXCHANGE") {
        Some(_) => Err(std::io::Error::from(std::io::ErrorKind::Unsupported)),
        None => exchange(&tmp, dir),
    };
    match exchanged {
        Ok(()) => {
            sync_parent(dir);
            fault_point("swap", step);
            // `tmp` now holds the previous checkpoint.
            remove(&tmp)?;
        }
        Err(_) => {
            remove(&old)?;
            std::fs::rename(dir, &old).map_err(|e| error(dir, e))?;
            fault_point("swap", step);
            std::fs::rename(&tmp, dir).map_err(|e| error(dir, e))?;
            sync_parent(dir);
            remove(&old)?;
        }
    }
    fault_point("cleanup", step);
    Ok(())
}

/// Removes `path` (a directory or a file) if it exists.
fn remove(path: &Path) -> Result<(), CheckpointError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).map_err(|e| error(path, e)),
        Ok(_) => std::fs::remove_file(path).map_err(|e| error(path, e)),
        Err(_) => Ok(()),
    }
}

/// Swaps `a` and `b` in one atomic rename (Linux `renameat2` with `RENAME_EXCHANGE`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths relative to the working directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Crash tests: `EMBER_FAULT_KILL_IN_SAVE=STAGE[@STEP]` kills the process with SIGKILL
/// when a save of step `STEP` (any step when left out) reaches `STAGE`: `files` (all
/// files written, no marker), `marker` (new checkpoint complete beside the old),
/// `swap` (mid-way through putting it in place), `cleanup` (the previous one deleted).
fn fault_point(stage: &str, step: usize) {
    let Some(spec) = std::env::var_os("EMBER_FAULT_KILL_IN_SAVE") else {
        return;
    };
    let spec = spec.to_string_lossy();
    let (name, at) = match spec.split_once('@') {
        Some((name, at)) => (name, at.parse::<usize>().ok()),
        None => (&*spec, None),
    };
    if name == stage && at.is_none_or(|at| at == step) {
        // SAFETY: sending a signal to this process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
