//! Python `str` predicates and slices, by code point, as the ported G2P uses them.
//!
//! The reference G2P is Python and its rules are written against Python's string semantics:
//! lengths and slices count code points, `isalpha`/`isupper`/`islower` need at least one
//! qualifying character, and `s == s.lower()` holds for strings without cased letters. Getting
//! these subtly wrong changes phonemes (a word's stress comes from its case), so they live here,
//! named after the Python methods they stand for.

/// Python's `\d` (decimal digits). ASCII digits plus the common non-ASCII decimal digit blocks;
/// the English path only ever meets ASCII.
pub fn is_decimal(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    // Unicode Nd blocks start at a code point ending in 0 and run ten long; superscripts and
    // fractions (category No) are numeric but not decimal.
    c.is_numeric()
        && !matches!(c, '²' | '³' | '¹' | '¼' | '½' | '¾')
        && !('\u{2070}'..='\u{218F}').contains(&c)
        && !('\u{2460}'..='\u{24FF}').contains(&c)
        && !('\u{2776}'..='\u{2793}').contains(&c)
}

/// Python's `\w` for one character (letters, digits, numerics, underscore).
pub fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Python's `[^\W\d_]`: a word character that is neither a decimal digit nor `_` (a letter).
pub fn is_letter(c: char) -> bool {
    is_word(c) && c != '_' && !is_decimal(c)
}

/// The Python rules' `[a-zß-öø-ÿ]` (a Latin lowercase letter).
pub fn is_lo(c: char) -> bool {
    c.is_ascii_lowercase() || ('ß'..='ö').contains(&c) || ('ø'..='ÿ').contains(&c)
}

/// The Python rules' `[A-ZÀ-ÖØ-Þ]` (a Latin uppercase letter).
pub fn is_up(c: char) -> bool {
    c.is_ascii_uppercase() || ('À'..='Ö').contains(&c) || ('Ø'..='Þ').contains(&c)
}

/// Python's `str.isalpha()`.
pub fn isalpha(s: &str) -> bool {
    !s.is_empty() && s.chars().all(char::is_alphabetic)
}

/// Python's `str.isdigit()` (decimal digits and digit-like numerics such as `²`).
pub fn isdigit(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| is_decimal(c) || matches!(c, '²' | '³' | '¹'))
}

/// Python's `str.isupper()`: some cased character, none lowercase.
pub fn isupper(s: &str) -> bool {
    s.chars().any(char::is_uppercase) && !s.chars().any(char::is_lowercase)
}

/// Python's `str.islower()`: some cased character, none uppercase.
pub fn islower(s: &str) -> bool {
    s.chars().any(char::is_lowercase) && !s.chars().any(char::is_uppercase)
}

/// Python's `s == s.lower()`.
pub fn is_lower_form(s: &str) -> bool {
    s.to_lowercase() == s
}

/// Python's `s == s.upper()`.
pub fn is_upper_form(s: &str) -> bool {
    s.to_uppercase() == s
}

/// Python's `str.capitalize()`: first character upper, the rest lower.
pub fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect(),
        None => String::new(),
    }
}

/// Number of code points (Python's `len`).
pub fn len(s: &str) -> usize {
    s.chars().count()
}

/// Python's `s[..n]`.
pub fn head(s: &str, n: usize) -> &str {
    &s[..byte_at(s, n)]
}

/// Python's `s[n..]`.
pub fn tail(s: &str, n: usize) -> &str {
    &s[byte_at(s, n)..]
}

/// Python's `s[:-n]` (empty when `n` exceeds the length).
pub fn drop_last(s: &str, n: usize) -> &str {
    let l = len(s);
    head(s, l.saturating_sub(n))
}

/// Python's `s[-n:]` (the whole string when `n` exceeds the length).
pub fn last_n(s: &str, n: usize) -> &str {
    let l = len(s);
    tail(s, l.saturating_sub(n))
}

/// Last character, if any.
pub fn last_char(s: &str) -> Option<char> {
    s.chars().next_back()
}

/// Character `i` counted from the end (`s[-1 - i]`).
pub fn nth_back(s: &str, i: usize) -> Option<char> {
    s.chars().rev().nth(i)
}

fn byte_at(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(b, _)| b)
}

/// The compatibility foldings of Python's `unicodedata.normalize("NFKC", ..)` that English text
/// meets: ligatures, full-width ASCII, superscript digits, no-break spaces and a few symbols.
/// Composition of decomposed accents is done for the Latin-1 vowels and `ç`/`ñ`.
pub fn nfkc_lite(s: &str) -> String {
    if s.is_ascii() {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(&next) = chars.peek() {
            if let Some(composed) = compose(c, next) {
                out.push(composed);
                chars.next();
                continue;
            }
        }
        match c {
            '\u{FB00}' => out.push_str("ff"),
            '\u{FB01}' => out.push_str("fi"),
            '\u{FB02}' => out.push_str("fl"),
            '\u{FB03}' => out.push_str("ffi"),
            '\u{FB04}' => out.push_str("ffl"),
            '\u{FF01}'..='\u{FF5E}' => {
                out.push(char::from_u32(c as u32 - 0xFF01 + 0x21).unwrap_or(c));
            }
            '\u{00A0}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' => {
                out.push(' ')
            }
            '²' => out.push('2'),
            '³' => out.push('3'),
            '¹' => out.push('1'),
            '\u{2070}' => out.push('0'),
            '\u{2074}'..='\u{2079}' => {
                out.push(char::from_u32(c as u32 - 0x2070 + 0x30).unwrap_or(c));
            }
            '…' => out.push_str("..."),
            '™' => out.push_str("TM"),
            '\u{2024}' => out.push('.'),
            '\u{2025}' => out.push_str(".."),
            _ => out.push(c),
        }
    }
    out
}

fn compose(base: char, mark: char) -> Option<char> {
    let table: &[(char, &str)] = match mark {
        '\u{0301}' => &[
            ('a', "á"),
            ('e', "é"),
            ('i', "í"),
            ('o', "ó"),
            ('u', "ú"),
            ('y', "ý"),
        ],
        '\u{0300}' => &[('a', "à"), ('e', "è"), ('i', "ì"), ('o', "ò"), ('u', "ù")],
        '\u{0302}' => &[('a', "â"), ('e', "ê"), ('i', "î"), ('o', "ô"), ('u', "û")],
        '\u{0308}' => &[
            ('a', "ä"),
            ('e', "ë"),
            ('i', "ï"),
            ('o', "ö"),
            ('u', "ü"),
            ('y', "ÿ"),
        ],
        '\u{0303}' => &[('a', "ã"), ('n', "ñ"), ('o', "õ")],
        '\u{0327}' => &[('c', "ç")],
        _ => return None,
    };
    let lower = base.to_ascii_lowercase();
    let found = table.iter().find(|(b, _)| *b == lower)?.1.chars().next()?;
    if base.is_ascii_uppercase() {
        found.to_uppercase().next()
    } else {
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_predicates_follow_python() {
        assert!(isupper("USA"));
        assert!(!isupper("Usa"));
        assert!(isupper("U.S."));
        assert!(!isupper("..."));
        assert!(is_lower_form("..."));
        assert!(is_upper_form("..."));
        assert!(islower("don't"));
        assert_eq!(capitalize("aNNA"), "Anna");
        assert!(isalpha("café"));
        assert!(!isalpha("e-mail"));
    }

    #[test]
    fn slices_count_code_points() {
        assert_eq!(last_n("café", 3), "afé");
        assert_eq!(drop_last("café", 1), "caf");
        assert_eq!(nth_back("naïve", 2), Some('ï'));
    }

    #[test]
    fn nfkc_subset() {
        assert_eq!(nfkc_lite("ﬁle"), "file");
        assert_eq!(nfkc_lite("cafe\u{301}"), "café");
        assert_eq!(nfkc_lite("ＡＢＣ"), "ABC");
    }
}
