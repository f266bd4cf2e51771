//! What makes a corpus unscorable, checked before any metric runs.

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
