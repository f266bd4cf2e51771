//! Text metrics identical to their reference packages: BLEU and chrF (sacrebleu), ROUGE
//! (rouge-score, with NLTK's Porter stemmer), exact match, bootstrap intervals.

pub mod bleu;
pub mod bleu_tokenizer;
pub mod bootstrap;
pub mod chrf;
pub mod error;
pub mod exact_match;
pub mod ngrams;
pub mod porter;
pub mod rouge;
pub mod rouge_tokenizer;

pub use bleu::{Bleu, BleuConfig, BleuScore, Smoothing, corpus_bleu, sentence_bleu};
pub use bleu_tokenizer::BleuTokenizer;
pub use bootstrap::{Bootstrap, Interval};
pub use chrf::{ChrfConfig, ChrfScore, corpus_chrf, sentence_chrf};
pub use error::{MetricError, check_corpus};
pub use exact_match::exact_match;
pub use rouge::{RougeScore, RougeScorer, RougeType};
