//! Attention heatmaps as PNGs: one head with token labels on both axes, every head of a
//! layer in a grid, every layer × head in one overview, and any `[n][n]` matrix (attention
//! rollout). Colours are viridis from 0 to the matrix's largest value outside its first
//! row ([`color_max`]).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::analysis::{HeadStats, Pattern};
use super::maps::LayerMaps;
use ember_plot::font::{self, FAMILY};
use ember_plot::{PlotError, write_png};

/// A row-major `rows × cols` matrix to draw.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub rows: usize,
    pub cols: usize,
    pub values: &'a [f32],
}

/// How a token is printed on an axis: white space made visible, at most 12 characters.
pub fn token_label(token: &str) -> String {
    let shown: String = token
        .chars()
        .map(|c| match c {
            ' ' => '·',
            '\n' => '⏎',
            '\t' => '→',
            c if c.is_control() => '?',
            c => c,
        })
        .collect();
    if shown.chars().count() > 12 {
        shown.chars().take(11).chain(['…']).collect()
    } else {
        shown
    }
}

/// Short name of a pattern for figure cells.
pub fn pattern_tag(p: Pattern) -> &'static str {
    match p {
        Pattern::PreviousToken => "prev",
        Pattern::FirstToken => "sink",
        Pattern::Diagonal => "self",
        Pattern::Delimiter => "delim",
        Pattern::Local => "local",
        Pattern::Broad => "broad",
        Pattern::Mixed => "mixed",
    }
}

/// The top of a matrix's colour scale: its largest value outside the first row when it
/// has more than one (a causal map's first row is always a single 1, which would wash
/// out every other row).
pub fn color_max(m: &Matrix<'_>) -> f32 {
    let skip = if m.rows > 1 { m.cols } else { 0 };
    let max = m.values.iter().skip(skip).cloned().fold(0.0f32, f32::max);
    if max > 0.0 { max } else { 1.0 }
}

fn viridis(value: f32, max: f32) -> RGBColor {
    let t = if max > 0.0 {
        (value / max).clamp(0.0, 1.0)
    } else {
        0.0
    };
    ViridisRGB::get_color(t)
}

/// `m` max-pooled to at most `rows × cols` cells (unchanged when it is no larger).
pub fn pooled(m: Matrix<'_>, rows: usize, cols: usize) -> (usize, usize, Vec<f32>) {
    let (r, c) = (m.rows.min(rows.max(1)), m.cols.min(cols.max(1)));
    let mut out = vec![0.0f32; r * c];
    for i in 0..m.rows {
        for j in 0..m.cols {
            let slot = &mut out[(i * r / m.rows) * c + j * c / m.cols];
            *slot = slot.max(m.values[i * m.cols + j]);
        }
    }
    (r, c, out)
}

/// Fills `area` with `m` from pixel `(x0, y0)`, cells of `cell` pixels (matrices with
/// more cells than pixels are max-pooled to one cell per pixel first).
fn draw_cells<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    m: Matrix<'_>,
    (x0, y0): (i32, i32),
    cell: (f64, f64),
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let max = color_max(&m);
    let (width, height) = (m.cols as f64 * cell.0, m.rows as f64 * cell.1);
    let (rows, cols, values) = pooled(m, height.max(1.0) as usize, width.max(1.0) as usize);
    let cell = (width / cols as f64, height / rows as f64);
    for i in 0..rows {
        for j in 0..cols {
            let (left, top) = (
                x0 + (j as f64 * cell.0) as i32,
                y0 + (i as f64 * cell.1) as i32,
            );
            let (right, bottom) = (
                x0 + ((j + 1) as f64 * cell.0) as i32,
                y0 + ((i + 1) as f64 * cell.1) as i32,
            );
            let color = viridis(values[i * cols + j], max);
            area.draw(&Rectangle::new(
                [(left, top), (right, bottom)],
                color.filled(),
            ))
            .map_err(PlotError::draw)?;
        }
    }
    Ok(())
}

/// One matrix with `row_labels` down the left, `col_labels` along the bottom (rotated),
/// a title and a colour bar, written to `path`.
pub fn write_labelled(
    path: &Path,
    title: &str,
    m: Matrix<'_>,
    row_labels: &[String],
    col_labels: &[String],
) -> Result<(), PlotError> {
    font::register();
    let n = m.rows.max(m.cols).max(1);
    let cell = (720.0 / n as f64).clamp(10.0, 44.0);
    let label_px = 8 * row_labels
        .iter()
        .chain(col_labels)
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(1) as i32
        + 16;
    let (x0, y0) = (label_px, 48);
    let width = x0 + (cell * m.cols as f64) as i32 + 110;
    let height = y0 + (cell * m.rows as f64) as i32 + label_px;
    let max = color_max(&m);
    write_png(path, (width as u32, height as u32), |area| {
        let text = |size: i32| TextStyle::from((FAMILY, size).into_font()).color(&BLACK);
        area.draw(&Text::new(title.to_string(), (8, 14), text(18)))
            .map_err(PlotError::draw)?;
        draw_cells(&area, m, (x0, y0), (cell, cell))?;
        let label_size = (cell as i32 - 2).clamp(8, 14);
        for (i, label) in row_labels.iter().enumerate() {
            let y = y0 + ((i as f64 + 0.5) * cell) as i32;
            let style = text(label_size).pos(Pos::new(HPos::Right, VPos::Center));
            area.draw(&Text::new(label.clone(), (x0 - 4, y), style))
                .map_err(PlotError::draw)?;
        }
        let bottom = y0 + (cell * m.rows as f64) as i32;
        for (j, label) in col_labels.iter().enumerate() {
            let x = x0 + ((j as f64 + 0.5) * cell) as i32;
            let style = TextStyle::from(
                (FAMILY, label_size)
                    .into_font()
                    .transform(FontTransform::Rotate90),
            )
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center));
            area.draw(&Text::new(label.clone(), (x, bottom + 4), style))
                .map_err(PlotError::draw)?;
        }
        // Colour bar: 0 at the bottom, the largest value at the top.
        let bar_x = x0 + (cell * m.cols as f64) as i32 + 24;
        let bar_h = (cell * m.rows as f64) as i32;
        for k in 0..bar_h.max(1) {
            let t = 1.0 - k as f32 / bar_h.max(1) as f32;
            area.draw(&Rectangle::new(
                [(bar_x, y0 + k), (bar_x + 16, y0 + k + 1)],
                ViridisRGB::get_color(t).filled(),
            ))
            .map_err(PlotError::draw)?;
        }
        for (value, y) in [(max, y0), (0.0, y0 + bar_h)] {
            let style = text(12).pos(Pos::new(HPos::Left, VPos::Center));
            area.draw(&Text::new(format!("{value:.2}"), (bar_x + 20, y), style))
                .map_err(PlotError::draw)?;
        }
        Ok(())
    })
}

/// Small multiples: `cells[r][c]` (a matrix and its caption) in a grid with row and
/// column headings, written to `path`.
pub fn write_grid(
    path: &Path,
    title: &str,
    cells: &[Vec<(Matrix<'_>, String)>],
    row_headings: &[String],
    col_headings: &[String],
) -> Result<(), PlotError> {
    font::register();
    let rows = cells.len().max(1);
    let cols = cells.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let side = (1400 / cols as i32).clamp(90, 220);
    let (x0, y0) = (56, 64);
    let width = x0 + side * cols as i32 + 8;
    let height = y0 + (side + 18) * rows as i32 + 8;
    write_png(path, (width as u32, height as u32), |area| {
        let text = |size: i32| TextStyle::from((FAMILY, size).into_font()).color(&BLACK);
        area.draw(&Text::new(title.to_string(), (8, 12), text(18)))
            .map_err(PlotError::draw)?;
        for (c, heading) in col_headings.iter().enumerate().take(cols) {
            let x = x0 + side * c as i32 + side / 2;
            let style = text(13).pos(Pos::new(HPos::Center, VPos::Bottom));
            area.draw(&Text::new(heading.clone(), (x, y0 - 6), style))
                .map_err(PlotError::draw)?;
        }
        for (r, row) in cells.iter().enumerate() {
            let top = y0 + (side + 18) * r as i32;
            if let Some(heading) = row_headings.get(r) {
                let style = text(13).pos(Pos::new(HPos::Left, VPos::Center));
                area.draw(&Text::new(heading.clone(), (6, top + side / 2), style))
                    .map_err(PlotError::draw)?;
            }
            for (c, (m, caption)) in row.iter().enumerate() {
                let left = x0 + side * c as i32;
                let inner = (side - 6) as f64;
                let cell = (inner / m.cols.max(1) as f64, inner / m.rows.max(1) as f64);
                draw_cells(&area, *m, (left + 3, top + 3), cell)?;
                let style = text(12).pos(Pos::new(HPos::Center, VPos::Top));
                area.draw(&Text::new(
                    caption.clone(),
                    (left + side / 2, top + side),
                    style,
                ))
                .map_err(PlotError::draw)?;
            }
        }
        Ok(())
    })
}

/// One head of one layer, token labels on both axes.
pub fn write_head(
    path: &Path,
    maps: &LayerMaps,
    layer: usize,
    head: usize,
    tokens: &[String],
    stats: &HeadStats,
) -> Result<(), PlotError> {
    if tokens.len() != maps.keys || maps.queries > maps.keys || head >= maps.heads {
        return Err(PlotError::Draw(format!(
            "layer {layer} head {head}: {} token labels for {} keys, {} queries and {} heads",
            tokens.len(),
            maps.keys,
            maps.queries,
            maps.heads
        )));
    }
    let labels: Vec<String> = tokens.iter().map(|t| token_label(t)).collect();
    let rows = &labels[labels.len() - maps.queries..];
    write_labelled(
        path,
        &format!(
            "layer {layer} head {head}: {} (entropy {:.2} nats)",
            pattern_tag(stats.pattern),
            stats.entropy
        ),
        Matrix {
            rows: maps.queries,
            cols: maps.keys,
            values: maps.head(head),
        },
        rows,
        &labels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_scale_skips_the_first_row_and_pooling_keeps_maxima() {
        let values = [1.0, 0.0, 0.0, 0.25, 0.75, 0.0, 0.5, 0.1, 0.4];
        let m = Matrix {
            rows: 3,
            cols: 3,
            values: &values,
        };
        assert_eq!(color_max(&m), 0.75);
        assert_eq!(
            color_max(&Matrix {
                rows: 1,
                cols: 3,
                values: &values[..3]
            }),
            1.0
        );
        assert_eq!(
            color_max(&Matrix {
                rows: 2,
                cols: 1,
                values: &[1.0, 0.0]
            }),
            1.0
        );
        let (r, c, p) = pooled(m, 2, 2);
        // Rows {0, 1} and {2}; columns {0, 1} and {2}.
        assert_eq!((r, c, p), (2, 2, vec![1.0, 0.0, 0.5, 0.4]));
        assert_eq!(pooled(m, 5, 5).2, values.to_vec());
    }
}
