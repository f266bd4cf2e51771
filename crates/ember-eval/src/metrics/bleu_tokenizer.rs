//! The tokenizers of sacrebleu's BLEU (`--tokenize`): `13a` (mteval-v13a, the default),
//! `intl` (mteval-v14's international tokenization), `char` and `none`. Each returns the
//! line with its tokens separated by single spaces, as sacrebleu's do.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;

use super::ngrams::python_split;

/// How hypotheses and references are split into words before counting n-grams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BleuTokenizer {
    /// mteval-v13a: punctuation and symbols split off, except periods and commas
    /// between digits and dashes not after a digit.
    #[default]
    Mteval13a,
    /// mteval-v14 international: Unicode punctuation split off unless it is between
    /// digits, Unicode symbols split off.
    Intl,
    /// Every character is a token.
    Char,
    /// White space only (the text is already tokenized).
    None,
}

impl BleuTokenizer {
    /// The name sacrebleu's signature and `--tokenize` use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mteval13a => "13a",
            Self::Intl => "intl",
            Self::Char => "char",
            Self::None => "none",
        }
    }

    /// `line` tokenized: tokens separated by single spaces.
    pub fn tokenize(self, line: &str) -> String {
        match self {
            Self::Mteval13a => mteval_13a(line),
            Self::Intl => intl(line),
            Self::Char => {
                let chars: Vec<String> = line.chars().map(String::from).collect();
                chars.join(" ")
            }
            Self::None => line.to_string(),
        }
    }
}

impl fmt::Display for BleuTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BleuTokenizer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "13a" => Ok(Self::Mteval13a),
            "intl" => Ok(Self::Intl),
            "char" => Ok(Self::Char),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown BLEU tokenizer `{other}`; expected one of 13a, intl, char, none"
            )),
        }
    }
}

/// Substitutions applied in order, each over the whole line (leftmost, non-overlapping).
struct Rules(Vec<(Regex, &'static str)>);

impl Rules {
    fn new(rules: &[(&str, &'static str)]) -> Self {
        Self(
            rules
                .iter()
                .map(|(pattern, replacement)| {
                    (
                        Regex::new(pattern).expect("a valid tokenizer pattern"),
                        *replacement,
                    )
                })
                .collect(),
        )
    }

    /// The rules applied to `line`, white space then collapsed to single spaces.
    fn apply(&self, line: &str) -> String {
        let mut line = line.to_string();
        for (pattern, replacement) in &self.0 {
            line = pattern.replace_all(&line, *replacement).into_owned();
        }
        python_split(&line).join(" ")
    }
}

static RULES_13A: LazyLock<Rules> = LazyLock::new(|| {
    Rules::new(&[
        // ASCII punctuation and symbols (and the space itself) become separate tokens:
        // `{`–`~`, `[`–`` ` ``, ` `–`&`, `(`–`+`, `:`–`@`, `/`.
        (r"([{-~\[-`\x20-&(-+:-@/])", " ${1} "),
        // Periods and commas, unless a digit is before ...
        (r"([^0-9])([.,])", "${1} ${2} "),
        // ... or after them.
        (r"([.,])([^0-9])", " ${1} ${2}"),
        // A dash after a digit.
        (r"([0-9])(-)", "${1} ${2} "),
    ])
});

static RULES_INTL: LazyLock<Rules> = LazyLock::new(|| {
    Rules::new(&[
        (r"(\P{N})(\p{P})", "${1} ${2} "),
        (r"(\p{P})(\P{N})", " ${1} ${2}"),
        (r"(\p{S})", " ${1} "),
    ])
});

fn mteval_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    RULES_13A.apply(&format!(" {line} "))
}

fn intl(line: &str) -> String {
    RULES_INTL.apply(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirteen_a_splits_punctuation_but_not_numbers() {
        let t = BleuTokenizer::Mteval13a;
        assert_eq!(t.tokenize("Hello, world!"), "Hello , world !");
        assert_eq!(
            t.tokenize("It costs 3.14, or 1,000."),
            "It costs 3.14 , or 1,000 ."
        );
        assert_eq!(t.tokenize("2-3 x-y"), "2 - 3 x-y");
        assert_eq!(t.tokenize("a &amp; b"), "a & b");
    }

    #[test]
    fn names_round_trip() {
        for t in [
            BleuTokenizer::Mteval13a,
            BleuTokenizer::Intl,
            BleuTokenizer::Char,
            BleuTokenizer::None,
        ] {
            assert_eq!(t.name().parse::<BleuTokenizer>(), Ok(t));
        }
        assert!("zh".parse::<BleuTokenizer>().is_err());
    }
}
