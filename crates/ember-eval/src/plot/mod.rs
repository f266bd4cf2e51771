//! Figures: line charts ([`curves`]), a training run's curves from its `metrics.jsonl`
//! ([`runs`]), the embedded font ([`font`]), and atomic PNG writing.

pub mod curves;
pub mod font;
pub mod runs;

pub use curves::{Chart, Series, write_chart};
pub use runs::{RunCurves, plot_runs};

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

/// A figure that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("{path}: cannot write the figure: {message}")]
    Output { path: PathBuf, message: String },
    #[error("drawing: {0}")]
    Draw(String),
}

impl PlotError {
    pub(crate) fn draw<E: std::fmt::Display>(e: E) -> Self {
        Self::Draw(e.to_string())
    }
}

/// Draws a `size` figure with `draw` and writes it as a PNG at `path` atomically: into a
/// temporary file beside it, renamed over `path` only once complete.
pub fn write_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<(), PlotError> {
    let output = |message: String| PlotError::Output {
        path: path.to_path_buf(),
        message,
    };
    if path.extension().and_then(|e| e.to_str()) != Some("png") {
        return Err(output("the file name must end in .png".into()));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(output(format!("{} is not a directory", dir.display())));
    }
    let name = path
        .file_stem()
        .map_or("figure".into(), |s| s.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp.png", std::process::id()));
    let result = (|| {
        let area = BitMapBackend::new(&tmp, size).into_drawing_area();
        area.fill(&WHITE).map_err(PlotError::draw)?;
        draw(area.clone())?;
        area.present().map_err(|e| output(e.to_string()))
    })();
    let result =
        result.and_then(|()| std::fs::rename(&tmp, path).map_err(|e| output(e.to_string())));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
