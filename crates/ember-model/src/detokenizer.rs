//! Text of a growing token sequence, handed out as it becomes final.
//!
//! Decoding each new token on its own goes wrong twice: byte-level tokenizers split a
//! multi-byte character across tokens (its first token alone decodes to U+FFFD), and
//! SentencePiece drops the leading space of a piece decoded alone. [`StreamDecoder`]
//! decodes the whole sequence each time and hands out only what follows the text already
//! given, once it ends on a complete character.

/// Streams the text of `prompt` + each pushed token; `decode` is the tokenizer's.
pub struct StreamDecoder<F: Fn(&[u32]) -> Option<String>> {
    decode: F,
    ids: Vec<u32>,
    /// Bytes of the decoded text already handed out.
    given: usize,
}

impl<F: Fn(&[u32]) -> Option<String>> StreamDecoder<F> {
    /// Starts after `prompt`, whose text counts as given; returns it too.
    pub fn new(decode: F, prompt: &[u32]) -> (Self, String) {
        let text = decode(prompt).unwrap_or_default();
        let stream = Self {
            decode,
            ids: prompt.to_vec(),
            given: text.len(),
        };
        (stream, text)
    }

    /// Adds `id`; returns the new text once it ends on a complete character (`None`
    /// while a character is still incomplete, or when the token adds no text).
    pub fn push(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        let text = (self.decode)(&self.ids)?;
        let complete = !text.ends_with('\u{fffd}')
            && text.len() > self.given
            && text.is_char_boundary(self.given);
        if !complete {
            return None;
        }
        let new = text[self.given..].to_string();
        self.given = text.len();
        Some(new)
    }

    /// The text not handed out yet, complete or not (the sequence ended: a character cut
    /// short shows as U+FFFD, as decoding the whole sequence shows it).
    pub fn finish(&mut self) -> String {
        let text = (self.decode)(&self.ids).unwrap_or_default();
        let new = text.get(self.given..).unwrap_or_default().to_string();
        self.given = self.given.max(text.len());
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level "tokenizer": each id is one byte.
    fn bytes(ids: &[u32]) -> Option<String> {
        let bytes: Vec<u8> = ids.iter().map(|&b| b as u8).collect();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    #[test]
    fn multi_byte_characters_come_out_whole() {
        let prompt: Vec<u32> = "ab".bytes().map(u32::from).collect();
        let (mut stream, shown) = StreamDecoder::new(bytes, &prompt);
        assert_eq!(shown, "ab");
        let mut pieces = Vec::new();
        for b in "é€😀x".bytes() {
            if let Some(piece) = stream.push(u32::from(b)) {
                pieces.push(piece);
            }
        }
        assert_eq!(pieces, vec!["é", "€", "😀", "x"]);
        // A character cut short comes out at the end, as the whole decoding shows it.
        assert_eq!(stream.push(0xe2), None);
        assert_eq!(stream.finish(), "\u{fffd}");
        assert_eq!(stream.finish(), "");
    }

    /// A SentencePiece-like decoder that strips the leading space of the whole text:
    /// pieces decoded alone would lose their spaces, decoded together they keep them.
    #[test]
    fn spaces_between_pieces_survive() {
        let vocab = ["▁the", "▁cat", "▁sat"];
        let decode = |ids: &[u32]| {
            let text: String = ids.iter().map(|&i| vocab[i as usize]).collect();
            Some(text.replace('▁', " ").trim_start().to_string())
        };
        let (mut stream, shown) = StreamDecoder::new(decode, &[0]);
        let mut text = shown;
        for id in [1, 2] {
            text += &stream.push(id).unwrap();
        }
        assert_eq!(text, "the cat sat");
    }
}
