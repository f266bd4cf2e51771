//! Text of a growing token sequence, handed out as it becomes final.
//!
//! Decoding each new token on its own goes wrong twice: byte-level tokenizers split a
//! multi-byte character across tokens (its first token alone decodes to U+FFFD), and
//! SentencePiece drops the leading space of a piece decoded alone. [`StreamDecoder`]
//! decodes a short window of recent tokens with and without the new ones (the
//! incremental detokenization of Hugging Face's text-generation-inference and vLLM) and
//! hands out only what the new tokens add, once it ends on a complete character. Each
//! token costs a decode of a few tokens, however long the sequence grows.

/// Tokens of context kept before the first new token.
const CONTEXT: usize = 6;

/// Streams the text of `prompt` + each pushed token; `decode` is the tokenizer's.
pub struct StreamDecoder<F: Fn(&[u32]) -> Option<String>> {
    decode: F,
    ids: Vec<u32>,
    /// Where the decoded window starts.
    prefix_offset: usize,
    /// Tokens whose text has been handed out.
    read_offset: usize,
}

impl<F: Fn(&[u32]) -> Option<String>> StreamDecoder<F> {
    /// Starts after `prompt`, whose text counts as given; returns it too.
    pub fn new(decode: F, prompt: &[u32]) -> (Self, String) {
        let text = decode(prompt).unwrap_or_default();
        let stream = Self {
            decode,
            ids: prompt.to_vec(),
            prefix_offset: prompt.len().saturating_sub(CONTEXT),
            read_offset: prompt.len(),
        };
        (stream, text)
    }

    /// The window's text before and after the tokens not yet handed out, and where the
    /// new text starts in the latter.
    fn window(&self) -> (String, usize) {
        let prefix =
            (self.decode)(&self.ids[self.prefix_offset..self.read_offset]).unwrap_or_default();
        let full = (self.decode)(&self.ids[self.prefix_offset..]).unwrap_or_default();
        // Context that ends inside a character shows it as U+FFFD; the new text then
        // starts with that character, whole.
        let mut start = prefix.trim_end_matches('\u{fffd}').len().min(full.len());
        while !full.is_char_boundary(start) {
            start -= 1;
        }
        (full, start)
    }

    /// Adds `id`; returns the new text once it ends on a complete character (`None`
    /// while a character is still incomplete, or when the token adds no text).
    pub fn push(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        let (full, start) = self.window();
        if full.ends_with('\u{fffd}') || full.len() <= start {
            return None;
        }
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Some(full[start..].to_string())
    }

    /// The text not handed out yet, complete or not (the sequence ended: a character cut
    /// short shows as U+FFFD, as decoding the whole sequence shows it).
    pub fn finish(&mut self) -> String {
        let (full, start) = self.window();
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        full.get(start..).unwrap_or_default().to_string()
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

    #[test]
    fn a_prompt_ending_inside_a_character_gets_it_whole_and_long_streams_match() {
        let prompt: Vec<u32> = b"a\xF0\x9F".iter().map(|&b| u32::from(b)).collect();
        let (mut stream, _) = StreamDecoder::new(bytes, &prompt);
        assert_eq!(stream.push(0x98), None);
        assert_eq!(stream.push(0x80).as_deref(), Some("😀"));
        // A long mixed stream: the pieces are the whole decoding.
        let text = "naïve café — 日本語 😀 ".repeat(40);
        let (mut stream, _) = StreamDecoder::new(bytes, &[u32::from(b'>')]);
        let mut out = String::new();
        for b in text.bytes() {
            out += &stream.push(u32::from(b)).unwrap_or_default();
        }
        out += &stream.finish();
        assert_eq!(out, text);
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
