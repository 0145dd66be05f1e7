//! Phrase patterns over stemmed words, shared by the intent classifier, the critical-keyword
//! check and the tone lexicon.
//!
//! Configuration authors write natural phrases (`"where * order"`, `"cancel my contract"`,
//! `"fed up"`); callers say them in many inflections and with filler words in between. A
//! [`Pattern`] is such a phrase compiled into stems with `*` gaps (up to [`MAX_GAP`] words),
//! `^`/`$` anchors for the start/end of the utterance, and optional one-edit fuzzy matching of
//! long words (ASR misspellings). [`Synonyms`] rewrite variant wordings (`"sign in"`, `"login"`)
//! to one canonical form on both sides, and [`TokenStream`] keeps track of which words of the
//! normalised text each stem came from, so evidence can quote the caller's own words.

use std::collections::BTreeMap;

use super::normalize::{self, normalize};

/// The most words a `*` gap skips.
pub const MAX_GAP: usize = 3;

/// One stem of an utterance and the normalised-text words (inclusive range) it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub stem: String,
    pub first: usize,
    pub last: usize,
}

/// The stems of a normalised utterance with a way back to its words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenStream {
    surface: Vec<String>,
    tokens: Vec<Token>,
}

impl TokenStream {
    /// Tokenises normalised text (see [`normalize::words`]), applying `synonyms` if given.
    pub fn new(normalized: &str, synonyms: Option<&Synonyms>) -> Self {
        let surface = normalized.split_whitespace().map(str::to_string).collect();
        let tokens: Vec<Token> = normalize::words(normalized)
            .into_iter()
            .map(|w| Token {
                stem: w.stem,
                first: w.source,
                last: w.source,
            })
            .collect();
        let tokens = match synonyms {
            Some(s) => s.apply(tokens),
            None => tokens,
        };
        TokenStream { surface, tokens }
    }

    /// The stems, in order.
    pub fn stems(&self) -> Vec<&str> {
        self.tokens.iter().map(|t| t.stem.as_str()).collect()
    }

    /// The tokens.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// The caller's words covered by tokens `start..end` (exclusive), as normalised text.
    pub fn quote(&self, start: usize, end: usize) -> String {
        let (Some(first), Some(last)) = (
            self.tokens.get(start),
            end.checked_sub(1).and_then(|e| self.tokens.get(e)),
        ) else {
            return String::new();
        };
        self.surface
            .get(first.first..=last.last.max(first.first))
            .map(|words| words.join(" "))
            .unwrap_or_default()
    }
}

/// Variant wordings rewritten to a canonical one before matching (`"sign in"` → `"log in"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synonyms {
    /// (variant stems, canonical stems), longest variant first.
    rules: Vec<(Vec<String>, Vec<String>)>,
}

/// Where a synonym definition is wrong: the canonical key, the variant index (if a variant),
/// and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynonymError {
    pub canonical: String,
    pub variant: Option<usize>,
    pub reason: String,
}

impl Synonyms {
    /// Builds the rewrite rules from `canonical = [variants]`.
    pub fn new(map: &BTreeMap<String, Vec<String>>) -> Result<Self, SynonymError> {
        let mut rules: Vec<(Vec<String>, Vec<String>)> = Vec::new();
        let mut seen: BTreeMap<Vec<String>, String> = BTreeMap::new();
        for (canonical, variants) in map {
            let err = |variant, reason: String| SynonymError {
                canonical: canonical.clone(),
                variant,
                reason,
            };
            let target = plain_stems(canonical);
            if target.is_empty() {
                return Err(err(None, "the canonical wording has no words".into()));
            }
            if variants.is_empty() {
                return Err(err(None, "lists no variants".into()));
            }
            for (i, variant) in variants.iter().enumerate() {
                let from = plain_stems(variant);
                if from.is_empty() {
                    return Err(err(Some(i), "variant has no words".into()));
                }
                if from == target {
                    continue;
                }
                if let Some(other) = seen.insert(from.clone(), canonical.clone()) {
                    return Err(err(
                        Some(i),
                        format!("variant \"{variant}\" is already a variant of \"{other}\""),
                    ));
                }
                rules.push((from, target.clone()));
            }
        }
        rules.sort_by_key(|rule| std::cmp::Reverse(rule.0.len()));
        Ok(Synonyms { rules })
    }

    /// Rewrites variants in a token sequence (one left-to-right pass, longest variant first).
    pub fn apply(&self, tokens: Vec<Token>) -> Vec<Token> {
        if self.rules.is_empty() {
            return tokens;
        }
        let mut out = Vec::with_capacity(tokens.len());
        let mut i = 0;
        while i < tokens.len() {
            let rule = self.rules.iter().find(|(from, _)| {
                tokens
                    .get(i..i + from.len())
                    .is_some_and(|window| window.iter().zip(from).all(|(t, f)| t.stem == *f))
            });
            match rule {
                Some((from, to)) => {
                    let first = tokens[i].first;
                    let last = tokens[i + from.len() - 1].last;
                    out.extend(to.iter().map(|stem| Token {
                        stem: stem.clone(),
                        first,
                        last,
                    }));
                    i += from.len();
                }
                None => {
                    out.push(tokens[i].clone());
                    i += 1;
                }
            }
        }
        out
    }

    /// Applies the rules to bare stems (used when compiling patterns and examples).
    fn apply_stems(&self, stems: Vec<String>) -> Vec<String> {
        let tokens = stems
            .into_iter()
            .map(|stem| Token {
                stem,
                first: 0,
                last: 0,
            })
            .collect();
        self.apply(tokens).into_iter().map(|t| t.stem).collect()
    }
}

/// Stems of a plain phrase (normalised like a transcript).
fn plain_stems(text: &str) -> Vec<String> {
    normalize::words(&normalize(text))
        .into_iter()
        .map(|w| w.stem)
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Word(String),
    Gap,
    Start,
    End,
}

/// A compiled phrase pattern (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    items: Vec<Item>,
}

/// Where a pattern matched: tokens `start..end`, and whether a word matched only fuzzily.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub start: usize,
    pub end: usize,
    pub fuzzy: bool,
}

impl Pattern {
    /// Compiles a phrase such as `"where * order"` or `"^ no thanks"`; `synonyms` are applied to
    /// the literal words, as they are to utterances.
    pub fn compile(text: &str, synonyms: Option<&Synonyms>) -> Result<Self, String> {
        let mut items = Vec::new();
        let mut literal: Vec<String> = Vec::new();
        let flush = |literal: &mut Vec<String>, items: &mut Vec<Item>| {
            let stems = std::mem::take(literal);
            let stems = match synonyms {
                Some(s) => s.apply_stems(stems),
                None => stems,
            };
            items.extend(stems.into_iter().map(Item::Word));
        };
        for part in text.split_whitespace() {
            match part {
                "*" | "^" | "$" => {
                    flush(&mut literal, &mut items);
                    items.push(match part {
                        "*" => Item::Gap,
                        "^" => Item::Start,
                        _ => Item::End,
                    });
                }
                word => {
                    if word.contains(['*', '^', '$']) {
                        return Err(format!(
                            "`{word}`: write `*`, `^` and `$` as separate words"
                        ));
                    }
                    literal.extend(plain_stems(word));
                }
            }
        }
        flush(&mut literal, &mut items);
        if !items.iter().any(|i| matches!(i, Item::Word(_))) {
            return Err("has no words to match".into());
        }
        for (i, item) in items.iter().enumerate() {
            let prev = i.checked_sub(1).and_then(|p| items.get(p));
            let next = items.get(i + 1);
            match item {
                Item::Start if i != 0 => return Err("`^` must come first".into()),
                Item::End if i + 1 != items.len() => return Err("`$` must come last".into()),
                Item::Gap
                    if !matches!(prev, Some(Item::Word(_)))
                        || !matches!(next, Some(Item::Word(_))) =>
                {
                    return Err("`*` must stand between two words".into())
                }
                _ => {}
            }
        }
        Ok(Pattern {
            source: text.split_whitespace().collect::<Vec<_>>().join(" "),
            items,
        })
    }

    /// The phrase as written in the configuration.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether one of the pattern's literal stems is `stem`.
    pub fn has_word(&self, stem: &str) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i, Item::Word(w) if w == stem))
    }

    /// All non-overlapping matches, left to right.
    pub fn find_all(&self, stems: &[&str], fuzzy: bool) -> Vec<Match> {
        let anchored = matches!(self.items.first(), Some(Item::Start));
        let mut found = Vec::new();
        let mut start = 0;
        while start <= stems.len() && !(anchored && start > 0) {
            match match_at(&self.items, stems, start, fuzzy) {
                Some((end, fuzzy)) => {
                    found.push(Match { start, end, fuzzy });
                    start = end.max(start + 1);
                }
                None => start += 1,
            }
        }
        found
    }

    /// The first (leftmost, then shortest) match in `stems`. With `fuzzy`, a pattern word of six
    /// or more letters also matches a word one edit away.
    pub fn find(&self, stems: &[&str], fuzzy: bool) -> Option<Match> {
        let anchored = matches!(self.items.first(), Some(Item::Start));
        let last_start = if anchored { 0 } else { stems.len() };
        (0..=last_start).find_map(|start| {
            match_at(&self.items, stems, start, fuzzy).map(|(end, fuzzy)| Match {
                start,
                end,
                fuzzy,
            })
        })
    }
}

/// Matches `items` at `pos`; returns the end position and whether a fuzzy match was used.
fn match_at(items: &[Item], stems: &[&str], pos: usize, fuzzy: bool) -> Option<(usize, bool)> {
    let Some((item, rest)) = items.split_first() else {
        return Some((pos, false));
    };
    match item {
        Item::Start => (pos == 0)
            .then(|| match_at(rest, stems, pos, fuzzy))
            .flatten(),
        Item::End => (pos == stems.len()).then_some((pos, false)),
        Item::Gap => (0..=MAX_GAP)
            .filter(|skip| pos + skip <= stems.len())
            .find_map(|skip| match_at(rest, stems, pos + skip, fuzzy)),
        Item::Word(word) => {
            let token = stems.get(pos)?;
            let exact = token == word;
            if !(exact || fuzzy && near(word, token)) {
                return None;
            }
            match_at(rest, stems, pos + 1, fuzzy).map(|(end, f)| (end, f || !exact))
        }
    }
}

/// Whether two alphabetic stems of six or more letters are at most one edit (insertion,
/// deletion, substitution or adjacent transposition) apart.
fn near(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len() < 6 || b.len() < 5 || !b.iter().all(|c| c.is_ascii_lowercase()) {
        return false;
    }
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (ra, rb) = (&a[prefix..], &b[prefix..]);
    match (ra.len(), rb.len()) {
        (0, 0) => true,
        (x, y) if x == y => {
            ra[1..] == rb[1..] || (x >= 2 && ra[0] == rb[1] && ra[1] == rb[0] && ra[2..] == rb[2..])
        }
        (x, y) if x > y => ra[1..] == *rb,
        _ => *ra == rb[1..],
    }
}

/// Words that negate what follows (after contraction expansion `can't` is `can not`).
pub const NEGATORS: &[&str] = &["not", "never", "no", "hardly", "barely"];

/// The negator found within `scope` words before token `start`, skipping `transparent` stems
/// (intensifiers such as `very`), if any.
pub fn negation_before<'a>(
    stems: &[&'a str],
    start: usize,
    scope: usize,
    transparent: &[&str],
) -> Option<&'a str> {
    let mut counted = 0;
    for &stem in stems.get(..start)?.iter().rev() {
        if NEGATORS.contains(&stem) {
            return Some(stem);
        }
        if !transparent.contains(&stem) {
            counted += 1;
            if counted >= scope {
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(text: &str) -> TokenStream {
        TokenStream::new(&normalize(text), None)
    }

    fn find(pattern: &str, text: &str) -> Option<String> {
        let p = Pattern::compile(pattern, None).expect("pattern");
        let s = stream(text);
        p.find(&s.stems(), true).map(|m| s.quote(m.start, m.end))
    }

    #[test]
    fn gaps_anchors_and_inflections() {
        assert_eq!(
            find("where * order", "Where is my order?").as_deref(),
            Some("where is my order")
        );
        assert_eq!(
            find("where * order", "where is it, my order").as_deref(),
            Some("where is it my order")
        );
        assert_eq!(
            find("where * order", "where did you put the big order"),
            None,
            "gap too long"
        );
        assert_eq!(
            find("package * not * arrive", "My package hasn't arrived").as_deref(),
            Some("package hasn't arrived")
        );
        assert_eq!(find("^ no", "no thanks").as_deref(), Some("no"));
        assert_eq!(find("^ no", "well no"), None);
        assert_eq!(find("no $", "well no").as_deref(), Some("no"));
        assert_eq!(find("opened", "are you open").as_deref(), Some("open"));
        assert_eq!(
            find("password", "I forgot my pasword").as_deref(),
            Some("pasword")
        );
        assert_eq!(find("order", "ordr"), None, "short words are not fuzzy");
    }

    #[test]
    fn find_all_is_non_overlapping() {
        let p = Pattern::compile("not happy", None).expect("pattern");
        let s = stream("not happy, really not happy, happy");
        let found: Vec<(usize, usize)> = p
            .find_all(&s.stems(), false)
            .iter()
            .map(|m| (m.start, m.end))
            .collect();
        assert_eq!(found, [(0, 2), (3, 5)]);
        let anchored = Pattern::compile("^ no", None).expect("pattern");
        assert_eq!(anchored.find_all(&stream("no no").stems(), false).len(), 1);
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for bad in [
            "",
            "*",
            "* order",
            "order *",
            "order * * x",
            "or*der",
            "a ^ b",
            "$ a",
        ] {
            assert!(
                Pattern::compile(bad, None).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn synonyms_rewrite_both_sides_and_keep_quotes() {
        let mut map = BTreeMap::new();
        map.insert(
            "log in".to_string(),
            vec!["login".to_string(), "sign in".to_string()],
        );
        let syn = Synonyms::new(&map).expect("valid");
        let p = Pattern::compile("not * login", Some(&syn)).expect("pattern");
        let s = TokenStream::new(&normalize("I can't sign in"), Some(&syn));
        let m = p.find(&s.stems(), false).expect("match");
        assert_eq!(s.quote(m.start, m.end), "can't sign in");
        assert!(!m.fuzzy);
    }

    #[test]
    fn synonym_conflicts_are_errors() {
        let mut map = BTreeMap::new();
        map.insert("a b".to_string(), vec!["x".to_string()]);
        map.insert("c".to_string(), vec!["x".to_string()]);
        let err = Synonyms::new(&map).unwrap_err();
        assert_eq!(err.canonical, "c");
        assert_eq!(err.variant, Some(0));
        let mut map = BTreeMap::new();
        map.insert("a".to_string(), vec![]);
        assert!(Synonyms::new(&map).is_err());
    }

    #[test]
    fn negation_scope() {
        let s = stream("i am not very happy");
        let stems = s.stems();
        assert_eq!(negation_before(&stems, 4, 1, &["very"]), Some("not"));
        assert_eq!(negation_before(&stems, 4, 1, &[]), None);
        let s = stream("not bad");
        assert_eq!(negation_before(&s.stems(), 1, 1, &[]), Some("not"));
    }

    #[test]
    fn edit_distance_one() {
        assert!(near("password", "pasword"));
        assert!(near("password", "passwrod"));
        assert!(near("password", "passwords"));
        assert!(!near("password", "passwd"));
        assert!(!near("cancel", "parcel"));
    }
}
