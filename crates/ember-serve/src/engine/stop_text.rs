//! Stop strings across token boundaries: text is released only once no stop string can
//! still begin in it, and generation ends before the first stop string found.

/// The text of one continuation, released as it becomes certain.
#[derive(Debug, Clone, Default)]
pub struct StopText {
    stops: Vec<String>,
    /// Bytes held back: one less than the longest stop string.
    hold: usize,
    text: String,
    released: usize,
}

impl StopText {
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let hold = stops.iter().map(|s| s.len()).max().unwrap_or(1) - 1;
        Self {
            stops,
            hold,
            text: String::new(),
            released: 0,
        }
    }

    /// Adds `piece`; returns the text now certain and whether a stop string was found
    /// (the text then ends where the stop string began).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        let open = &self.text[self.released..];
        // A stop string that began in released text would have been found when it was
        // released whole, so only the open text is searched.
        let found = self
            .stops
            .iter()
            .filter_map(|s| open.find(s.as_str()))
            .min();
        if let Some(at) = found {
            let out = open[..at].to_string();
            self.released = self.text.len();
            return (out, true);
        }
        let mut to = self.text.len().saturating_sub(self.hold).max(self.released);
        while !self.text.is_char_boundary(to) {
            to -= 1;
        }
        let out = self.text[self.released..to].to_string();
        self.released = to;
        (out, false)
    }

    /// Everything not yet released (the continuation ended without a stop string).
    pub fn finish(&mut self) -> String {
        let out = self.text[self.released..].to_string();
        self.released = self.text.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut text = StopText::new(&stops);
        let mut out = String::new();
        for piece in pieces {
            let (released, stopped) = text.push(piece);
            out += &released;
            if stopped {
                return (out, true);
            }
        }
        out += &text.finish();
        (out, false)
    }

    #[test]
    fn a_stop_string_split_over_tokens_ends_the_text_before_it() {
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dxyz"]),
            ("abc".into(), true)
        );
        assert_eq!(
            run(&["\n\n", "STOP"], &["a\n", "b\n", "\nc"]),
            ("a\nb".into(), true)
        );
        // The earliest of several stops wins, whichever is listed first.
        assert_eq!(run(&["zz", "b"], &["abzz"]), ("a".into(), true));
    }

    #[test]
    fn text_without_a_stop_string_comes_out_whole_and_held_text_is_bounded() {
        assert_eq!(
            run(&["END"], &["EN", "x", "é€", "E"]),
            ("ENxé€E".into(), false)
        );
        let mut text = StopText::new(&["longstop".to_string()]);
        let (out, _) = text.push("0123456789");
        assert_eq!(out, "012");
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        // Held-back text never splits a character.
        let mut text = StopText::new(&["xx".to_string()]);
        assert_eq!(text.push("aé").0, "a");
        assert_eq!(text.finish(), "é");
    }
}
