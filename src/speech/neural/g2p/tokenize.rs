//! Word tokenizer with spaCy's English rules, as hibari's `g2p/tokenize.py` applies them.
//!
//! The tagger and the lexicon were tuned on spaCy's tokens ("I'm" is "I" + "'m", "don't" is
//! "do" + "n't", "Sept." stays whole), so the tokens must come out the same or the phonemes
//! drift. Per whitespace-separated chunk: a special case (tokenizer_exceptions.json) is taken
//! whole; otherwise prefixes and suffixes are peeled off until the rest is a special case, URLs
//! and e-mail addresses are kept whole, infixes (hyphens, slashes, `a.B`) split the core, and
//! adjacent pieces spelling a special case are joined back.
//!
//! The Python rules use look-behind and look-ahead, which the `regex` crate lacks, so the
//! prefix, suffix and infix patterns are written out as character tests below, in the same
//! order as the Python alternations (order decides which alternative wins).

use std::collections::HashMap;

use regex::Regex;

use super::pystr::{is_letter, is_lo, is_up, is_word};

/// spaCy's `PUNCT` characters (prefixes and suffixes).
const PUNCT: &str = "…,:;!?¿¡()[]{}<>_#*&。？！，、；：～·";
/// Quote characters (prefixes and suffixes).
const QUOTES: &str = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉";
/// Icon characters (prefixes, suffixes, infixes).
const ICONS: &str = "™®©°§¶†‡•";
/// Single-character currency symbols.
const CURRENCY_CHARS: &str = "$£€¥฿₽₹₩₪₺₴₦₫₱₲₵₸₼₾₿";
/// Multi-character currency symbols, in the Python alternation's order.
const CURRENCY_MULTI: [&str; 3] = ["US$", "C$", "A$"];
/// Units split off after a digit ("5km" -> "5" "km").
const UNITS: [&str; 48] = [
    "km", "km²", "km³", "m", "m²", "m³", "dm", "dm²", "dm³", "cm", "cm²", "cm³", "mm", "mm²",
    "mm³", "ha", "µm", "nm", "yd", "in", "ft", "kg", "g", "mg", "µg", "t", "lb", "oz", "m/s",
    "km/h", "kmh", "mph", "hPa", "Pa", "mbar", "mb", "MB", "kb", "KB", "gb", "GB", "tb", "TB", "T",
    "G", "M", "K", "%",
];

fn is_currency(s: &str) -> bool {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => CURRENCY_CHARS.contains(c),
        _ => CURRENCY_MULTI.contains(&s),
    }
}

fn is_unit(s: &str) -> bool {
    UNITS.contains(&s)
}

/// The spaCy-rule tokenizer.
pub struct Tokenizer {
    special: HashMap<String, Vec<String>>,
    url: Regex,
}

impl Tokenizer {
    /// A tokenizer with the given special cases (text -> token texts).
    pub fn new(special: HashMap<String, Vec<String>>) -> Result<Tokenizer, regex::Error> {
        let url = Regex::new(
            r"(?i)^(?:(?:https?|ftp)://|www\.)\S+$|^[\w.+-]+@[\w-]+(?:\.[\w-]+)+$|^(?:[\w-]+\.)+(?:com|org|net|edu|gov|io|co|uk|de|fr|info|biz|us|ca|au|tv|me|ly|ai)(?:/\S*)?$",
        )?;
        Ok(Tokenizer { special, url })
    }

    /// Tokens of `text` as (text, followed by whitespace).
    pub fn tokenize(&self, text: &str) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
            let chunk_and_after = &rest[start..];
            let end = chunk_and_after
                .find(char::is_whitespace)
                .unwrap_or(chunk_and_after.len());
            let chunk = &chunk_and_after[..end];
            let followed = end < chunk_and_after.len();
            let toks = self.split(chunk);
            let n = toks.len();
            for (i, t) in toks.into_iter().enumerate() {
                out.push((t, followed && i + 1 == n));
            }
            rest = &chunk_and_after[end..];
        }
        out
    }

    fn is_special(&self, s: &[char]) -> bool {
        let s: String = s.iter().collect();
        self.special.contains_key(&s)
    }

    fn special_of(&self, s: &[char]) -> Option<&Vec<String>> {
        let s: String = s.iter().collect();
        self.special.get(&s)
    }

    /// One whitespace-free chunk -> token texts.
    pub fn split(&self, chunk: &str) -> Vec<String> {
        if let Some(toks) = self.special.get(chunk) {
            return toks.clone();
        }
        let mut s: Vec<char> = chunk.chars().collect();
        let mut pre: Vec<String> = Vec::new();
        let mut suf: Vec<String> = Vec::new();
        let mut last = usize::MAX;
        while !s.is_empty() && s.len() != last && !self.is_special(&s) {
            last = s.len();
            let pre_len = prefix_len(&s);
            if pre_len > 0 {
                let minus_pre = &s[pre_len..];
                if !minus_pre.is_empty() && self.is_special(minus_pre) {
                    pre.push(s[..pre_len].iter().collect());
                    s = minus_pre.to_vec();
                    break;
                }
            }
            let suf_len = suffix_len(&s[pre_len..]);
            if suf_len > 0 {
                let minus_suf = &s[..s.len() - suf_len];
                if !minus_suf.is_empty() && self.is_special(minus_suf) {
                    suf.push(s[s.len() - suf_len..].iter().collect());
                    s = minus_suf.to_vec();
                    break;
                }
            }
            if pre_len > 0 && suf_len > 0 && pre_len + suf_len <= s.len() {
                pre.push(s[..pre_len].iter().collect());
                suf.push(s[s.len() - suf_len..].iter().collect());
                s = s[pre_len..s.len() - suf_len].to_vec();
            } else if pre_len > 0 {
                pre.push(s[..pre_len].iter().collect());
                s = s[pre_len..].to_vec();
            } else if suf_len > 0 {
                suf.push(s[s.len() - suf_len..].iter().collect());
                s.truncate(s.len() - suf_len);
            }
        }
        let mut toks = pre;
        if !s.is_empty() {
            let text: String = s.iter().collect();
            if let Some(sp) = self.special_of(&s) {
                toks.extend(sp.iter().cloned());
            } else if self.url.is_match(&text) {
                toks.push(text);
            } else {
                let mut start = 0;
                for (m_start, m_end) in infixes(&s) {
                    if m_start == 0 {
                        continue;
                    }
                    if m_start > start {
                        toks.push(s[start..m_start].iter().collect());
                    }
                    toks.push(s[m_start..m_end].iter().collect());
                    start = m_end;
                }
                if start < s.len() {
                    toks.push(s[start..].iter().collect());
                }
            }
        }
        toks.extend(suf.into_iter().rev());
        if toks.len() > 1 {
            self.rejoin(toks)
        } else {
            toks
        }
    }

    /// spaCy's special-case pass over split pieces: "Sept" "." -> "Sept.".
    fn rejoin(&self, toks: Vec<String>) -> Vec<String> {
        let mut out = Vec::with_capacity(toks.len());
        let mut i = 0;
        'outer: while i < toks.len() {
            for k in [3, 2] {
                if i + k <= toks.len() {
                    let joined: String = toks[i..i + k].concat();
                    if let Some(sp) = self.special.get(&joined) {
                        out.extend(sp.iter().cloned());
                        i += k;
                        continue 'outer;
                    }
                }
            }
            out.push(toks[i].clone());
            i += 1;
        }
        out
    }
}

/// Length of the prefix at the start of `s` (Python: `^(?:p1)|^(?:p2)|..`, first alternative
/// wins), 0 if none.
fn prefix_len(s: &[char]) -> usize {
    let Some(&c) = s.first() else { return 0 };
    if "§%=—–…".contains(c) {
        return 1;
    }
    if c == '+' {
        return if s.get(1).is_some_and(char::is_ascii_digit) {
            0
        } else {
            1
        };
    }
    if PUNCT.contains(c) {
        return 1;
    }
    if c == '.' && s.get(1) == Some(&'.') {
        return s.iter().take_while(|&&d| d == '.').count();
    }
    if QUOTES.contains(c) || CURRENCY_CHARS.contains(c) {
        return 1;
    }
    for cur in CURRENCY_MULTI {
        let n = cur.chars().count();
        if s.len() >= n && s[..n].iter().copied().eq(cur.chars()) {
            return n;
        }
    }
    if ICONS.contains(c) {
        return 1;
    }
    0
}

/// Length of the suffix at the end of `s` (Python: `re.search` of `(?:a)$|(?:b)$|..`: the
/// leftmost start from which some alternative reaches the end), 0 if none. Look-behinds see
/// only `s` (the Python searches a slice).
fn suffix_len(s: &[char]) -> usize {
    for p in 0..s.len() {
        if suffix_matches(s, p) {
            return s.len() - p;
        }
    }
    0
}

fn suffix_matches(s: &[char], p: usize) -> bool {
    let rest = &s[p..];
    let rest_str: String = rest.iter().collect();
    let prev = if p > 0 { Some(s[p - 1]) } else { None };
    let prev2 = if p > 1 { Some(s[p - 2]) } else { None };
    if rest_str == "…" || rest_str == "……" {
        return true;
    }
    if rest.len() == 1 && PUNCT.contains(rest[0]) {
        return true;
    }
    if rest.len() >= 2 && rest.iter().all(|&c| c == '.') {
        return true;
    }
    if rest.len() == 1 && (QUOTES.contains(rest[0]) || ICONS.contains(rest[0])) {
        return true;
    }
    if ["'s", "'S", "’s", "’S", "—", "–"].contains(&rest_str.as_str()) {
        return true;
    }
    let after_digit = prev.is_some_and(|c| c.is_ascii_digit());
    if rest_str == "+" && after_digit {
        return true;
    }
    if rest_str == "." && prev2 == Some('°') && prev.is_some_and(|c| "FfCcKk".contains(c)) {
        return true;
    }
    if after_digit && (is_currency(&rest_str) || is_unit(&rest_str)) {
        return true;
    }
    if rest_str == "." {
        if let Some(c) = prev {
            if c.is_ascii_digit()
                || is_lo(c)
                || "%²-+".contains(c)
                || PUNCT.contains(c)
                || QUOTES.contains(c)
            {
                return true;
            }
        }
        if prev.is_some_and(is_up) && prev2.is_some_and(is_up) {
            return true;
        }
    }
    false
}

/// Infix matches of `s` as (start, end) in characters: Python `finditer` over the ordered
/// alternation, non-overlapping, scanning left to right.
fn infixes(s: &[char]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match infix_at(s, i) {
            Some(end) => {
                out.push((i, end));
                i = end.max(i + 1);
            }
            None => i += 1,
        }
    }
    out
}

fn infix_at(s: &[char], i: usize) -> Option<usize> {
    let c = s[i];
    let prev = if i > 0 { Some(s[i - 1]) } else { None };
    let next = s.get(i + 1).copied();
    // \.\.+
    if c == '.' && next == Some('.') {
        return Some(i + s[i..].iter().take_while(|&&d| d == '.').count());
    }
    if c == '…' || ICONS.contains(c) {
        return Some(i + 1);
    }
    // (?<=[0-9])[+\-\*^](?=[0-9-])
    if prev.is_some_and(|p| p.is_ascii_digit())
        && "+-*^".contains(c)
        && next.is_some_and(|n| n.is_ascii_digit() || n == '-')
    {
        return Some(i + 1);
    }
    // (?<=[LO Q])\.(?=[UP Q])
    if c == '.'
        && prev.is_some_and(|p| is_lo(p) || QUOTES.contains(p))
        && next.is_some_and(|n| is_up(n) || QUOTES.contains(n))
    {
        return Some(i + 1);
    }
    // (?<=L),(?=L)
    if c == ',' && prev.is_some_and(is_letter) && next.is_some_and(is_letter) {
        return Some(i + 1);
    }
    let after_alnum = prev.is_some_and(|p| is_word(p) && p != '_');
    // (?<=[^\W_])(?:-|–|—|--|---|——|~)(?=L)
    if after_alnum {
        for alt in ["-", "–", "—", "--", "---", "——", "~"] {
            let n = alt.chars().count();
            if s.len() >= i + n
                && s[i..i + n].iter().copied().eq(alt.chars())
                && s.get(i + n).copied().is_some_and(is_letter)
            {
                return Some(i + n);
            }
        }
        // (?<=[^\W_])[:<>=/](?=L)
        if ":<>=/".contains(c) && next.is_some_and(is_letter) {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let mut special = HashMap::new();
        for (k, v) in [
            ("I'm", vec!["I", "'m"]),
            ("can't", vec!["ca", "n't"]),
            ("don't", vec!["do", "n't"]),
            ("Mr.", vec!["Mr."]),
            ("e.g.", vec!["e.g."]),
        ] {
            special.insert(k.to_string(), v.into_iter().map(String::from).collect());
        }
        Tokenizer::new(special).unwrap()
    }

    fn texts(t: &Tokenizer, s: &str) -> Vec<String> {
        t.tokenize(s).into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn special_cases_prefixes_and_suffixes() {
        let t = tokenizer();
        assert_eq!(texts(&t, "I'm here."), ["I", "'m", "here", "."]);
        assert_eq!(texts(&t, "(can't)"), ["(", "ca", "n't", ")"]);
        assert_eq!(texts(&t, "\"Hello,\""), ["\"", "Hello", ",", "\""]);
        assert_eq!(texts(&t, "Mr. Smith's"), ["Mr.", "Smith", "'s"]);
        assert_eq!(texts(&t, "$12.50"), ["$", "12.50"]);
        assert_eq!(texts(&t, "5km"), ["5", "km"]);
        assert_eq!(texts(&t, "Wait..."), ["Wait", "..."]);
        assert_eq!(texts(&t, "USA."), ["USA", "."]);
    }

    #[test]
    fn infixes_and_urls() {
        let t = tokenizer();
        assert_eq!(texts(&t, "well-known"), ["well", "-", "known"]);
        assert_eq!(texts(&t, "and/or"), ["and", "/", "or"]);
        assert_eq!(texts(&t, "2-3"), ["2", "-", "3"]);
        assert_eq!(texts(&t, "www.example.com"), ["www.example.com"]);
        assert_eq!(texts(&t, "end.Start"), ["end", ".", "Start"]);
    }

    #[test]
    fn whitespace_flags() {
        let t = tokenizer();
        assert_eq!(
            t.tokenize("I'm  ok. "),
            [
                ("I".to_string(), false),
                ("'m".to_string(), true),
                ("ok".to_string(), false),
                (".".to_string(), true)
            ]
        );
    }
}
