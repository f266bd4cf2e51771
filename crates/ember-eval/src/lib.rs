//! Ember's evaluation and analysis: text metrics identical to sacrebleu and rouge-score
//! ([`metrics`]), the `ember eval` report ([`report`]), attention maps and their analysis
//! ([`attention`]), and figures ([`plot`]).

pub mod attention;
pub mod metrics;
pub mod perplexity;
pub mod plot;
pub mod report;
