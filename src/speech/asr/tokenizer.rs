//! Moonshine's token table (`tokenizer.bin`): token ids to text.
//!
//! The file is the byte-level BPE vocabulary Moonshine's own runtime reads: for each token id
//! in order, its length then its bytes. A length below 128 is one byte; otherwise it is a
//! two-byte little-endian base-128 number (low seven bits first). Tokens 0-2 are `<unk>`,
//! `<s>` and `</s>`; 3-258 stand for single bytes (UTF-8 is rebuilt across tokens); `▁`
//! (U+2581) marks a space; `<<ST_n>>` entries are unused specials. Only decoding is needed:
//! the model writes tokens, it never reads text.

use std::path::Path;

/// `<s>`: the decoder's first input.
pub const START: i64 = 1;
/// `</s>`: end of text.
pub const END: i64 = 2;

/// Why the token table could not be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenizerError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("token table truncated at byte {offset} (token {token})")]
    Truncated { offset: usize, token: usize },
    #[error("token table has {0} tokens; a Moonshine vocabulary has more than 259")]
    TooSmall(usize),
}

/// The vocabulary: each token's bytes.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    tokens: Vec<Vec<u8>>,
}

impl Tokenizer {
    /// Reads `tokenizer.bin`.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&bytes)
    }

    /// Parses the table's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, TokenizerError> {
        let mut tokens = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let truncated = TokenizerError::Truncated {
                offset: at,
                token: tokens.len(),
            };
            let first = bytes[at];
            at += 1;
            let len = if first < 0x80 {
                usize::from(first)
            } else {
                let second = *bytes.get(at).ok_or(truncated.clone())?;
                at += 1;
                usize::from(first & 0x7f) | (usize::from(second) << 7)
            };
            let end = at.checked_add(len).ok_or(truncated.clone())?;
            let token = bytes.get(at..end).ok_or(truncated)?;
            tokens.push(token.to_vec());
            at = end;
        }
        if tokens.len() <= 258 {
            return Err(TokenizerError::TooSmall(tokens.len()));
        }
        Ok(Tokenizer { tokens })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the table is empty (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether `id` carries no text (`<unk>`, `<s>`, `</s>`, unused specials, unknown ids).
    pub fn is_special(&self, id: i64) -> bool {
        match usize::try_from(id).ok().and_then(|i| self.tokens.get(i)) {
            None => true,
            Some(t) => id <= END || t.is_empty() || (t.starts_with(b"<<") && t.ends_with(b">>")),
        }
    }

    /// A token's raw bytes (`▁` still in them); empty for special tokens.
    pub fn bytes(&self, id: i64) -> &[u8] {
        if self.is_special(id) {
            return &[];
        }
        usize::try_from(id)
            .ok()
            .and_then(|i| self.tokens.get(i))
            .map_or(&[], |t| t.as_slice())
    }

    /// The text of a token sequence: bytes joined, invalid UTF-8 replaced, `▁` as spaces,
    /// trimmed.
    pub fn decode(&self, ids: &[i64]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes)
            .replace('\u{2581}', " ")
            .trim()
            .to_string()
    }

    /// Each token's text in order, with `▁` as a space: for word boundaries. A token that is
    /// part of a multi-byte character carries the whole character once it is complete (earlier
    /// parts are empty), so the pieces always concatenate to [`Tokenizer::decode`]'s text.
    pub fn pieces(&self, ids: &[i64]) -> Vec<String> {
        let mut pieces = Vec::with_capacity(ids.len());
        let mut pending: Vec<u8> = Vec::new();
        for &id in ids {
            pending.extend_from_slice(self.bytes(id));
            match std::str::from_utf8(&pending) {
                Ok(text) => {
                    pieces.push(text.replace('\u{2581}', " "));
                    pending.clear();
                }
                Err(e) if e.error_len().is_some() => {
                    pieces.push(String::from_utf8_lossy(&pending).replace('\u{2581}', " "));
                    pending.clear();
                }
                Err(_) => pieces.push(String::new()), // an incomplete character: wait
            }
        }
        pieces
    }
}

#[cfg(test)]
/// A token table (the file's bytes) with the specials, the 256 byte tokens and a few words.
pub(crate) fn table(extra: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |t: &[u8]| {
        if t.len() < 128 {
            out.push(t.len() as u8);
        } else {
            out.push(0x80 | (t.len() & 0x7f) as u8);
            out.push((t.len() >> 7) as u8);
        }
        out.extend_from_slice(t);
    };
    push(b"<unk>");
    push(b"<s>");
    push(b"</s>");
    for b in 0..=255u8 {
        push(&[b]);
    }
    for t in extra {
        push(t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_words_and_spaces() {
        let t = Tokenizer::parse(&table(&[
            "▁Where".as_bytes(),
            "▁is".as_bytes(),
            b"<<ST_1>>",
        ]))
        .unwrap();
        assert_eq!(t.len(), 262);
        assert_eq!(t.decode(&[START, 259, 260, 261, END]), "Where is");
        assert!(t.is_special(261));
        assert!(t.is_special(99_999));
        assert!(t.is_special(-1));
    }

    #[test]
    fn multibyte_characters_across_byte_tokens() {
        let t = Tokenizer::parse(&table(&[])).unwrap();
        // "é" is C3 A9: byte tokens 3 + 0xC3 and 3 + 0xA9.
        let ids = [3 + 0xC3, 3 + 0xA9, 3 + b'!' as i64];
        assert_eq!(t.decode(&ids), "é!");
        assert_eq!(t.pieces(&ids), ["", "é", "!"]);
    }

    #[test]
    fn long_tokens_use_two_length_bytes() {
        let long = vec![b'a'; 300];
        let t = Tokenizer::parse(&table(&[&long])).unwrap();
        assert_eq!(t.bytes(259).len(), 300);
    }

    #[test]
    fn truncated_tables_are_errors_not_panics() {
        let mut bytes = table(&[b"abc"]);
        bytes.truncate(bytes.len() - 1);
        assert!(matches!(
            Tokenizer::parse(&bytes),
            Err(TokenizerError::Truncated { token: 259, .. })
        ));
        assert!(matches!(
            Tokenizer::parse(&[0x85]),
            Err(TokenizerError::Truncated { .. })
        ));
        assert_eq!(
            Tokenizer::parse(&[]).unwrap_err(),
            TokenizerError::TooSmall(0)
        );
    }
}
