//! Ember's evaluation and analysis: text metrics identical to sacrebleu and rouge-score
//! ([`metrics`]), the `ember eval` report ([`report`]), attention maps and their analysis
//! ([`attention`]), perplexity of references ([`perplexity`]). Figures are `ember-plot`'s.

pub mod attention;
pub mod metrics;
pub mod perplexity;
pub mod report;
