//! `ember plot`: the curves of training runs, read from their `metrics.jsonl`, drawn as
//! one figure of four panels (loss with validation dashed, learning rate, gradient norm,
//! tokens/s against step), one colour per run.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::curves::{self, Chart, Series};
use crate::png::PlotError;

/// One run's curves against step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunCurves {
    pub name: String,
    pub train_loss: Vec<(f64, f64)>,
    pub val_loss: Vec<(f64, f64)>,
    pub lr: Vec<(f64, f64)>,
    pub grad_norm: Vec<(f64, f64)>,
    pub tokens_per_s: Vec<(f64, f64)>,
}

impl RunCurves {
    /// Reads `run`: a run directory holding `metrics.jsonl`, or the file itself. A last
    /// line cut short (a run killed mid-write) is ignored; any other line that is not a
    /// metrics record is an error naming the file and line.
    pub fn read(run: &Path) -> Result<Self, PlotError> {
        let file = if run.is_dir() {
            run.join("metrics.jsonl")
        } else {
            run.to_path_buf()
        };
        let input = |message: String| PlotError::BadInput {
            path: file.clone(),
            message,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound if run.is_dir() => {
                input("no metrics.jsonl here: not an `ember train` run directory".into())
            }
            std::io::ErrorKind::NotFound => input("no such file".into()),
            std::io::ErrorKind::InvalidData => input("not UTF-8 text".into()),
            _ => PlotError::Read {
                path: file.clone(),
                message: e.to_string(),
            },
        })?;
        let name = if run.is_dir() {
            run
        } else {
            run.parent().unwrap_or(run)
        };
        let name = name
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| run.display().to_string());
        let mut curves = RunCurves {
            name,
            ..Self::default()
        };
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
                Err(e) => return Err(input(format!("line {}: not JSON: {e}", i + 1))),
            };
            let step = record.get("step").and_then(Value::as_f64).ok_or_else(|| {
                input(format!(
                    "line {}: no `step`: not an Ember metrics record",
                    i + 1
                ))
            })?;
            let push = |key: &str, to: &mut Vec<(f64, f64)>| {
                if let Some(y) = record.get(key).and_then(Value::as_f64) {
                    to.push((step, y));
                }
            };
            push("train_loss", &mut curves.train_loss);
            push("val_loss", &mut curves.val_loss);
            push("lr", &mut curves.lr);
            push("grad_norm", &mut curves.grad_norm);
            push("tokens_per_s", &mut curves.tokens_per_s);
        }
        if curves.train_loss.is_empty() {
            return Err(input("holds no logged step yet".into()));
        }
        Ok(curves)
    }
}

/// Reads every run of `runs` and writes their figure to `out` (a `.png`, atomically).
pub fn plot_runs(runs: &[PathBuf], out: &Path) -> Result<Vec<RunCurves>, PlotError> {
    let curves = runs
        .iter()
        .map(|r| RunCurves::read(r))
        .collect::<Result<Vec<_>, _>>()?;
    write_figure(&curves, out)?;
    Ok(curves)
}

/// One curve of a run for a panel: a suffix for its name, its points, whether dashed.
type Pick<'r> = (&'static str, &'r Vec<(f64, f64)>, bool);

/// The four-panel figure of `runs`.
pub fn write_figure(runs: &[RunCurves], out: &Path) -> Result<(), PlotError> {
    let panel = |pick: &dyn Fn(&RunCurves) -> Vec<Pick<'_>>| {
        runs.iter()
            .enumerate()
            .flat_map(|(i, run)| {
                pick(run).into_iter().filter(|(_, p, _)| !p.is_empty()).map(
                    move |(what, points, dashed)| Series {
                        name: if what.is_empty() {
                            run.name.clone()
                        } else {
                            format!("{} {what}", run.name)
                        },
                        points: points.clone(),
                        dashed,
                        color: i,
                    },
                )
            })
            .collect::<Vec<_>>()
    };
    let loss = panel(&|r| vec![("train", &r.train_loss, false), ("val", &r.val_loss, true)]);
    let lr = panel(&|r| vec![("", &r.lr, false)]);
    let grad = panel(&|r| vec![("", &r.grad_norm, false)]);
    let speed = panel(&|r| vec![("", &r.tokens_per_s, false)]);
    let charts = [
        Chart {
            caption: "loss (validation dashed)",
            x_desc: "step",
            y_desc: "loss",
            log_y: false,
            series: &loss,
        },
        Chart {
            caption: "learning rate",
            x_desc: "step",
            y_desc: "lr",
            log_y: false,
            series: &lr,
        },
        Chart {
            caption: "gradient norm (before clipping)",
            x_desc: "step",
            y_desc: "norm",
            log_y: true,
            series: &grad,
        },
        Chart {
            caption: "throughput",
            x_desc: "step",
            y_desc: "tokens/s",
            log_y: false,
            series: &speed,
        },
    ];
    crate::png::write_png(out, (1400, 900), |area| {
        for (cell, chart) in area.split_evenly((2, 2)).iter().zip(&charts) {
            curves::draw(cell, chart)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn reads_records_skips_a_torn_last_line_and_draws_each_run_in_its_colour() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = Vec::new();
        for (name, scale) in [("a", 1.0), ("b", 2.0)] {
            let run = dir.path().join(name);
            std::fs::create_dir(&run).unwrap();
            let mut text = String::new();
            for step in 1..=20 {
                let val = if step % 5 == 0 {
                    format!(", \"val_loss\": {}", scale * 2.0)
                } else {
                    String::new()
                };
                text += &format!(
                    "{{\"step\": {step}, \"train_loss\": {}, \"lr\": 0.001, \"grad_norm\": null, \"tokens_per_s\": 100.0{val}}}\n",
                    scale * 3.0 / step as f64
                );
            }
            text += "{\"step\": 21, \"train_lo";
            std::fs::write(run.join("metrics.jsonl"), text).unwrap();
            runs.push(run);
        }
        let out = dir.path().join("fig.png");
        let curves = plot_runs(&runs, &out).unwrap();
        assert_eq!(curves[0].name, "a");
        assert_eq!(curves[0].train_loss.len(), 20);
        assert_eq!(curves[1].train_loss[1], (2.0, 3.0));
        assert_eq!(
            curves[1].val_loss,
            vec![(5.0, 4.0), (10.0, 4.0), (15.0, 4.0), (20.0, 4.0)]
        );
        // `null` gradient norms (skipped steps) are left out.
        assert!(curves[0].grad_norm.is_empty());
        let (w, h, pixels) = decode(&out);
        assert_eq!((w, h), (1400, 900));
        for run in 0..2 {
            let c = crate::curves::color(run);
            let count = pixels.chunks(3).filter(|p| p == &[c.0, c.1, c.2]).count();
            assert!(count > 200, "run {run}'s colour covers {count} pixels");
        }
        // A bad line in the middle is an error naming the file and line.
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(
            &bad,
            "{\"step\": 1, \"train_loss\": 1}\n{oops}\n{\"step\": 2, \"train_loss\": 1}\n",
        )
        .unwrap();
        let err = RunCurves::read(&bad).unwrap_err();
        assert!(
            err.is_bad_input() && err.to_string().contains("line 2"),
            "{err}"
        );
        let err = plot_runs(&runs, &dir.path().join("fig.jpg")).unwrap_err();
        assert!(
            err.is_bad_input() && err.to_string().contains(".png"),
            "{err}"
        );
    }
}
