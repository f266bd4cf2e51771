//! Draws the [`Dashboard`] into a ratatui frame: a header (banner, progress, ETA), the
//! loss chart (train and validation against step), and the latest numbers.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Style, Stylize};
use ratatui::symbols::Marker;
use ratatui::text::Line;
use ratatui::widgets::{Axis, Block, Chart, Dataset, Gauge, GraphType, Paragraph};

use super::state::{Dashboard, format_duration};

/// At most this many points per curve are drawn (evenly thinned).
const MAX_POINTS: usize = 600;

fn thinned(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let stride = points.len().div_ceil(MAX_POINTS).max(1);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(stride).copied().collect();
    if let Some(&last) = points.last()
        && out.last() != Some(&last)
    {
        out.push(last);
    }
    out
}

/// Renders `d` over the whole frame.
pub fn render(frame: &mut Frame<'_>, d: &Dashboard) {
    let [header, gauge, chart, numbers] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(1),
        Constraint::Min(8),
        Constraint::Length(3),
    ])
    .areas(frame.area());

    let status = if d.stopping {
        "stopping: a checkpoint is written after this step".to_string()
    } else {
        "q or Ctrl-C: stop with a checkpoint".to_string()
    };
    frame.render_widget(
        Paragraph::new(vec![
            Line::from(d.banner.clone()).bold(),
            Line::from(status).dim(),
        ]),
        header,
    );
    let eta = d.eta().map_or("-".to_string(), format_duration);
    frame.render_widget(
        Gauge::default()
            .gauge_style(Style::default().fg(Color::Cyan))
            .ratio(d.done())
            .label(format!("step {}/{}  eta {eta}", d.step, d.total)),
        gauge,
    );

    let train = thinned(&d.train);
    let val = thinned(&d.val);
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for &(_, y) in train.iter().chain(&val) {
        lo = lo.min(y);
        hi = hi.max(y);
    }
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let (lo, hi) = (lo - pad, hi + pad);
    let x_max = (d.total.max(1)) as f64;
    let datasets = vec![
        Dataset::default()
            .name("train")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Yellow))
            .data(&train),
        Dataset::default()
            .name("val")
            .marker(Marker::Dot)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Green))
            .data(&val),
    ];
    frame.render_widget(
        Chart::new(datasets)
            .block(Block::bordered().title("loss"))
            .x_axis(Axis::default().title("step").bounds([0.0, x_max]).labels([
                "0".to_string(),
                format!("{}", d.total / 2),
                format!("{}", d.total),
            ]))
            .y_axis(Axis::default().bounds([lo, hi]).labels([
                format!("{lo:.3}"),
                format!("{:.3}", (lo + hi) / 2.0),
                format!("{hi:.3}"),
            ])),
        chart,
    );

    let last_train = d.train.last().map_or("-".into(), |p| format!("{:.4}", p.1));
    let last_val = d.val.last().map_or("-".into(), |p| format!("{:.4}", p.1));
    let lr = d.lr.map_or("-".into(), |v| format!("{v:.2e}"));
    let grad = d.grad_norm.map_or("-".into(), |v| format!("{v:.3}"));
    let rss = d.rss_mib.map_or("-".into(), |v| format!("{v:.0} MiB"));
    frame.render_widget(
        Paragraph::new(Line::from(format!(
            "loss {last_train}  val {last_val}  lr {lr}  grad {grad}  {:.0} tok/s  memory {rss}",
            d.tokens_per_s
        )))
        .block(Block::bordered().title("latest")),
        numbers,
    );
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;

    #[test]
    fn shows_progress_losses_and_numbers() {
        let t0 = Instant::now();
        let mut d = Dashboard::default();
        d.started(40, 0, "ember train: tiny", t0);
        for s in 1..=20 {
            d.stepped(
                s,
                4.0 - s as f64 * 0.05,
                1234.0,
                t0 + Duration::from_millis(100 * s as u64),
            );
        }
        d.recorded(&ember_train::StepMetrics {
            step: 20,
            train_loss: 3.0,
            val_loss: Some(3.125),
            lr: 6e-4,
            grad_norm: 0.5,
            ..Default::default()
        });
        let mut terminal = Terminal::new(TestBackend::new(100, 24)).unwrap();
        terminal.draw(|f| render(f, &d)).unwrap();
        let text: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        for want in [
            "ember train: tiny",
            "step 20/40",
            "eta 2s",
            "val 3.1250",
            "lr 6.00e-4",
            "grad 0.500",
            "1234 tok/s",
            "loss 3.0000",
        ] {
            assert!(text.contains(want), "`{want}` missing from the dashboard");
        }
    }
}
