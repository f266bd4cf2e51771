//! A run directory (`--out`): whose run it holds, and its `metrics.jsonl`.
//!
//! - A run never writes into a directory holding another run's checkpoint or metrics,
//!   unless forced: a fresh run there would replace the other's checkpoint, and a resumed
//!   one would mix two runs' steps in one metrics file.
//! - `metrics.jsonl` always describes one run up to its checkpoint: a resume drops the
//!   lines past the checkpoint's step (written after it by a run that then crashed), and a
//!   resume into a new directory starts from the source run's lines.

use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::config::ConfigError;
use crate::trainer::TrainError;

/// The metrics file of run directory `out`.
pub fn metrics_path(out: &Path) -> PathBuf {
    out.join("metrics.jsonl")
}

/// What `out` already holds, in words, when it holds a run's checkpoint (complete or
/// not) or a `checkpoint/` directory that is not Ember's. Logged steps alone (a run
/// killed before its first save) are no run: nothing loadable would be lost.
fn existing_run(out: &Path) -> Option<String> {
    if checkpoint::is_checkpoint(out) {
        // Only the step, for the message: the checkpoint is verified when it is opened.
        let step = [out.to_path_buf(), out.join("checkpoint")]
            .iter()
            .find_map(|dir| ember_model::checkpoint::read::read_progress(dir).ok());
        return Some(match step {
            Some(progress) => format!("a checkpoint at step {}", progress.step),
            None => "an incomplete checkpoint".into(),
        });
    }
    let foreign = out.join("checkpoint");
    foreign
        .exists()
        .then(|| format!("{}, which is not an Ember checkpoint", foreign.display()))
}

/// Whether two paths name the same directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// The run directory a checkpoint directory belongs to (`run/checkpoint` → `run`),
/// resolved through `.`, `..` and symlinks.
fn run_of(checkpoint_dir: &Path) -> PathBuf {
    let dir = checkpoint_dir
        .canonicalize()
        .unwrap_or_else(|_| checkpoint_dir.to_path_buf());
    dir.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Refuses to start in `out` when that would replace or mix with another run (see the
/// module docs). Writes nothing.
///
/// `resume` is the checkpoint directory the run continues from, if any.
pub fn check(out: &Path, resume: Option<&Path>, force: bool) -> Result<(), TrainError> {
    let existing = existing_run(out);
    let same_run = resume.is_some_and(|ckpt| same_dir(&run_of(ckpt), out));
    if let Some(what) = &existing
        && !same_run
        && !force
    {
        let message = match resume {
            Some(ckpt) => format!(
                "--out {}: already holds another run ({what}); resuming {} there would replace it and mix the two runs' metrics. Use an empty --out, or --force to replace it",
                out.display(),
                ckpt.display()
            ),
            None if checkpoint::is_checkpoint(out) => format!(
                "--out {}: already holds a run ({what}); continue it with --resume {}, or pass --force to start over there",
                out.display(),
                out.display()
            ),
            None => format!(
                "--out {}: holds {what}; choose another --out, or pass --force to replace it",
                out.display()
            ),
        };
        return Err(ConfigError(message).into());
    }
    Ok(())
}

/// Leaves `out` ready for this run: with `replace` (a forced start over another run), the
/// other run's checkpoints are deleted first, so nothing of it can be resumed into this
/// run's history; then `metrics.jsonl` is rewritten (atomically) to describe this run up
/// to where it starts: empty for a fresh run, the source run's lines up to the
/// checkpoint's step for a resume (`resume`: the checkpoint directory and its step).
pub fn start_metrics(
    out: &Path,
    resume: Option<(&Path, usize)>,
    replace: bool,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    let lines = match resume {
        Some((dir, step)) => read_until(&metrics_path(&run_of(dir)), step),
        None => Vec::new(),
    };
    if replace {
        let primary = out.join("checkpoint");
        let (tmp, old) = ember_model::checkpoint::write::siblings(&primary);
        for dir in [primary, tmp, old] {
            if std::fs::symlink_metadata(&dir).is_ok() {
                let removed = if dir.is_dir() {
                    std::fs::remove_dir_all(&dir)
                } else {
                    std::fs::remove_file(&dir)
                };
                removed.map_err(io_error(&dir))?;
            }
        }
    }
    let mut text = String::new();
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    let path = metrics_path(out);
    ember_data::files::write_atomic(&path, text.as_bytes()).map_err(io_error(&path))
}

/// Whether this run replaces another in `out` (so [`start_metrics`] must clear it);
/// `resume` is the checkpoint directory the run continues from, if any.
pub fn replaces_another(out: &Path, resume: Option<&Path>) -> bool {
    existing_run(out).is_some() && !resume.is_some_and(|ckpt| same_dir(&run_of(ckpt), out))
}

/// Holds `out/.lock` for the life of a run, so two runs never write one directory.
pub struct RunLock(#[allow(dead_code)] std::fs::File);

/// Takes the run directory's lock, or fails naming the directory when another
/// `ember train` or `ember finetune` holds it.
pub fn lock(out: &Path) -> Result<RunLock, TrainError> {
    std::fs::create_dir_all(out).map_err(|e| {
        ConfigError(format!(
            "--out {}: cannot create the run directory: {e}",
            out.display()
        ))
    })?;
    let path = out.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(RunLock(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(ConfigError(format!(
            "--out {}: another `ember train` or `ember finetune` is running in this directory",
            out.display()
        ))
        .into()),
        Err(std::fs::TryLockError::Error(e)) => Err(io_error(&path)(e)),
    }
}

/// The lines of metrics file `path` for steps up to `step`; a torn line (a crash
/// mid-write) ends the file. Only `step` is read, so a line with a non-finite value
/// (written as `null`) is kept.
fn read_until(path: &Path, step: usize) -> Vec<String> {
    let Ok(text) = ember_data::files::read_regular_text(path) else {
        return Vec::new();
    };
    text.lines()
        .map_while(|line| {
            let record: serde_json::Value = serde_json::from_str(line).ok()?;
            let line_step = record.get("step")?.as_u64()?;
            (line_step <= step as u64).then(|| line.to_string())
        })
        .collect()
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
