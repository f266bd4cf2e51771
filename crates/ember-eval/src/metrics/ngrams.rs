//! Text splitting and n-gram counting shared by the metrics, with Python's rules: the
//! reference packages split on `str.split()`'s whitespace and index strings by code point.

use std::collections::HashMap;

/// Whether Python's `str.isspace` holds for `c`: Unicode white space plus the ASCII
/// information separators `\x1c`–`\x1f`, which Python also splits on.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `text.split()` in Python: the runs of non-space characters.
pub fn python_split(text: &str) -> Vec<&str> {
    text.split(is_python_space)
        .filter(|s| !s.is_empty())
        .collect()
}

/// `text.rstrip()` in Python.
pub fn python_rstrip(text: &str) -> &str {
    text.trim_end_matches(is_python_space)
}

/// Counts of n-grams, keyed by their tokens joined with single spaces (tokens hold no
/// white space, so the key is unambiguous for a given `n`).
pub type NgramCounts = HashMap<String, usize>;

/// The `n`-grams of `tokens` and how often each occurs (empty when `tokens` is shorter
/// than `n`).
pub fn word_ngrams<S: AsRef<str>>(tokens: &[S], n: usize) -> NgramCounts {
    let mut counts = NgramCounts::new();
    if n == 0 || tokens.len() < n {
        return counts;
    }
    for window in tokens.windows(n) {
        let key = window
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(" ");
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// The character `n`-grams of `chars` (code points, as Python indexes strings).
pub fn char_ngrams(chars: &[char], n: usize) -> NgramCounts {
    let mut counts = NgramCounts::new();
    if n == 0 || chars.len() < n {
        return counts;
    }
    for window in chars.windows(n) {
        *counts.entry(window.iter().collect()).or_insert(0) += 1;
    }
    counts
}

/// `Σ_g min(hyp[g], reference[g])`: the clipped matches of `hyp`'s n-grams.
pub fn clipped_matches(hyp: &NgramCounts, reference: &NgramCounts) -> usize {
    hyp.iter()
        .map(|(gram, &count)| count.min(reference.get(gram).copied().unwrap_or(0)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_python() {
        // Python: "a\x1cb\u00a0c  d\n".split() == ['a', 'b', 'c', 'd']
        assert_eq!(python_split("a\u{1c}b\u{a0}c  d\n"), ["a", "b", "c", "d"]);
        assert_eq!(python_split("   "), Vec::<&str>::new());
        assert_eq!(python_rstrip("ab \u{1f}\t"), "ab");
    }

    #[test]
    fn counts_ngrams() {
        let counts = word_ngrams(&["a", "b", "a", "b"], 2);
        assert_eq!(counts["a b"], 2);
        assert_eq!(counts["b a"], 1);
        assert!(word_ngrams(&["a"], 2).is_empty());
        let chars: Vec<char> = "ééa".chars().collect();
        assert_eq!(char_ngrams(&chars, 2)["éé"], 1);
        let hyp = word_ngrams(&["x", "x", "y"], 1);
        let reference = word_ngrams(&["x", "z"], 1);
        assert_eq!(clipped_matches(&hyp, &reference), 1);
    }
}
