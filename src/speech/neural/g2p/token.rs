//! The token record shared by the tokenizer, tagger and lexicon (hibari's `g2p/token.py`,
//! misaki's `MToken`), and the merge of subtokens into one word.
//!
//! Fields the reference carries but that never change the phonemes here (a rating, per-token
//! stress overrides, number flags) are left out.

/// One token on its way to phonemes.
#[derive(Debug, Clone, Default)]
pub struct Tok {
    pub text: String,
    pub tag: String,
    /// Followed by whitespace in the input (the phoneme string gets a space there).
    pub whitespace: bool,
    pub phonemes: Option<String>,
    /// First subtoken of a whitespace-separated word.
    pub is_head: bool,
    /// Text to read instead of `text` ("2" between letters reads "to").
    pub alias: Option<String>,
    /// Currency symbol that precedes this number ("$" for "12.50").
    pub currency: Option<String>,
    /// Whether this subtoken's phonemes are spaced from the previous one's when merged.
    pub prespace: bool,
}

fn case_weight(text: &str) -> usize {
    text.chars()
        .map(|c| {
            if c.to_lowercase().eq(std::iter::once(c)) {
                1
            } else {
                2
            }
        })
        .sum()
}

/// The subtokens' texts as one string, a space after each followed by whitespace (but the
/// last).
pub fn joined_text(tokens: &[Tok]) -> String {
    let mut text = String::new();
    for (i, tk) in tokens.iter().enumerate() {
        text.push_str(&tk.text);
        if tk.whitespace && i + 1 < tokens.len() {
            text.push(' ');
        }
    }
    text
}

/// Several subtokens as one word. With `unk`, the phonemes are joined too (unknown ones as
/// `unk`); without, the merged token has none (it is about to be looked up).
pub fn merge_tokens(tokens: &[Tok], unk: Option<&str>) -> Tok {
    let Some(last) = tokens.last() else {
        return Tok::default();
    };
    let phonemes = unk.map(|unk| {
        let mut ps = String::new();
        for tk in tokens {
            let prev_is_space = ps.chars().next_back().is_some_and(char::is_whitespace);
            if tk.prespace
                && !ps.is_empty()
                && !prev_is_space
                && tk.phonemes.as_deref().is_some_and(|p| !p.is_empty())
            {
                ps.push(' ');
            }
            ps.push_str(tk.phonemes.as_deref().unwrap_or(unk));
        }
        ps
    });
    let text = joined_text(tokens);
    // Python's max() keeps the first of equal keys.
    let mut tag_tok = &tokens[0];
    let mut best = case_weight(&tag_tok.text);
    for tk in &tokens[1..] {
        let w = case_weight(&tk.text);
        if w > best {
            best = w;
            tag_tok = tk;
        }
    }
    Tok {
        text,
        tag: tag_tok.tag.clone(),
        whitespace: last.whitespace,
        phonemes,
        is_head: tokens[0].is_head,
        alias: None,
        currency: tokens.iter().filter_map(|t| t.currency.clone()).max(),
        prespace: tokens[0].prespace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(text: &str, tag: &str, ps: Option<&str>) -> Tok {
        Tok {
            text: text.into(),
            tag: tag.into(),
            phonemes: ps.map(String::from),
            is_head: true,
            ..Tok::default()
        }
    }

    #[test]
    fn merge_takes_the_tag_of_the_most_capitalised_piece() {
        let m = merge_tokens(&[tok("do", "VBP", None), tok("N'T", "RB", None)], None);
        assert_eq!(m.text, "doN'T");
        assert_eq!(m.tag, "RB");
        assert!(m.phonemes.is_none());
    }

    #[test]
    fn merge_joins_phonemes_with_prespace() {
        let mut b = tok("b", "NN", Some("bˈi"));
        b.prespace = true;
        let m = merge_tokens(
            &[tok("a", "NN", Some("ˈA")), b, tok("c", "NN", None)],
            Some(""),
        );
        assert_eq!(m.phonemes.as_deref(), Some("ˈA bˈi"));
    }
}
