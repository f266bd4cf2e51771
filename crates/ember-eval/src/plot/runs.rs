//! `ember plot`: the curves of training runs, read from their `metrics.jsonl`, drawn as
//! one figure of four panels (loss with validation dashed, learning rate, gradient norm,
//! tokens/s against step), one colour per run.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::PlotError;
use super::curves::{self, Chart, Series};

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
        let input = |message: String| PlotError::Input {
            path: file.clone(),
            message,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            input(match e.kind() {
                std::io::ErrorKind::NotFound if run.is_dir() => {
                    "no metrics.jsonl here: not an `ember train` run directory".into()
                }
                _ => e.to_string(),
            })
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

/// The four-panel figure of `runs`.
pub fn write_figure(runs: &[RunCurves], out: &Path) -> Result<(), PlotError> {
    let panel = |pick: &dyn Fn(&RunCurves) -> Vec<(&'static str, &Vec<(f64, f64)>, bool)>| {
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
    super::write_png(out, (1400, 900), |area| {
        for (cell, chart) in area.split_evenly((2, 2)).iter().zip(&charts) {
            curves::draw(cell, chart)?;
        }
        Ok(())
    })
}
