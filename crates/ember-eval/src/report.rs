//! `ember eval`'s scores of predictions against references: the metrics asked for, as a
//! JSON report (BLEU and chrF on sacrebleu's 0–100 scale with their signatures, ROUGE on
//! rouge-score's 0–1 scale with bootstrap intervals, exact match, perplexity) and a
//! markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;

use serde::Serialize;

use crate::metrics::{
    Bleu, BleuConfig, BleuScore, BleuTokenizer, Bootstrap, ChrfConfig, Interval, MetricError,
    RougeScorer, RougeType, corpus_chrf, exact_match,
};

/// A metric `--metrics` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetricName {
    Bleu,
    Chrf,
    Rouge,
    ExactMatch,
    Perplexity,
}

impl FromStr for MetricName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "bleu" => Ok(Self::Bleu),
            "chrf" => Ok(Self::Chrf),
            "rouge" => Ok(Self::Rouge),
            "exact_match" => Ok(Self::ExactMatch),
            "perplexity" => Ok(Self::Perplexity),
            other => Err(format!(
                "unknown metric `{other}`; expected bleu, chrf, rouge, exact_match or perplexity"
            )),
        }
    }
}

/// Parses a comma-separated metric list (duplicates ignored).
pub fn parse_metrics(list: &str) -> Result<Vec<MetricName>, String> {
    let mut metrics: Vec<MetricName> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    metrics.sort();
    metrics.dedup();
    if metrics.is_empty() {
        return Err("no metric named".into());
    }
    Ok(metrics)
}

/// How to score.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub metrics: Vec<MetricName>,
    pub bleu_tokenizer: BleuTokenizer,
    pub rouge_stemmer: bool,
    pub bootstrap: Bootstrap,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            metrics: vec![
                MetricName::Bleu,
                MetricName::Chrf,
                MetricName::Rouge,
                MetricName::ExactMatch,
            ],
            bleu_tokenizer: BleuTokenizer::default(),
            rouge_stemmer: false,
            bootstrap: Bootstrap::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BleuReport {
    /// The score and its statistics, at the report's top level.
    #[serde(flatten)]
    pub bleu: BleuScore,
    pub signature: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChrfReport {
    pub score: f64,
    pub signature: String,
}

/// One ROUGE type: means over examples and their bootstrap intervals.
#[derive(Debug, Clone, Serialize)]
pub struct RougeReport {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
    pub precision_ci: Option<Interval>,
    pub recall_ci: Option<Interval>,
    pub fmeasure_ci: Option<Interval>,
}

/// Perplexity of the references given their prompts.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerplexityReport {
    /// `exp(mean NLL)` over every reference token.
    pub perplexity: f64,
    pub mean_nll: f64,
    pub tokens: usize,
}

/// One example's own scores.
#[derive(Debug, Clone, Serialize)]
pub struct ExampleScores {
    pub prediction: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentence_bleu: Option<f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rouge_fmeasure: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
}

/// Everything `--out` holds.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub examples: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bleu: Option<BleuReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chrf: Option<ChrfReport>,
    /// `rouge1`, `rouge2`, `rougeL`, `rougeLsum`.
    #[serde(flatten)]
    pub rouge: BTreeMap<String, RougeReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<PerplexityReport>,
    /// Whether ROUGE used the Porter stemmer.
    pub rouge_stemmer: bool,
    pub per_example: Vec<ExampleScores>,
}

/// The ROUGE types reported.
pub const ROUGE_TYPES: [RougeType; 4] = [
    RougeType::N(1),
    RougeType::N(2),
    RougeType::L,
    RougeType::Lsum,
];

/// Scores `predictions` against `references` (paired by index) with `config`'s metrics;
/// perplexity, which needs the model, is filled in by the caller.
pub fn score(
    predictions: &[String],
    references: &[Vec<String>],
    config: &EvalConfig,
) -> Result<EvalReport, MetricError> {
    crate::metrics::check_corpus(predictions.len(), references)?;
    let wants = |m| config.metrics.contains(&m);
    let mut per_example: Vec<ExampleScores> = predictions
        .iter()
        .map(|p| ExampleScores {
            prediction: p.clone(),
            sentence_bleu: None,
            rouge_fmeasure: BTreeMap::new(),
            exact_match: None,
        })
        .collect();
    let bleu = if wants(MetricName::Bleu) {
        let mut bleu = Bleu::new(BleuConfig {
            tokenizer: config.bleu_tokenizer,
            ..BleuConfig::default()
        });
        let s = bleu.corpus_score(predictions, references)?;
        for (ex, (p, r)) in per_example
            .iter_mut()
            .zip(predictions.iter().zip(references))
        {
            let mut sentence = Bleu::new(BleuConfig {
                tokenizer: config.bleu_tokenizer,
                ..BleuConfig::sentence()
            });
            ex.sentence_bleu = Some(sentence.sentence_score(p, r)?.score);
        }
        Some(BleuReport {
            bleu: s,
            signature: bleu.signature(),
        })
    } else {
        None
    };
    let chrf = if wants(MetricName::Chrf) {
        let c = ChrfConfig::default();
        let s = corpus_chrf(&c, predictions, references)?;
        Some(ChrfReport {
            score: s.score,
            signature: c.signature(&nrefs(references)),
        })
    } else {
        None
    };
    let mut rouge = BTreeMap::new();
    if wants(MetricName::Rouge) {
        let scorer = RougeScorer::new(&ROUGE_TYPES, config.rouge_stemmer);
        let scores: Vec<_> = predictions
            .iter()
            .zip(references)
            .map(|(p, r)| scorer.score_multi(r, p))
            .collect();
        for kind in ROUGE_TYPES {
            let column = |f: fn(&crate::metrics::RougeScore) -> f64| -> Vec<f64> {
                scores.iter().map(|s| f(&s[&kind])).collect()
            };
            let (p, r, f) = (
                column(|s| s.precision),
                column(|s| s.recall),
                column(|s| s.fmeasure),
            );
            for (ex, v) in per_example.iter_mut().zip(&f) {
                ex.rouge_fmeasure.insert(kind.to_string(), *v);
            }
            rouge.insert(
                kind.to_string(),
                RougeReport {
                    precision: mean(&p),
                    recall: mean(&r),
                    fmeasure: mean(&f),
                    precision_ci: config.bootstrap.interval(&p),
                    recall_ci: config.bootstrap.interval(&r),
                    fmeasure_ci: config.bootstrap.interval(&f),
                },
            );
        }
    }
    let exact = if wants(MetricName::ExactMatch) {
        let values: Vec<f64> = predictions
            .iter()
            .zip(references)
            .map(|(p, r)| exact_match(p, r))
            .collect();
        for (ex, v) in per_example.iter_mut().zip(&values) {
            ex.exact_match = Some(*v);
        }
        Some(mean(&values))
    } else {
        None
    };
    Ok(EvalReport {
        examples: predictions.len(),
        bleu,
        chrf,
        rouge,
        exact_match: exact,
        perplexity: None,
        rouge_stemmer: config.rouge_stemmer,
        per_example,
    })
}

/// The mean, summed left to right (as a Python `sum(...) / len(...)`).
fn mean(values: &[f64]) -> f64 {
    values.iter().fold(0.0, |s, v| s + v) / values.len().max(1) as f64
}

fn nrefs(references: &[Vec<String>]) -> String {
    match references.first() {
        Some(first) if references.iter().all(|r| r.len() == first.len()) => first.len().to_string(),
        _ => "var".into(),
    }
}

impl EvalReport {
    /// The scores as a markdown table.
    pub fn markdown(&self) -> String {
        let mut md = String::from("| metric | score | detail |\n|---|---:|---|\n");
        if let Some(b) = &self.bleu {
            let (signature, b) = (&b.signature, &b.bleu);
            let precisions: Vec<String> = b.precisions.iter().map(|p| format!("{p:.1}")).collect();
            let _ = writeln!(
                md,
                "| BLEU | {:.2} | {} (BP = {:.3}, hyp_len = {}, ref_len = {}) `{}` |",
                b.score,
                precisions.join("/"),
                b.bp,
                b.sys_len,
                b.ref_len,
                signature
            );
        }
        if let Some(c) = &self.chrf {
            let _ = writeln!(md, "| chrF | {:.2} | `{}` |", c.score, c.signature);
        }
        for (name, r) in &self.rouge {
            let ci = r.fmeasure_ci.map_or(String::new(), |i| {
                format!(", 95% CI {:.4}–{:.4}", i.low, i.high)
            });
            let _ = writeln!(
                md,
                "| {name} F | {:.4} | P {:.4}, R {:.4}{ci}{} |",
                r.fmeasure,
                r.precision,
                r.recall,
                if self.rouge_stemmer { ", stemmed" } else { "" }
            );
        }
        if let Some(e) = self.exact_match {
            let _ = writeln!(
                md,
                "| exact match | {e:.4} | share of {} examples |",
                self.examples
            );
        }
        if let Some(p) = &self.perplexity {
            let _ = writeln!(
                md,
                "| perplexity | {:.4} | mean NLL {:.4} over {} reference tokens |",
                p.perplexity, p.mean_nll, p.tokens
            );
        }
        md
    }
}
