//! Ember's figures: line charts ([`curves`]), a training run's curves from its
//! `metrics.jsonl` ([`runs`]), PNG writing ([`png`]) and the embedded font ([`font`]).

pub mod curves;
pub mod font;
pub mod png;
pub mod runs;

pub use curves::{Chart, Series, write_chart};
pub use png::{PlotError, write_png};
pub use runs::{RunCurves, plot_runs};
