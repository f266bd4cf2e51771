//! BLEU as sacrebleu computes it: corpus BLEU from summed n-gram statistics with the
//! closest reference length, `exp` smoothing by default, the brevity penalty, several
//! references per segment; sentence BLEU with effective order; the signature string.
//! Scores are on sacrebleu's 0–100 scale.

use serde::{Deserialize, Serialize};

use super::bleu_tokenizer::BleuTokenizer;
use super::error::{MetricError, check_corpus};
use super::ngrams::{NgramCounts, clipped_matches, python_rstrip, python_split, word_ngrams};

/// The sacrebleu release whose definitions these scores reproduce (it names them in the
/// signature).
pub const SACREBLEU_VERSION: &str = "2.6.0";

/// What sacrebleu's `log` of a zero precision is.
const LOG_ZERO: f64 = -9_999_999_999.0;

/// How zero n-gram matches are smoothed (sacrebleu's `smooth_method`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Smoothing {
    /// No smoothing: a zero precision gives BLEU 0.
    None,
    /// A zero count becomes `value` (default 0.1).
    Floor(f64),
    /// `value` is added to the counts and totals of orders above 1 (default 1).
    AddK(f64),
    /// The NIST geometric sequence: the k-th zero precision is `1 / (2^k · total)`.
    Exp,
}

impl Smoothing {
    fn signature(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Floor(v) => format!("floor[{v:.2}]"),
            Self::AddK(v) => format!("add-k[{v:.2}]"),
            Self::Exp => "exp".into(),
        }
    }
}

/// BLEU's settings; the default is sacrebleu's corpus BLEU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BleuConfig {
    pub tokenizer: BleuTokenizer,
    pub lowercase: bool,
    pub smoothing: Smoothing,
    pub max_ngram_order: usize,
    /// Average only over the orders up to the longest the hypothesis has (sentence BLEU).
    pub effective_order: bool,
}

impl Default for BleuConfig {
    fn default() -> Self {
        Self {
            tokenizer: BleuTokenizer::default(),
            lowercase: false,
            smoothing: Smoothing::Exp,
            max_ngram_order: 4,
            effective_order: false,
        }
    }
}

impl BleuConfig {
    /// sacrebleu's `sentence_bleu` settings: the defaults with effective order.
    pub fn sentence() -> Self {
        Self {
            effective_order: true,
            ..Self::default()
        }
    }
}

/// A BLEU score and the statistics behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BleuScore {
    /// 0–100.
    pub score: f64,
    /// Clipped n-gram matches per order.
    pub counts: Vec<f64>,
    /// Hypothesis n-grams per order.
    pub totals: Vec<f64>,
    /// Per-order precisions, 0–100 (smoothed).
    pub precisions: Vec<f64>,
    /// Brevity penalty.
    pub bp: f64,
    /// Hypothesis words.
    pub sys_len: usize,
    /// Reference words (the closest reference's, per segment).
    pub ref_len: usize,
}

/// One segment's sufficient statistics: `[sys_len, ref_len, correct…, total…]`.
#[derive(Debug, Clone, PartialEq)]
struct SegmentStats {
    sys_len: usize,
    ref_len: usize,
    correct: Vec<usize>,
    total: Vec<usize>,
}

/// A metric object: its settings and the number of references it was last run with
/// (for the signature).
#[derive(Debug, Clone)]
pub struct Bleu {
    pub config: BleuConfig,
    num_refs: Option<NumRefs>,
}

/// How many references each segment had: one count, or `var`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumRefs {
    Each(usize),
    Varying,
}

impl Bleu {
    pub fn new(config: BleuConfig) -> Self {
        Self {
            config,
            num_refs: None,
        }
    }

    fn preprocess(&self, text: &str) -> String {
        let text = if self.config.lowercase {
            text.to_lowercase()
        } else {
            text.to_string()
        };
        self.config.tokenizer.tokenize(python_rstrip(&text))
    }

    /// The statistics of one hypothesis against its references (pre-processed here).
    fn segment(&self, hypothesis: &str, references: &[String]) -> SegmentStats {
        let order = self.config.max_ngram_order;
        let mut reference_counts: Vec<NgramCounts> = vec![NgramCounts::new(); order];
        let mut reference_lengths = Vec::with_capacity(references.len());
        for reference in references {
            let processed = self.preprocess(reference);
            let tokens = python_split(&processed);
            reference_lengths.push(tokens.len());
            for (n, best) in reference_counts.iter_mut().enumerate() {
                for (gram, count) in word_ngrams(&tokens, n + 1) {
                    let slot = best.entry(gram).or_insert(0);
                    *slot = (*slot).max(count);
                }
            }
        }
        let processed = self.preprocess(hypothesis);
        let tokens = python_split(&processed);
        let mut stats = SegmentStats {
            sys_len: tokens.len(),
            ref_len: closest_length(tokens.len(), &reference_lengths),
            correct: vec![0; order],
            total: vec![0; order],
        };
        for (n, reference) in reference_counts.iter().enumerate() {
            let grams = word_ngrams(&tokens, n + 1);
            stats.total[n] = grams.values().sum();
            stats.correct[n] = clipped_matches(&grams, reference);
        }
        stats
    }

    /// Corpus BLEU of `hypotheses`, segment `i` against `references[i]` (one or more).
    pub fn corpus_score<H: AsRef<str>>(
        &mut self,
        hypotheses: &[H],
        references: &[Vec<String>],
    ) -> Result<BleuScore, MetricError> {
        check_corpus(hypotheses.len(), references)?;
        self.num_refs = Some(num_refs(references));
        let order = self.config.max_ngram_order;
        let mut sum = SegmentStats {
            sys_len: 0,
            ref_len: 0,
            correct: vec![0; order],
            total: vec![0; order],
        };
        for (hypothesis, refs) in hypotheses.iter().zip(references) {
            let stats = self.segment(hypothesis.as_ref(), refs);
            sum.sys_len += stats.sys_len;
            sum.ref_len += stats.ref_len;
            for n in 0..order {
                sum.correct[n] += stats.correct[n];
                sum.total[n] += stats.total[n];
            }
        }
        Ok(self.compute(&sum))
    }

    /// BLEU of one hypothesis against its references.
    pub fn sentence_score(
        &mut self,
        hypothesis: &str,
        references: &[String],
    ) -> Result<BleuScore, MetricError> {
        self.corpus_score(&[hypothesis], &[references.to_vec()])
    }

    /// sacrebleu's signature of the last run, e.g.
    /// `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`.
    pub fn signature(&self) -> String {
        let nrefs = match self.num_refs {
            Some(NumRefs::Each(n)) => n.to_string(),
            Some(NumRefs::Varying) => "var".into(),
            None => "?".into(),
        };
        format!(
            "nrefs:{nrefs}|case:{}|eff:{}|tok:{}|smooth:{}|version:{SACREBLEU_VERSION}",
            if self.config.lowercase { "lc" } else { "mixed" },
            if self.config.effective_order {
                "yes"
            } else {
                "no"
            },
            self.config.tokenizer.name(),
            self.config.smoothing.signature(),
        )
    }

    /// The score from summed statistics (sacrebleu's `compute_bleu`).
    fn compute(&self, stats: &SegmentStats) -> BleuScore {
        let order = self.config.max_ngram_order;
        let (sys_len, ref_len) = (stats.sys_len, stats.ref_len);
        let bp = if sys_len < ref_len {
            if sys_len > 0 {
                (1.0 - ref_len as f64 / sys_len as f64).exp()
            } else {
                0.0
            }
        } else {
            1.0
        };
        let mut correct: Vec<f64> = stats.correct.iter().map(|&c| c as f64).collect();
        let mut total: Vec<f64> = stats.total.iter().map(|&t| t as f64).collect();
        let mut precisions = vec![0.0; order];
        let score = |score, correct, total, precisions| BleuScore {
            score,
            counts: correct,
            totals: total,
            precisions,
            bp,
            sys_len,
            ref_len,
        };
        if correct.iter().all(|&c| c == 0.0) {
            return score(0.0, correct, total, precisions);
        }
        let mut smooth_mteval = 1.0;
        let mut effective = order;
        for n in 0..order {
            if let Smoothing::AddK(k) = self.config.smoothing
                && n > 0
            {
                correct[n] += k;
                total[n] += k;
            }
            if total[n] == 0.0 {
                break;
            }
            if self.config.effective_order {
                effective = n + 1;
            }
            if correct[n] == 0.0 {
                match self.config.smoothing {
                    Smoothing::Exp => {
                        smooth_mteval *= 2.0;
                        precisions[n] = 100.0 / (smooth_mteval * total[n]);
                    }
                    Smoothing::Floor(v) => precisions[n] = 100.0 * v / total[n],
                    Smoothing::None | Smoothing::AddK(_) => {}
                }
            } else {
                precisions[n] = 100.0 * correct[n] / total[n];
            }
        }
        let log_sum = precisions[..effective].iter().fold(0.0, |sum, &p| {
            sum + if p == 0.0 { LOG_ZERO } else { p.ln() }
        });
        let value = bp * (log_sum / effective as f64).exp();
        score(value, correct, total, precisions)
    }
}

/// The reference length closest to `hyp_len`, the shorter on ties.
fn closest_length(hyp_len: usize, lengths: &[usize]) -> usize {
    let mut best: Option<(usize, usize)> = None;
    for &len in lengths {
        let diff = hyp_len.abs_diff(len);
        best = match best {
            None => Some((diff, len)),
            Some((d, _)) if diff < d => Some((diff, len)),
            Some((d, l)) if diff == d && len < l => Some((diff, len)),
            keep => keep,
        };
    }
    best.map_or(0, |(_, len)| len)
}

fn num_refs(references: &[Vec<String>]) -> NumRefs {
    match references.first() {
        Some(first) if references.iter().all(|r| r.len() == first.len()) => {
            NumRefs::Each(first.len())
        }
        Some(_) => NumRefs::Varying,
        None => NumRefs::Each(0),
    }
}

/// Corpus BLEU with sacrebleu's defaults.
pub fn corpus_bleu<H: AsRef<str>>(
    hypotheses: &[H],
    references: &[Vec<String>],
) -> Result<BleuScore, MetricError> {
    Bleu::new(BleuConfig::default()).corpus_score(hypotheses, references)
}

/// Sentence BLEU as sacrebleu's `sentence_bleu` (effective order).
pub fn sentence_bleu(hypothesis: &str, references: &[String]) -> Result<BleuScore, MetricError> {
    Bleu::new(BleuConfig::sentence()).sentence_score(hypothesis, references)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn identical_text_scores_100() {
        let s = corpus_bleu(
            &["the cat sat on the mat"],
            &[refs(&["the cat sat on the mat"])],
        )
        .unwrap();
        assert!((s.score - 100.0).abs() < 1e-9, "{}", s.score);
        assert_eq!(s.bp, 1.0);
    }

    #[test]
    fn brevity_penalty_and_geometric_mean_by_hand() {
        // hyp: 4 words, ref: 6; 1-grams 4/4, 2-grams 3/3, 3-grams 2/2, 4-grams 1/1.
        let s = corpus_bleu(&["the cat sat on"], &[refs(&["the cat sat on the mat"])]).unwrap();
        let bp = (1.0f64 - 6.0 / 4.0).exp();
        assert!(
            (s.score - 100.0 * bp).abs() < 1e-9,
            "{} vs {}",
            s.score,
            100.0 * bp
        );
    }

    #[test]
    fn closest_reference_length_prefers_shorter_on_ties() {
        assert_eq!(closest_length(5, &[3, 7]), 3);
        assert_eq!(closest_length(5, &[7, 3]), 3);
        assert_eq!(closest_length(5, &[6, 9]), 6);
    }

    #[test]
    fn signature_names_settings() {
        let mut bleu = Bleu::new(BleuConfig::default());
        bleu.corpus_score(&["a", "b"], &[refs(&["a"]), refs(&["b", "c"])])
            .unwrap();
        assert_eq!(
            bleu.signature(),
            "nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
        );
    }
}
