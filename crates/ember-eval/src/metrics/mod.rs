//! Text metrics identical to their reference packages: BLEU and chrF (sacrebleu), ROUGE
//! (rouge-score, with NLTK's Porter stemmer), exact match, bootstrap intervals.

pub mod bleu;
pub mod bleu_tokenizer;
pub mod bootstrap;
pub mod chrf;
pub mod exact_match;
pub mod ngrams;
pub mod porter;
pub mod rouge;
pub mod rouge_tokenizer;

pub use bleu::{Bleu, BleuConfig, BleuScore, Smoothing, corpus_bleu, sentence_bleu};
pub use bleu_tokenizer::BleuTokenizer;
pub use bootstrap::{Bootstrap, Interval};
pub use chrf::{ChrfConfig, ChrfScore, corpus_chrf, sentence_chrf};
pub use exact_match::exact_match;
pub use rouge::{RougeScore, RougeScorer, RougeType};

/// A corpus the metrics cannot score.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error("{hypotheses} hypotheses but {references} reference lists; they must pair up")]
    Unpaired {
        hypotheses: usize,
        references: usize,
    },
    #[error("nothing to score: the corpus is empty")]
    Empty,
    #[error("example {0} has no reference")]
    NoReference(usize),
}

/// Refuses corpora that do not pair up, are empty, or have an example without references.
pub fn check_corpus(hypotheses: usize, references: &[Vec<String>]) -> Result<(), MetricError> {
    if hypotheses != references.len() {
        return Err(MetricError::Unpaired {
            hypotheses,
            references: references.len(),
        });
    }
    if hypotheses == 0 {
        return Err(MetricError::Empty);
    }
    match references.iter().position(Vec::is_empty) {
        Some(i) => Err(MetricError::NoReference(i)),
        None => Ok(()),
    }
}
