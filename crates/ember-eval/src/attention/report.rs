//! `ember attention`'s outputs for one prompt: `summary.json` (per-head entropy,
//! pattern shares and labels, rollout), `overview.png` (every layer × head),
//! `layer{L}.png` (a layer's heads), `layer{L}_head{H}.png` (one head, token labels) and
//! `rollout.png`; and the comparison of two models' summaries.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::analysis::{HeadStats, Pattern, head_stats, rollout};
use super::flow::attention_flow;
use super::heatmap::{Matrix, pattern_tag, token_label, write_grid, write_head, write_labelled};
use super::maps::LayerMaps;
use ember_plot::PlotError;

/// What one prompt's attention shows.
#[derive(Debug, Clone, Serialize)]
pub struct AttentionSummary {
    pub tokens: Vec<String>,
    /// Per analysed layer, its heads.
    pub layers: Vec<LayerSummary>,
    /// How many heads show each pattern.
    pub pattern_counts: BTreeMap<String, usize>,
    /// Attention rollout over the analysed layers (`[tokens][tokens]`); `None` unless
    /// every layer was analysed.
    pub rollout: Option<Vec<Vec<f64>>>,
    /// Attention flow into the last position from each token (`[tokens]`), under the
    /// same condition.
    pub flow_to_last: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerSummary {
    pub layer: usize,
    pub heads: Vec<HeadStats>,
}

impl AttentionSummary {
    /// The summary of `maps` (by layer) over `tokens`; `all_layers` says whether `maps`
    /// holds every layer of the model (rollout needs them all).
    pub fn new(maps: &BTreeMap<usize, LayerMaps>, tokens: &[String], all_layers: bool) -> Self {
        let delimiters: Vec<bool> = tokens.iter().map(|t| is_delimiter(t)).collect();
        let layers: Vec<LayerSummary> = maps
            .iter()
            .map(|(&layer, m)| LayerSummary {
                layer,
                heads: head_stats(
                    layer,
                    m,
                    (delimiters.len() == m.keys).then_some(&delimiters[..]),
                ),
            })
            .collect();
        let mut pattern_counts = BTreeMap::new();
        for head in layers.iter().flat_map(|l| &l.heads) {
            *pattern_counts
                .entry(pattern_name(head.pattern))
                .or_insert(0) += 1;
        }
        let layers_in_order: Vec<&LayerMaps> = maps.values().collect();
        let rollout = all_layers.then(|| rollout(&layers_in_order)).flatten();
        let flow_to_last = all_layers
            .then(|| attention_flow(&layers_in_order, tokens.len().saturating_sub(1)))
            .flatten();
        Self {
            tokens: tokens.to_vec(),
            layers,
            pattern_counts,
            rollout,
            flow_to_last,
        }
    }

    /// The statistics of `layer`'s head `head`.
    pub fn head(&self, layer: usize, head: usize) -> Option<&HeadStats> {
        self.layers
            .iter()
            .find(|l| l.layer == layer)
            .and_then(|l| l.heads.get(head))
    }
}

/// Whether a token is white space or punctuation only (a word or line boundary).
pub fn is_delimiter(token: &str) -> bool {
    !token.is_empty()
        && token
            .chars()
            .all(|c| c.is_whitespace() || c.is_ascii_punctuation())
}

fn pattern_name(p: Pattern) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Which per-layer figures and single-head heatmaps to draw (the overview, rollout and
/// summary always cover every layer). Single-head heatmaps (token labels on both axes)
/// are drawn only when a layer or a head is chosen.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadSelection {
    /// One layer; every layer when `None`.
    pub layer: Option<usize>,
    /// One head of each drawn layer; every head when `None`.
    pub head: Option<usize>,
}

/// Writes `summary.json` and the figures into `dir` (which must exist). Returns the
/// files written.
pub fn write_report(
    dir: &Path,
    maps: &BTreeMap<usize, LayerMaps>,
    summary: &AttentionSummary,
    selection: HeadSelection,
) -> Result<Vec<String>, PlotError> {
    let mut written = Vec::new();
    let labels: Vec<String> = summary.tokens.iter().map(|t| token_label(t)).collect();
    let json = serde_json::to_string_pretty(summary).map_err(PlotError::draw)?;
    let path = dir.join("summary.json");
    ember_data::files::write_atomic(&path, json.as_bytes()).map_err(|e| PlotError::Write {
        path: path.clone(),
        message: e.to_string(),
    })?;
    written.push("summary.json".to_string());

    // Overview: layers down, heads across.
    let cells: Vec<Vec<(Matrix<'_>, String)>> = maps
        .iter()
        .map(|(&layer, m)| {
            (0..m.heads)
                .map(|h| {
                    let tag = summary
                        .head(layer, h)
                        .map_or("", |s| pattern_tag(s.pattern));
                    (matrix(m, h), tag.to_string())
                })
                .collect()
        })
        .collect();
    let heads = maps.values().map(|m| m.heads).max().unwrap_or(0);
    let rows: Vec<String> = maps.keys().map(|l| format!("L{l}")).collect();
    let cols: Vec<String> = (0..heads).map(|h| format!("H{h}")).collect();
    write_grid(
        &dir.join("overview.png"),
        "attention: layer × head",
        &cells,
        &rows,
        &cols,
    )?;
    written.push("overview.png".into());

    for (&layer, m) in maps {
        if selection.layer.is_some_and(|l| l != layer) {
            continue;
        }
        let cells = vec![
            (0..m.heads)
                .map(|h| {
                    let s = summary.head(layer, h);
                    let caption = s.map_or(String::new(), |s| {
                        format!("H{h} {} {:.2}", pattern_tag(s.pattern), s.entropy)
                    });
                    (matrix(m, h), caption)
                })
                .collect::<Vec<_>>(),
        ];
        let name = format!("layer{layer}.png");
        write_grid(
            &dir.join(&name),
            &format!("layer {layer}: every head (pattern, entropy)"),
            &cells,
            &[],
            &[],
        )?;
        written.push(name);
        let heads: Vec<usize> = match (selection.layer, selection.head) {
            (_, Some(h)) => vec![h],
            (Some(_), None) => (0..m.heads).collect(),
            (None, None) => Vec::new(),
        };
        for h in heads {
            let Some(stats) = summary.head(layer, h) else {
                continue;
            };
            let name = format!("layer{layer}_head{h}.png");
            write_head(&dir.join(&name), m, layer, h, &summary.tokens, stats)?;
            written.push(name);
        }
    }
    if let Some(r) = &summary.rollout {
        let values: Vec<f32> = r.iter().flatten().map(|&x| x as f32).collect();
        let n = r.len();
        write_labelled(
            &dir.join("rollout.png"),
            "attention rollout (rows: last layer's positions; columns: input tokens)",
            Matrix {
                rows: n,
                cols: n,
                values: &values,
            },
            &labels,
            &labels,
        )?;
        written.push("rollout.png".into());
    }
    Ok(written)
}

fn matrix(m: &LayerMaps, h: usize) -> Matrix<'_> {
    Matrix {
        rows: m.queries,
        cols: m.keys,
        values: m.head(h),
    }
}

/// How one head differs between two models.
#[derive(Debug, Clone, Serialize)]
pub struct HeadChange {
    pub layer: usize,
    pub head: usize,
    pub pattern_a: Pattern,
    pub pattern_b: Pattern,
    pub entropy_a: f64,
    pub entropy_b: f64,
    pub previous_token_a: f64,
    pub previous_token_b: f64,
    pub first_token_a: f64,
    pub first_token_b: f64,
}

/// Two models' summaries side by side (`--compare A B`), head by head.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub pattern_counts_a: BTreeMap<String, usize>,
    pub pattern_counts_b: BTreeMap<String, usize>,
    /// Mean entropy over every head.
    pub mean_entropy_a: f64,
    pub mean_entropy_b: f64,
    pub heads: Vec<HeadChange>,
}

impl Comparison {
    /// Heads present in both summaries, paired by layer and index.
    pub fn new(a: &AttentionSummary, b: &AttentionSummary) -> Self {
        let mut heads = Vec::new();
        for la in &a.layers {
            for ha in &la.heads {
                if let Some(hb) = b.head(ha.layer, ha.head) {
                    heads.push(HeadChange {
                        layer: ha.layer,
                        head: ha.head,
                        pattern_a: ha.pattern,
                        pattern_b: hb.pattern,
                        entropy_a: ha.entropy,
                        entropy_b: hb.entropy,
                        previous_token_a: ha.previous_token,
                        previous_token_b: hb.previous_token,
                        first_token_a: ha.first_token,
                        first_token_b: hb.first_token,
                    });
                }
            }
        }
        let mean = |s: &AttentionSummary| {
            let all: Vec<f64> = s
                .layers
                .iter()
                .flat_map(|l| &l.heads)
                .map(|h| h.entropy)
                .collect();
            all.iter().sum::<f64>() / all.len().max(1) as f64
        };
        Self {
            pattern_counts_a: a.pattern_counts.clone(),
            pattern_counts_b: b.pattern_counts.clone(),
            mean_entropy_a: mean(a),
            mean_entropy_b: mean(b),
            heads,
        }
    }
}
