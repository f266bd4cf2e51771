//! Line charts: named series of `(x, y)` points on shared axes, drawn into a PNG or into
//! one panel of a larger figure. Non-finite points are skipped.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::font::{self, FAMILY};
use crate::png::PlotError;

/// A named curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed (validation curves beside their training curve).
    pub dashed: bool,
    /// Index into the palette: series of one run share a colour.
    pub color: usize,
}

/// What one chart shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart<'a> {
    pub caption: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    /// A logarithmic y axis (positive values only).
    pub log_y: bool,
    pub series: &'a [Series],
}

/// The palette colour `i`.
pub fn color(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// The x and y ranges of `series`' finite points (positive y only on a log axis), padded.
fn ranges(series: &[Series], log_y: bool) -> ((f64, f64), (f64, f64)) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in series.iter().flat_map(|s| &s.points) {
        if x.is_finite() && y.is_finite() && (!log_y || y > 0.0) {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
    }
    if x0 > x1 {
        return ((0.0, 1.0), if log_y { (0.1, 1.0) } else { (0.0, 1.0) });
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if log_y {
        return ((x0, x1), (y0 / 1.2, y1 * 1.2));
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9 * y1.abs().max(1.0));
    ((x0, x1), (y0 - pad, y1 + pad))
}

/// Draws `chart` into `area`.
pub fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart<'_>,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    font::register();
    let ((x0, x1), (y0, y1)) = ranges(chart.series, chart.log_y);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(chart.caption, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64);
    let style = |s: &Series| color(s.color).stroke_width(2);
    let labelled = |s: &Series| {
        let c = color(s.color);
        move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
    };
    let finite = |s: &Series, log: bool| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log || *y > 0.0))
            .collect()
    };
    macro_rules! body {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_desc(chart.x_desc)
                .y_desc(chart.y_desc)
                .label_style((FAMILY, 13))
                .draw()
                .map_err(PlotError::draw)?;
            for s in chart.series {
                let points = finite(s, chart.log_y);
                if s.dashed {
                    ctx.draw_series(DashedLineSeries::new(points, 6, 4, style(s)))
                        .map_err(PlotError::draw)?
                        .label(s.name.as_str())
                        .legend(labelled(s));
                } else {
                    ctx.draw_series(LineSeries::new(points, style(s)))
                        .map_err(PlotError::draw)?
                        .label(s.name.as_str())
                        .legend(labelled(s));
                }
            }
            if chart.series.len() > 1 {
                ctx.configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .label_font((FAMILY, 13))
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()
                    .map_err(PlotError::draw)?;
            }
        }};
    }
    if chart.log_y {
        body!(
            builder
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(PlotError::draw)?
        );
    } else {
        body!(
            builder
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(PlotError::draw)?
        );
    }
    Ok(())
}

/// Writes `chart` alone as a `width × height` PNG at `path` (atomically).
pub fn write_chart(path: &Path, chart: &Chart<'_>, size: (u32, u32)) -> Result<(), PlotError> {
    crate::png::write_png(path, size, |area| draw(&area, chart))
}
