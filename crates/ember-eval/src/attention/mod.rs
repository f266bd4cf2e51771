//! Attention analysis: the probabilities of a prompt ([`maps`]), their statistics and
//! pattern labels and rollout ([`analysis`]), attention flow ([`flow`]), heatmaps ([`heatmap`]) and `ember
//! attention`'s report ([`report`]).

pub mod analysis;
pub mod flow;
pub mod heatmap;
pub mod maps;
pub mod report;

pub use analysis::{HeadStats, Pattern, head_stats, residual_attention, rollout};
pub use flow::attention_flow;
pub use maps::{AttentionMaps, LayerMaps, attention_maps};
pub use report::{AttentionSummary, Comparison, HeadSelection, write_report};
