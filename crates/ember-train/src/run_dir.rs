//! A run directory (`--out`): whose run it holds, and its `metrics.jsonl`.
//!
//! - A run never writes into a directory holding another run's checkpoint or metrics,
//!   unless forced: a fresh run there would replace the other's checkpoint, and a resumed
//!   one would mix two runs' steps in one metrics file.
//! - `metrics.jsonl` always describes one run up to its checkpoint: a resume drops the
//!   lines past the checkpoint's step (written after it by a run that then crashed), and a
//!   resume into a new directory starts from the source run's lines.

use std::path::{Path, PathBuf};

use crate::checkpoint::{self, Checkpoint};
use crate::config::ConfigError;
use crate::metrics::StepMetrics;
use crate::trainer::TrainError;

/// The metrics file of run directory `out`.
pub fn metrics_path(out: &Path) -> PathBuf {
    out.join("metrics.jsonl")
}

/// What `out` already holds, in words, when it holds a run: a checkpoint (complete or
/// not) or a non-empty metrics file.
fn existing_run(out: &Path) -> Option<String> {
    if checkpoint::is_checkpoint(out) {
        return Some(match checkpoint::locate(out) {
            Ok((dir, _)) => match Checkpoint::open(&dir) {
                Ok(ckpt) => format!("a checkpoint at step {}", ckpt.state.step),
                Err(_) => format!("a checkpoint ({})", dir.display()),
            },
            Err(_) => "an incomplete checkpoint".into(),
        });
    }
    let metrics = metrics_path(out);
    match std::fs::metadata(&metrics) {
        Ok(meta) if meta.len() > 0 => Some(format!("{} with logged steps", metrics.display())),
        _ => None,
    }
}

/// Whether two paths name the same directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// The run directory a checkpoint directory belongs to (`run/checkpoint` → `run`).
fn run_of(checkpoint_dir: &Path) -> PathBuf {
    checkpoint_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Refuses to start in `out` when that would replace or mix with another run (see the
/// module docs). Writes nothing.
pub fn check(out: &Path, resume: Option<&Checkpoint>, force: bool) -> Result<(), TrainError> {
    let existing = existing_run(out);
    let same_run = resume.is_some_and(|ckpt| same_dir(&run_of(&ckpt.dir), out));
    if let Some(what) = &existing
        && !same_run
        && !force
    {
        let message = match resume {
            Some(ckpt) => format!(
                "--out {}: already holds another run ({what}); resuming {} there would replace it and mix the two runs' metrics. Use an empty --out, or --force to replace it",
                out.display(),
                ckpt.dir.display()
            ),
            None => format!(
                "--out {}: already holds a run ({what}); continue it with --resume {}, or pass --force to start over there",
                out.display(),
                out.display()
            ),
        };
        return Err(ConfigError(message).into());
    }
    Ok(())
}

/// Leaves `out/metrics.jsonl` describing this run up to where it starts (replaced
/// atomically): empty for a fresh run, the source run's lines up to the checkpoint's
/// step for a resume.
pub fn start_metrics(out: &Path, resume: Option<&Checkpoint>) -> Result<(), TrainError> {
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    let lines = match resume {
        Some(ckpt) => read_until(&metrics_path(&run_of(&ckpt.dir)), ckpt.state.step),
        None => Vec::new(),
    };
    let mut text = String::new();
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    let path = metrics_path(out);
    ember_data::files::write_atomic(&path, text.as_bytes()).map_err(io_error(&path))
}

/// The lines of metrics file `path` for steps up to `step`; a torn or foreign line (a
/// crash mid-write) ends the file.
fn read_until(path: &Path, step: usize) -> Vec<String> {
    let Ok(text) = ember_data::files::read_regular_text(path) else {
        return Vec::new();
    };
    text.lines()
        .map_while(|line| {
            let record: StepMetrics = serde_json::from_str(line).ok()?;
            (record.step <= step).then(|| line.to_string())
        })
        .collect()
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
