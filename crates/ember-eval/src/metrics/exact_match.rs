//! Exact match: a prediction counts when it equals one of its references once both are
//! stripped of surrounding white space (Hugging Face `evaluate`'s `exact_match` with its
//! defaults, plus the strip).

/// 1 when `prediction` equals any of `references` (surrounding white space ignored), else 0.
pub fn exact_match(prediction: &str, references: &[String]) -> f64 {
    let prediction = prediction.trim();
    if references.iter().any(|r| r.trim() == prediction) {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_any_reference_modulo_surrounding_space() {
        let refs = vec!["Paris".to_string(), " paris ".to_string()];
        assert_eq!(exact_match(" Paris\n", &refs), 1.0);
        assert_eq!(exact_match("paris", &refs), 1.0);
        assert_eq!(exact_match("PARIS", &refs), 0.0);
    }
}
