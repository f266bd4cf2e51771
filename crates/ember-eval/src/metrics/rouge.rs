//! ROUGE-N, ROUGE-L and ROUGE-Lsum as Google's `rouge-score` computes them: its tokenizer
//! (optionally with the Porter stemmer), precision/recall/F per example, the best
//! reference by F-measure per type (`score_multi`), Lsum as the summary-level union LCS
//! over sentences split on newlines. 0–1 scale.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ngrams::word_ngrams;
use super::rouge_tokenizer::rouge_tokens;

/// Which ROUGE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RougeType {
    /// N-gram overlap of order `n` (`rouge1`, `rouge2`, …, `rouge9`).
    N(usize),
    /// Longest common subsequence over the whole text.
    L,
    /// Summary-level LCS over newline-separated sentences.
    Lsum,
}

impl fmt::Display for RougeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::N(n) => write!(f, "rouge{n}"),
            Self::L => f.write_str("rougeL"),
            Self::Lsum => f.write_str("rougeLsum"),
        }
    }
}

impl FromStr for RougeType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rougeL" => Ok(Self::L),
            "rougeLsum" => Ok(Self::Lsum),
            _ => match s
                .strip_prefix("rouge")
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) if (1..=9).contains(&n) && s.len() == 6 => Ok(Self::N(n)),
                _ => Err(format!(
                    "unknown ROUGE type `{s}`; expected rouge1 … rouge9, rougeL or rougeLsum"
                )),
            },
        }
    }
}

/// Precision, recall and F-measure, 0–1.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RougeScore {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

impl RougeScore {
    fn new(precision: f64, recall: f64) -> Self {
        let fmeasure = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Self {
            precision,
            recall,
            fmeasure,
        }
    }
}

/// Scores examples with rouge-score's rules.
#[derive(Debug, Clone)]
pub struct RougeScorer {
    pub types: Vec<RougeType>,
    pub use_stemmer: bool,
}

impl RougeScorer {
    pub fn new(types: &[RougeType], use_stemmer: bool) -> Self {
        Self {
            types: types.to_vec(),
            use_stemmer,
        }
    }

    /// Every type's score of `prediction` against one `target`.
    pub fn score(&self, target: &str, prediction: &str) -> HashMap<RougeType, RougeScore> {
        let tokenize = |text: &str| rouge_tokens(text, self.use_stemmer);
        let (target_tokens, prediction_tokens) = (tokenize(target), tokenize(prediction));
        self.types
            .iter()
            .map(|&kind| {
                let score = match kind {
                    RougeType::N(n) => score_ngrams(&target_tokens, &prediction_tokens, n),
                    RougeType::L => score_lcs(&target_tokens, &prediction_tokens),
                    RougeType::Lsum => {
                        let sentences = |text: &str| -> Vec<Vec<String>> {
                            text.split('\n')
                                .filter(|s| !s.is_empty())
                                .map(tokenize)
                                .collect()
                        };
                        summary_level_lcs(&sentences(target), &sentences(prediction))
                    }
                };
                (kind, score)
            })
            .collect()
    }

    /// Per type, the score against the target with the highest F-measure (the first of
    /// equals), as `score_multi`.
    pub fn score_multi(
        &self,
        targets: &[String],
        prediction: &str,
    ) -> HashMap<RougeType, RougeScore> {
        let all: Vec<_> = targets.iter().map(|t| self.score(t, prediction)).collect();
        self.types
            .iter()
            .map(|&kind| {
                let mut best: Option<RougeScore> = None;
                for scores in &all {
                    let s = scores[&kind];
                    if best.is_none_or(|b| s.fmeasure > b.fmeasure) {
                        best = Some(s);
                    }
                }
                (kind, best.unwrap_or_default())
            })
            .collect()
    }
}

fn score_ngrams(target: &[String], prediction: &[String], n: usize) -> RougeScore {
    let target_grams = word_ngrams(target, n);
    let prediction_grams = word_ngrams(prediction, n);
    let overlap: usize = target_grams
        .iter()
        .map(|(g, &c)| c.min(prediction_grams.get(g).copied().unwrap_or(0)))
        .sum();
    let target_count: usize = target_grams.values().sum();
    let prediction_count: usize = prediction_grams.values().sum();
    RougeScore::new(
        overlap as f64 / prediction_count.max(1) as f64,
        overlap as f64 / target_count.max(1) as f64,
    )
}

/// The LCS table of `a` × `b`, `[a.len() + 1][b.len() + 1]`.
fn lcs_table(a: &[String], b: &[String]) -> Vec<Vec<usize>> {
    let mut table = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            table[i][j] = if a[i - 1] == b[j - 1] {
                table[i - 1][j - 1] + 1
            } else {
                table[i - 1][j].max(table[i][j - 1])
            };
        }
    }
    table
}

fn score_lcs(target: &[String], prediction: &[String]) -> RougeScore {
    if target.is_empty() || prediction.is_empty() {
        return RougeScore::default();
    }
    let lcs = lcs_table(target, prediction)[target.len()][prediction.len()];
    RougeScore::new(
        lcs as f64 / prediction.len() as f64,
        lcs as f64 / target.len() as f64,
    )
}

/// Indices into `reference` of one longest common subsequence with `candidate`, read
/// back from the table the way rouge-score does (so ties resolve identically).
fn lcs_indices(reference: &[String], candidate: &[String]) -> Vec<usize> {
    let table = lcs_table(reference, candidate);
    let (mut i, mut j) = (reference.len(), candidate.len());
    let mut indices = Vec::new();
    while i > 0 && j > 0 {
        if reference[i - 1] == candidate[j - 1] {
            indices.push(i - 1);
            i -= 1;
            j -= 1;
        } else if table[i][j - 1] > table[i - 1][j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
    indices.reverse();
    indices
}

fn token_counts(sentences: &[Vec<String>]) -> HashMap<&str, usize> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for token in sentences.iter().flatten() {
        *counts.entry(token.as_str()).or_insert(0) += 1;
    }
    counts
}

fn summary_level_lcs(references: &[Vec<String>], candidates: &[Vec<String>]) -> RougeScore {
    if references.is_empty() || candidates.is_empty() {
        return RougeScore::default();
    }
    let m: usize = references.iter().map(Vec::len).sum();
    let n: usize = candidates.iter().map(Vec::len).sum();
    if m == 0 || n == 0 {
        return RougeScore::default();
    }
    let (mut ref_counts, mut cand_counts) = (token_counts(references), token_counts(candidates));
    let mut hits = 0usize;
    for reference in references {
        let mut union: Vec<usize> = candidates
            .iter()
            .flat_map(|c| lcs_indices(reference, c))
            .collect();
        union.sort_unstable();
        union.dedup();
        for i in union {
            let token = reference[i].as_str();
            let (c, r) = (cand_counts.get_mut(token), ref_counts.get_mut(token));
            if let (Some(c), Some(r)) = (c, r)
                && *c > 0
                && *r > 0
            {
                hits += 1;
                *c -= 1;
                *r -= 1;
            }
        }
    }
    RougeScore::new(hits as f64 / n as f64, hits as f64 / m as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types() {
        assert_eq!("rouge2".parse::<RougeType>(), Ok(RougeType::N(2)));
        assert_eq!("rougeLsum".parse::<RougeType>(), Ok(RougeType::Lsum));
        assert!("rouge10".parse::<RougeType>().is_err());
        assert!("rouge0".parse::<RougeType>().is_err());
        assert_eq!(RougeType::N(1).to_string(), "rouge1");
    }

    #[test]
    fn rouge1_and_l_by_hand() {
        let scorer = RougeScorer::new(&[RougeType::N(1), RougeType::L], false);
        let s = scorer.score("the cat sat on the mat", "the cat on a mat");
        // Unigram overlap: the, cat, on, mat = 4 of 5 predicted, of 6 target.
        let r1 = s[&RougeType::N(1)];
        assert!((r1.precision - 0.8).abs() < 1e-12 && (r1.recall - 4.0 / 6.0).abs() < 1e-12);
        // LCS "the cat on mat" = 4.
        let l = s[&RougeType::L];
        assert!((l.precision - 0.8).abs() < 1e-12);
    }
}
