//! Writing a figure: drawn into a bitmap and saved as a PNG atomically (a temporary file
//! beside the target, renamed over it once complete); the errors, by whose fault.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

/// A figure that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// An input that is not what it should be (missing, malformed): the caller's to fix.
    #[error("{path}: {message}")]
    BadInput { path: PathBuf, message: String },
    /// An input that could not be read.
    #[error("{path}: cannot read: {message}")]
    Read { path: PathBuf, message: String },
    /// An output path that cannot be used (wrong extension, no such directory).
    #[error("{path}: {message}")]
    BadOutput { path: PathBuf, message: String },
    /// Writing the figure failed.
    #[error("{path}: cannot write the figure: {message}")]
    Write { path: PathBuf, message: String },
    #[error("drawing: {0}")]
    Draw(String),
}

impl PlotError {
    /// A drawing failure.
    pub fn draw<E: std::fmt::Display>(e: E) -> Self {
        Self::Draw(e.to_string())
    }

    /// Whether the caller's input or output path is at fault (exit 2), not the run (1).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::BadInput { .. } | Self::BadOutput { .. })
    }
}

/// Draws a `size` figure with `draw` and writes it as a PNG at `path` atomically.
pub fn write_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<(), PlotError> {
    let bad = |message: String| PlotError::BadOutput {
        path: path.to_path_buf(),
        message,
    };
    if path.extension().and_then(|e| e.to_str()) != Some("png") {
        return Err(bad("the figure's name must end in .png".into()));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(bad(format!("{} is not a directory", dir.display())));
    }
    let name = path
        .file_stem()
        .map_or("figure".into(), |s| s.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp.png", std::process::id()));
    let write = |message: String| PlotError::Write {
        path: path.to_path_buf(),
        message,
    };
    let result = (|| {
        let area = BitMapBackend::new(&tmp, size).into_drawing_area();
        area.fill(&WHITE).map_err(PlotError::draw)?;
        draw(area.clone())?;
        area.present().map_err(|e| write(e.to_string()))
    })();
    let result =
        result.and_then(|()| std::fs::rename(&tmp, path).map_err(|e| write(e.to_string())));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
