//! chrF and chrF++ as sacrebleu computes them: character n-gram F-score (orders 1–6,
//! white space removed, β = 2), optionally with word n-grams (chrF++: word order 2),
//! the per-order precisions and recalls averaged over the orders both sides have, the
//! best reference per segment, statistics summed over the corpus. 0–100 scale.

use serde::{Deserialize, Serialize};

use super::bleu::SACREBLEU_VERSION;
use super::error::{MetricError, check_corpus};
use super::ngrams::{
    NgramCounts, char_ngrams, clipped_matches, is_python_space, python_split, word_ngrams,
};

/// The punctuation chrF++ splits off the ends of words.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// chrF's settings; the default is sacrebleu's chrF.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChrfConfig {
    pub char_order: usize,
    /// 0: chrF; 2: chrF++.
    pub word_order: usize,
    pub beta: u32,
    pub lowercase: bool,
    /// Keep white space in the character n-grams.
    pub whitespace: bool,
    /// Average the per-order F-scores with ε for missing orders (chrF.py's way) instead of
    /// the effective-order average.
    pub eps_smoothing: bool,
}

impl Default for ChrfConfig {
    fn default() -> Self {
        Self {
            char_order: 6,
            word_order: 0,
            beta: 2,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }
}

impl ChrfConfig {
    /// chrF++: word bigrams and unigrams as well.
    pub fn plus_plus() -> Self {
        Self {
            word_order: 2,
            ..Self::default()
        }
    }

    /// sacrebleu's signature for `nrefs` references per segment (`var` when they vary).
    pub fn signature(&self, nrefs: &str) -> String {
        format!(
            "nrefs:{nrefs}|case:{}|eff:{}|nc:{}|nw:{}|space:{}|version:{SACREBLEU_VERSION}",
            if self.lowercase { "lc" } else { "mixed" },
            if self.eps_smoothing { "no" } else { "yes" },
            self.char_order,
            self.word_order,
            if self.whitespace { "yes" } else { "no" },
        )
    }

    fn orders(&self) -> usize {
        self.char_order + self.word_order
    }

    fn preprocess(&self, text: &str) -> String {
        if self.lowercase {
            text.to_lowercase()
        } else {
            text.to_string()
        }
    }

    /// The n-gram counts of `text`: character orders 1..=char_order, then word orders.
    fn ngrams(&self, text: &str) -> Vec<NgramCounts> {
        let text = self.preprocess(text);
        let chars: Vec<char> = if self.whitespace {
            text.chars().collect()
        } else {
            text.chars().filter(|&c| !is_python_space(c)).collect()
        };
        let mut all: Vec<NgramCounts> = (1..=self.char_order)
            .map(|n| char_ngrams(&chars, n))
            .collect();
        if self.word_order > 0 {
            let words = split_punctuation(&text);
            all.extend((1..=self.word_order).map(|n| word_ngrams(&words, n)));
        }
        all
    }

    /// `[hyp, ref, match]` per order of `hyp` against one reference.
    fn statistics(&self, hyp: &[NgramCounts], reference: &[NgramCounts]) -> Vec<usize> {
        let mut stats = Vec::with_capacity(3 * hyp.len());
        for (h, r) in hyp.iter().zip(reference) {
            let hyp_count: usize = h.values().sum();
            stats.push(if r.is_empty() { 0 } else { hyp_count });
            stats.push(r.values().sum());
            stats.push(clipped_matches(h, r));
        }
        stats
    }

    /// The F-score (0–100) of summed statistics (sacrebleu's `_compute_f_score`).
    fn f_score(&self, stats: &[usize]) -> f64 {
        const EPS: f64 = 1e-16;
        let factor = f64::from(self.beta.pow(2));
        let (mut score, mut effective) = (0.0, 0usize);
        let (mut avg_prec, mut avg_rec) = (0.0, 0.0);
        for order in stats.chunks_exact(3) {
            let (n_hyp, n_ref, n_match) = (order[0], order[1], order[2]);
            let prec = if n_hyp > 0 {
                n_match as f64 / n_hyp as f64
            } else {
                EPS
            };
            let rec = if n_ref > 0 {
                n_match as f64 / n_ref as f64
            } else {
                EPS
            };
            let denom = factor * prec + rec;
            score += if denom > 0.0 {
                (1.0 + factor) * prec * rec / denom
            } else {
                EPS
            };
            if n_hyp > 0 && n_ref > 0 {
                avg_prec += prec;
                avg_rec += rec;
                effective += 1;
            }
        }
        if self.eps_smoothing {
            return 100.0 * score / self.orders() as f64;
        }
        if effective == 0 {
            (avg_prec, avg_rec) = (0.0, 0.0);
        } else {
            avg_prec /= effective as f64;
            avg_rec /= effective as f64;
        }
        if avg_prec + avg_rec != 0.0 {
            let score = (1.0 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec);
            100.0 * score
        } else {
            0.0
        }
    }
}

/// Words with one leading or trailing punctuation mark split off (chrF++'s word units).
fn split_punctuation(text: &str) -> Vec<String> {
    let is_punct = |c: char| PUNCTUATION.contains(c);
    let mut words = Vec::new();
    for word in python_split(text) {
        let chars: Vec<char> = word.chars().collect();
        let (first, last) = (chars[0], chars[chars.len() - 1]);
        if chars.len() == 1 {
            words.push(word.to_string());
        } else if is_punct(last) {
            words.push(chars[..chars.len() - 1].iter().collect());
            words.push(last.to_string());
        } else if is_punct(first) {
            words.push(first.to_string());
            words.push(chars[1..].iter().collect());
        } else {
            words.push(word.to_string());
        }
    }
    words
}

/// A chrF score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChrfScore {
    /// 0–100.
    pub score: f64,
}

/// Corpus chrF of `hypotheses`, segment `i` against `references[i]`.
pub fn corpus_chrf<H: AsRef<str>>(
    config: &ChrfConfig,
    hypotheses: &[H],
    references: &[Vec<String>],
) -> Result<ChrfScore, MetricError> {
    check_corpus(hypotheses.len(), references)?;
    let mut sum = vec![0usize; 3 * config.orders()];
    for (hypothesis, refs) in hypotheses.iter().zip(references) {
        let hyp = config.ngrams(hypothesis.as_ref());
        let mut best: Option<(f64, Vec<usize>)> = None;
        for reference in refs {
            let stats = config.statistics(&hyp, &config.ngrams(reference));
            let f = config.f_score(&stats);
            if best.as_ref().is_none_or(|(b, _)| f > *b) {
                best = Some((f, stats));
            }
        }
        if let Some((_, stats)) = best {
            sum.iter_mut().zip(stats).for_each(|(s, x)| *s += x);
        }
    }
    Ok(ChrfScore {
        score: config.f_score(&sum),
    })
}

/// chrF of one hypothesis against its references.
pub fn sentence_chrf(
    config: &ChrfConfig,
    hypothesis: &str,
    references: &[String],
) -> Result<ChrfScore, MetricError> {
    corpus_chrf(config, &[hypothesis], &[references.to_vec()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_text_scores_100_and_disjoint_0() {
        let c = ChrfConfig::default();
        let same = sentence_chrf(&c, "abc def", &["abc def".into()]).unwrap();
        assert!((same.score - 100.0).abs() < 1e-9);
        let none = sentence_chrf(&c, "xyz", &["abc".into()]).unwrap();
        assert_eq!(none.score, 0.0);
    }

    #[test]
    fn unigram_f_by_hand() {
        // Order 1 only: hyp "ab" vs ref "abcd": P = 1, R = 0.5, F2 = 5·0.5/(4+0.5).
        let c = ChrfConfig {
            char_order: 1,
            ..ChrfConfig::default()
        };
        let s = sentence_chrf(&c, "ab", &["abcd".into()]).unwrap();
        assert!((s.score - 100.0 * 2.5 / 4.5).abs() < 1e-12, "{}", s.score);
    }

    #[test]
    fn splits_word_punctuation() {
        assert_eq!(
            split_punctuation("Hi, (you) !"),
            ["Hi", ",", "(you", ")", "!"]
        );
    }
}
