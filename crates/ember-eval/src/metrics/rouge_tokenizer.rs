//! rouge-score's default tokenizer: lowercase, every run of characters outside `[a-z0-9]`
//! becomes a space, tokens longer than 3 characters Porter-stemmed when asked (NLTK's
//! stemmer, see [`super::porter`]).

/// The tokens of `text` as rouge-score's `tokenize(text, stemmer)` returns them.
pub fn rouge_tokens(text: &str, stem: bool) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String| {
        if !current.is_empty() {
            let token = std::mem::take(current);
            tokens.push(if stem && token.len() > 3 {
                super::porter::stem(&token)
            } else {
                token
            });
        }
    };
    for c in lower.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            current.push(c);
        } else {
            flush(&mut current);
        }
    }
    flush(&mut current);
    // The stemmer can only shorten a token of [a-z0-9]; rouge-score's final filter of
    // tokens matching ^[a-z0-9]+$ then keeps them all.
    tokens.retain(|t| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_everything_outside_ascii_letters_and_digits() {
        assert_eq!(
            rouge_tokens("Hello, WORLD! It's 3.14 — café", false),
            ["hello", "world", "it", "s", "3", "14", "caf"]
        );
        assert!(rouge_tokens("中文 …", false).is_empty());
    }
}
