//! misaki's English lexicon logic (hibari's `g2p/lexicon.py`, a port of misaki 0.9.4 `en.py`),
//! US English only.
//!
//! The voice was distilled from Kokoro-82M, which was trained on misaki's readings, so the
//! phonemes have to be misaki's: the gold and silver dictionaries with their part-of-speech
//! keyed entries, the function-word special cases ("the" before a vowel, "to", "a" as a
//! determiner), letter-by-letter spelling of acronyms, the -s/-ed/-ing stem rules with the US
//! flap, the stress rules, and the number reading.

use std::collections::HashMap;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::numbers;
use super::pystr::{
    capitalize, drop_last, head, is_lower_form, is_upper_form, isalpha, last_char, len, nfkc_lite,
    nth_back, tail,
};
use super::token::Tok;

pub const PRIMARY_STRESS: char = 'ˈ';
pub const SECONDARY_STRESS: char = 'ˌ';
pub const VOWELS: &str = "AIOQWYaiuæɑɒɔəɛɜɪʊʌᵻ";
pub const CONSONANTS: &str = "bdfhjklmnpstvwzðŋɡɹɾʃʒʤʧθ";
const US_TAUS: &str = "AIOWYiuæɑəɛɪɹʊʌ";
const DIPHTHONGS: &str = "AIOQWYʤʧ";
const ORDINALS: [&str; 4] = ["st", "nd", "rd", "th"];
/// Currency symbol -> (unit, subunit).
pub const CURRENCIES: [(&str, (&str, &str)); 3] = [
    ("$", ("dollar", "cent")),
    ("£", ("pound", "pence")),
    ("€", ("euro", "cent")),
];

fn currency_units(symbol: &str) -> Option<(&'static str, &'static str)> {
    CURRENCIES
        .iter()
        .find(|(s, _)| *s == symbol)
        .map(|(_, units)| *units)
}

fn symbol_word(word: &str) -> Option<&'static str> {
    match word {
        "%" => Some("percent"),
        "&" => Some("and"),
        "+" => Some("plus"),
        "@" => Some("at"),
        _ => None,
    }
}

fn is_vowel(c: char) -> bool {
    VOWELS.contains(c)
}

/// The "weight" of a phoneme string (diphthongs and affricates count twice); stress balancing
/// demotes the lighter words of a compound first.
pub fn stress_weight(ps: &str) -> usize {
    ps.chars()
        .map(|c| if DIPHTHONGS.contains(c) { 2 } else { 1 })
        .sum()
}

/// Moves each stress mark to just before the next vowel (Python sorts (position, char) pairs,
/// so two marks before one vowel come out primary first).
fn restress(ps: &str) -> String {
    let chars: Vec<char> = ps.chars().collect();
    let mut keyed: Vec<(f64, char)> = chars
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if c == PRIMARY_STRESS || c == SECONDARY_STRESS {
                let j = (i..chars.len()).find(|&j| is_vowel(chars[j])).unwrap_or(i);
                (j as f64 - 0.5, c)
            } else {
                (i as f64, c)
            }
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    keyed.into_iter().map(|(_, c)| c).collect()
}

fn has_stress(ps: &str) -> bool {
    ps.contains(PRIMARY_STRESS) || ps.contains(SECONDARY_STRESS)
}

/// misaki's `apply_stress`: `stress` below -1 strips stress, -1 (or 0/-0.5 on a stressed word)
/// demotes primary to secondary, 0..1 gives an unstressed word a secondary stress, 1 and up
/// promote secondary to primary, above 1 gives an unstressed word a primary stress.
pub fn apply_stress(ps: &str, stress: Option<f64>) -> String {
    let Some(s) = stress else {
        return ps.to_string();
    };
    let primary = ps.contains(PRIMARY_STRESS);
    let secondary = ps.contains(SECONDARY_STRESS);
    if s < -1.0 {
        ps.replace([PRIMARY_STRESS, SECONDARY_STRESS], "")
    } else if s == -1.0 || ((s == 0.0 || s == -0.5) && primary) {
        ps.replace(SECONDARY_STRESS, "")
            .replace(PRIMARY_STRESS, &SECONDARY_STRESS.to_string())
    } else if (s == 0.0 || s == 0.5 || s == 1.0) && !has_stress(ps) {
        if !ps.chars().any(is_vowel) {
            return ps.to_string();
        }
        restress(&format!("{SECONDARY_STRESS}{ps}"))
    } else if s >= 1.0 && !primary && secondary {
        ps.replace(SECONDARY_STRESS, &PRIMARY_STRESS.to_string())
    } else if s > 1.0 && !has_stress(ps) {
        if !ps.chars().any(is_vowel) {
            return ps.to_string();
        }
        restress(&format!("{PRIMARY_STRESS}{ps}"))
    } else {
        ps.to_string()
    }
}

/// Python's `str.isdigit` on an ASCII string (`re.match(r"^[0-9]+$")`).
pub fn is_digit(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn parent_tag(tag: Option<&str>) -> Option<&str> {
    let t = tag?;
    Some(if t.starts_with("VB") {
        "VERB"
    } else if t.starts_with("NN") {
        "NOUN"
    } else if t.starts_with("ADV") || t.starts_with("RB") {
        "ADV"
    } else if t.starts_with("ADJ") || t.starts_with("JJ") {
        "ADJ"
    } else {
        t
    })
}

/// A dictionary value: one reading, or readings by part of speech ("DEFAULT", "VERB", "VBD",
/// "None" for a word before punctuation, ...; a null reading means "not this way").
#[derive(Debug, Clone)]
pub enum Entry {
    Plain(String),
    Tagged(HashMap<String, Option<String>>),
}

/// A string or a map, read directly (serde's untagged enums buffer every value first, which
/// doubles the load time of 180k entries).
impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Entry, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = Entry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a phoneme string or a map of part of speech to phoneme string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Entry, E> {
                Ok(Entry::Plain(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Entry, E> {
                Ok(Entry::Plain(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
                let mut m = HashMap::new();
                while let Some((k, v)) = map.next_entry::<String, Option<String>>()? {
                    m.insert(k, v);
                }
                Ok(Entry::Tagged(m))
            }
        }
        deserializer.deserialize_any(EntryVisitor)
    }
}

/// A misaki dictionary with its case folding done at lookup time: a lowercase key also
/// answers to its Capitalized form and a Capitalized word to its lowercase form.
pub struct Dict(pub HashMap<String, Entry>);

impl Dict {
    pub fn get(&self, w: &str) -> Option<&Entry> {
        if let Some(v) = self.0.get(w) {
            return Some(v);
        }
        if len(w) < 2 {
            return None;
        }
        let lower = w.to_lowercase();
        if lower == w {
            let c = capitalize(w);
            return if c != w { self.0.get(&c) } else { None };
        }
        if w == capitalize(&lower) {
            return self.0.get(&lower);
        }
        None
    }

    pub fn contains(&self, w: &str) -> bool {
        self.get(w).is_some()
    }

    fn plain(&self, w: &str) -> Option<String> {
        match self.get(w)? {
            Entry::Plain(s) => Some(s.clone()),
            Entry::Tagged(m) => m.get("DEFAULT").cloned().flatten(),
        }
    }
}

/// What the words to the right say about this one (the pass runs right to left).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ctx {
    /// The next word starts with a vowel (true), a consonant (false), or there is punctuation
    /// or nothing (None).
    pub future_vowel: Option<bool>,
    /// The next word is "to".
    pub future_to: bool,
}

/// The US lexicon.
pub struct Lexicon {
    golds: Dict,
    silvers: Dict,
}

impl Lexicon {
    pub fn new(gold: HashMap<String, Entry>, silver: HashMap<String, Entry>) -> Lexicon {
        Lexicon {
            golds: Dict(gold),
            silvers: Dict(silver),
        }
    }

    /// Spells a word letter by letter ("USA", "U.S."), last stress primary.
    fn get_nnp(&self, word: &str) -> Option<String> {
        let mut ps = String::new();
        for c in word.chars().filter(|c| c.is_alphabetic()) {
            let upper: String = c.to_uppercase().collect();
            match self.golds.get(&upper)? {
                Entry::Plain(p) => ps.push_str(p),
                Entry::Tagged(_) => return None,
            }
        }
        let ps = apply_stress(&ps, Some(0.0));
        Some(match ps.rfind(SECONDARY_STRESS) {
            Some(i) => format!(
                "{}{}{}",
                &ps[..i],
                PRIMARY_STRESS,
                &ps[i + SECONDARY_STRESS.len_utf8()..]
            ),
            None => ps,
        })
    }

    fn get_special_case(
        &self,
        word: &str,
        tag: &str,
        stress: Option<f64>,
        ctx: &Ctx,
    ) -> Option<String> {
        if tag == "ADD" && (word == "." || word == "/") {
            let w = if word == "." { "dot" } else { "slash" };
            return self.lookup(w, None, Some(-0.5), Some(ctx));
        }
        if let Some(w) = symbol_word(word) {
            return self.lookup(w, None, None, Some(ctx));
        }
        let stripped = word.trim_matches('.');
        if stripped.contains('.')
            && isalpha(&word.replace('.', ""))
            && word.split('.').map(len).max().unwrap_or(0) < 3
        {
            return self.get_nnp(word);
        }
        match word {
            "a" | "A" => {
                return Some(if tag == "DT" { "ɐ" } else { "ˈA" }.to_string());
            }
            "am" | "Am" | "AM" => {
                if tag.starts_with("NN") {
                    return self.get_nnp(word);
                }
                if ctx.future_vowel.is_none()
                    || word != "am"
                    || stress.is_some_and(|s| s != 0.0 && s > 0.0)
                {
                    return self.golds.plain("am");
                }
                return Some("ɐm".to_string());
            }
            "an" | "An" | "AN" => {
                if word == "AN" && tag.starts_with("NN") {
                    return self.get_nnp(word);
                }
                return Some("ɐn".to_string());
            }
            _ => {}
        }
        if word == "I" && tag == "PRP" {
            return Some(format!("{SECONDARY_STRESS}I"));
        }
        if matches!(word, "by" | "By" | "BY") && parent_tag(Some(tag)) == Some("ADV") {
            return Some("bˈI".to_string());
        }
        if matches!(word, "to" | "To") || (word == "TO" && matches!(tag, "TO" | "IN")) {
            return match ctx.future_vowel {
                None => self.golds.plain("to"),
                Some(false) => Some("tə".to_string()),
                Some(true) => Some("tʊ".to_string()),
            };
        }
        if matches!(word, "in" | "In") || (word == "IN" && tag != "NNP") {
            let stress = if ctx.future_vowel.is_none() || tag != "IN" {
                PRIMARY_STRESS.to_string()
            } else {
                String::new()
            };
            return Some(stress + "ɪn");
        }
        if matches!(word, "the" | "The") || (word == "THE" && tag == "DT") {
            return Some(
                if ctx.future_vowel == Some(true) {
                    "ði"
                } else {
                    "ðə"
                }
                .to_string(),
            );
        }
        if tag == "IN" && {
            let l = word.to_lowercase();
            l == "vs" || l == "vs."
        } {
            return self.lookup("versus", None, None, Some(ctx));
        }
        if matches!(word, "used" | "Used" | "USED") {
            let key = if matches!(tag, "VBD" | "JJ") && ctx.future_to {
                "VBD"
            } else {
                "DEFAULT"
            };
            return match self.golds.get("used")? {
                Entry::Tagged(m) => m.get(key).cloned().flatten(),
                Entry::Plain(p) => Some(p.clone()),
            };
        }
        None
    }

    fn is_known(&self, word: &str) -> bool {
        if self.golds.contains(word) || symbol_word(word).is_some() || self.silvers.contains(word) {
            return true;
        }
        if !isalpha(word) || !word.chars().all(|c| c.is_ascii_alphabetic()) {
            return false;
        }
        if len(word) == 1 {
            return true;
        }
        if is_upper_form(word) && self.golds.contains(&word.to_lowercase()) {
            return true;
        }
        let rest = tail(word, 1);
        rest == rest.to_uppercase()
    }

    /// Dictionary reading of `word` for `tag`, with `stress` applied.
    fn lookup(
        &self,
        word: &str,
        tag: Option<&str>,
        stress: Option<f64>,
        ctx: Option<&Ctx>,
    ) -> Option<String> {
        let mut word = word.to_string();
        let mut is_nnp = false;
        if is_upper_form(&word) && !self.golds.contains(&word) {
            word = word.to_lowercase();
            is_nnp = tag == Some("NNP");
        }
        let mut entry = self.golds.get(&word);
        if entry.is_none() && !is_nnp {
            entry = self.silvers.get(&word);
        }
        let ps: Option<String> = match entry {
            None => None,
            Some(Entry::Plain(p)) => Some(p.clone()),
            Some(Entry::Tagged(m)) => {
                let tag = if ctx.is_some_and(|c| c.future_vowel.is_none()) && m.contains_key("None")
                {
                    Some("None")
                } else if tag.is_some_and(|t| m.contains_key(t)) {
                    tag
                } else {
                    parent_tag(tag)
                };
                match tag.and_then(|t| m.get(t)) {
                    Some(v) => v.clone(),
                    None => m.get("DEFAULT").cloned().flatten(),
                }
            }
        };
        let needs_nnp = match &ps {
            None => true,
            Some(p) => is_nnp && !p.contains(PRIMARY_STRESS),
        };
        if needs_nnp {
            if let Some(p) = self.get_nnp(&word) {
                return Some(p);
            }
        }
        ps.map(|p| apply_stress(&p, stress))
    }

    fn suffix_s(stem: &str) -> Option<String> {
        let last = last_char(stem)?;
        Some(if "ptkfθ".contains(last) {
            format!("{stem}s")
        } else if "szʃʒʧʤ".contains(last) {
            format!("{stem}ᵻz")
        } else {
            format!("{stem}z")
        })
    }

    fn stem_s(
        &self,
        word: &str,
        tag: Option<&str>,
        stress: Option<f64>,
        ctx: Option<&Ctx>,
    ) -> Option<String> {
        let n = len(word);
        if n < 3 || !word.ends_with('s') {
            return None;
        }
        let stem = if !word.ends_with("ss") && self.is_known(drop_last(word, 1)) {
            drop_last(word, 1).to_string()
        } else if (word.ends_with("'s")
            || (n > 4 && word.ends_with("es") && !word.ends_with("ies")))
            && self.is_known(drop_last(word, 2))
        {
            drop_last(word, 2).to_string()
        } else if n > 4
            && word.ends_with("ies")
            && self.is_known(&format!("{}y", drop_last(word, 3)))
        {
            format!("{}y", drop_last(word, 3))
        } else {
            return None;
        };
        Self::suffix_s(&self.lookup(&stem, tag, stress, ctx)?)
    }

    fn suffix_ed(stem: &str) -> Option<String> {
        let last = last_char(stem)?;
        Some(if "pkfθʃsʧ".contains(last) {
            format!("{stem}t")
        } else if last == 'd' {
            format!("{stem}ᵻd")
        } else if last != 't' {
            format!("{stem}d")
        } else if len(stem) < 2 {
            format!("{stem}ɪd")
        } else if nth_back(stem, 1).is_some_and(|c| US_TAUS.contains(c)) {
            format!("{}ɾᵻd", drop_last(stem, 1))
        } else {
            format!("{stem}ᵻd")
        })
    }

    fn stem_ed(
        &self,
        word: &str,
        tag: Option<&str>,
        stress: Option<f64>,
        ctx: Option<&Ctx>,
    ) -> Option<String> {
        let n = len(word);
        if n < 4 || !word.ends_with('d') {
            return None;
        }
        let stem = if !word.ends_with("dd") && self.is_known(drop_last(word, 1)) {
            drop_last(word, 1)
        } else if n > 4
            && word.ends_with("ed")
            && !word.ends_with("eed")
            && self.is_known(drop_last(word, 2))
        {
            drop_last(word, 2)
        } else {
            return None;
        };
        Self::suffix_ed(&self.lookup(stem, tag, stress, ctx)?)
    }

    fn suffix_ing(stem: &str) -> Option<String> {
        let last = last_char(stem)?;
        if len(stem) > 1 && last == 't' && nth_back(stem, 1).is_some_and(|c| US_TAUS.contains(c)) {
            return Some(format!("{}ɾɪŋ", drop_last(stem, 1)));
        }
        Some(format!("{stem}ɪŋ"))
    }

    fn stem_ing(
        &self,
        word: &str,
        tag: Option<&str>,
        stress: Option<f64>,
        ctx: Option<&Ctx>,
    ) -> Option<String> {
        let n = len(word);
        if n < 5 || !word.ends_with("ing") {
            return None;
        }
        let base = drop_last(word, 3);
        let stem = if n > 5 && self.is_known(base) {
            base.to_string()
        } else if self.is_known(&format!("{base}e")) {
            format!("{base}e")
        } else if n > 5 && doubled_before_ing(word) && self.is_known(drop_last(word, 4)) {
            drop_last(word, 4).to_string()
        } else {
            return None;
        };
        Self::suffix_ing(&self.lookup(&stem, tag, stress, ctx)?)
    }

    fn get_word(&self, word: &str, tag: &str, stress: Option<f64>, ctx: &Ctx) -> Option<String> {
        if let Some(ps) = self.get_special_case(word, tag, stress, ctx) {
            return Some(ps);
        }
        let wl = word.to_lowercase();
        let tg = Some(tag);
        let mut word = word.to_string();
        let rest = tail(&word, 1);
        if len(&word) > 1
            && isalpha(&word.replace('\'', ""))
            && word != wl
            && (tag != "NNP" || len(&word) > 7)
            && !self.golds.contains(&word)
            && !self.silvers.contains(&word)
            && (is_upper_form(&word) || is_lower_form(rest))
            && (self.golds.contains(&wl)
                || self.silvers.contains(&wl)
                || self
                    .stem_s(&wl, tg, stress, Some(ctx))
                    .is_some_and(|p| !p.is_empty())
                || self
                    .stem_ed(&wl, tg, stress, Some(ctx))
                    .is_some_and(|p| !p.is_empty())
                || self
                    .stem_ing(&wl, tg, stress, Some(ctx))
                    .is_some_and(|p| !p.is_empty()))
        {
            word = wl;
        }
        if self.is_known(&word) {
            return self.lookup(&word, tg, stress, Some(ctx));
        }
        if word.ends_with("s'") {
            let w = format!("{}'s", drop_last(&word, 2));
            if self.is_known(&w) {
                return self.lookup(&w, tg, stress, Some(ctx));
            }
        }
        if word.ends_with('\'') && self.is_known(drop_last(&word, 1)) {
            return self.lookup(drop_last(&word, 1), tg, stress, Some(ctx));
        }
        if let Some(ps) = self.stem_s(&word, tg, stress, Some(ctx)) {
            return Some(ps);
        }
        if let Some(ps) = self.stem_ed(&word, tg, stress, Some(ctx)) {
            return Some(ps);
        }
        self.stem_ing(&word, tg, Some(stress.unwrap_or(0.5)), Some(ctx))
    }

    fn is_currency_amount(word: &str) -> bool {
        match word.split_once('.') {
            None => true,
            Some((_, cents)) => !cents.contains('.') && len(cents) < 3,
        }
    }

    /// Words of a number as phonemes, one per word of its English reading.
    fn push_words(&self, result: &mut Vec<String>, words: &str) {
        for w in split_non_az(words) {
            if w != "and" {
                let stress = if w == "point" { Some(-2.0) } else { None };
                result.push(self.lookup(w, None, stress, None).unwrap_or_default());
            }
        }
    }

    /// The cardinal reading of a digit string (digit by digit beyond the number names).
    fn push_cardinal(&self, result: &mut Vec<String>, digits: &str) {
        match digits.parse::<u128>().ok().and_then(numbers::cardinal) {
            Some(words) => self.push_words(result, &words),
            None => self.push_digits(result, digits),
        }
    }

    /// Each digit on its own ("0" is "zero"); anything else is skipped.
    fn push_digits(&self, result: &mut Vec<String>, digits: &str) {
        for d in digits.chars().filter_map(|c| c.to_digit(10)) {
            if let Some(words) = numbers::cardinal(u128::from(d)) {
                self.push_words(result, &words);
            }
        }
    }

    /// misaki's number reading: ordinals, years, digit groups in non-head position, decimals,
    /// currency amounts, and -s/-ed/-ing suffixes.
    pub fn get_number(&self, word: &str, currency: Option<&str>, is_head: bool) -> Option<String> {
        let suffix_len = word
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_lowercase() || *c == '\'')
            .count();
        let suffix = if suffix_len > 0 {
            Some(tail(word, len(word) - suffix_len))
        } else {
            None
        };
        let mut word = drop_last(word, suffix_len);
        let is_ordinal = suffix.is_some_and(|s| ORDINALS.contains(&s));
        let mut result: Vec<String> = Vec::new();
        if let Some(rest) = word.strip_prefix('-') {
            result.push(self.lookup("minus", None, None, None).unwrap_or_default());
            word = rest;
        }
        let currency_units = currency.and_then(currency_units);
        if is_digit(word) && is_ordinal {
            match word.parse::<u128>().ok().and_then(numbers::ordinal) {
                Some(w) => self.push_words(&mut result, &w),
                None => self.push_digits(&mut result, word),
            }
        } else if result.is_empty() && len(word) == 4 && currency_units.is_none() && is_digit(word)
        {
            let w = word.parse::<u128>().ok().and_then(numbers::year)?;
            self.push_words(&mut result, &w);
        } else if !is_head && !word.contains('.') {
            let num = word.replace(',', "");
            let first = num.chars().next()?;
            if first == '0' || len(&num) > 3 {
                self.push_digits(&mut result, &num);
            } else if len(&num) == 3 && !num.ends_with("00") {
                self.push_cardinal(&mut result, head(&num, 1));
                if tail(&num, 1).starts_with('0') {
                    result.push(self.lookup("O", None, Some(-2.0), None).unwrap_or_default());
                    self.push_cardinal(&mut result, tail(&num, 2));
                } else {
                    self.push_cardinal(&mut result, tail(&num, 1));
                }
            } else {
                self.push_cardinal(&mut result, &num);
            }
        } else if word.matches('.').count() > 1 || !is_head {
            for num in word.replace(',', "").split('.') {
                if num.is_empty() {
                    continue;
                }
                if num.starts_with('0') || (len(num) != 2 && tail(num, 1).chars().any(|n| n != '0'))
                {
                    self.push_digits(&mut result, num);
                } else {
                    self.push_cardinal(&mut result, num);
                }
            }
        } else if let (Some((unit, sub)), true) = (currency_units, Self::is_currency_amount(word)) {
            let cleaned = word.replace(',', "");
            let mut pairs: Vec<(u128, &str)> = Vec::new();
            for (num, u) in cleaned.split('.').zip([unit, sub]) {
                let n = if num.is_empty() { 0 } else { num.parse().ok()? };
                pairs.push((n, u));
            }
            if pairs.len() > 1 {
                if pairs[1].0 == 0 {
                    pairs.truncate(1);
                } else if pairs[0].0 == 0 {
                    pairs.remove(0);
                }
            }
            for (i, (num, u)) in pairs.into_iter().enumerate() {
                if i > 0 {
                    result.push(self.lookup("and", None, None, None).unwrap_or_default());
                }
                self.push_cardinal(&mut result, &num.to_string());
                let unit_ps = if num != 1 && u != "pence" {
                    self.stem_s(&format!("{u}s"), None, None, None)
                } else {
                    self.lookup(u, None, None, None)
                };
                result.push(unit_ps.unwrap_or_default());
            }
        } else {
            let words = if is_digit(word) {
                word.parse::<u128>().ok().and_then(numbers::cardinal)
            } else if !word.contains('.') {
                let n: u128 = word.replace(',', "").parse().ok()?;
                if is_ordinal {
                    numbers::ordinal(n)
                } else {
                    numbers::cardinal(n)
                }
            } else {
                let w = word.replace(',', "");
                if let Some(frac) = w.strip_prefix('.') {
                    let mut s = "point".to_string();
                    for d in frac.chars() {
                        s.push(' ');
                        s.push_str(&numbers::cardinal(d.to_digit(10)? as u128)?);
                    }
                    Some(s)
                } else {
                    numbers::decimal(&w)
                }
            };
            match words {
                Some(w) => self.push_words(&mut result, &w),
                None => self.push_digits(&mut result, word),
            }
        }
        if result.is_empty() {
            return None;
        }
        let joined = result.join(" ");
        match suffix {
            Some("s" | "'s") => Self::suffix_s(&joined),
            Some("ed" | "'d") => Self::suffix_ed(&joined),
            Some("ing") => Self::suffix_ing(&joined),
            _ => Some(joined),
        }
    }

    fn append_currency(&self, ps: String, currency: Option<&str>) -> String {
        let Some((unit, _)) = currency.and_then(currency_units) else {
            return ps;
        };
        match self.stem_s(&format!("{unit}s"), None, None, None) {
            Some(c) if !c.is_empty() => format!("{ps} {c}"),
            _ => ps,
        }
    }

    fn is_number(word: &str, is_head: bool) -> bool {
        if !word.chars().any(|c| c.is_ascii_digit()) {
            return false;
        }
        let mut w = word;
        for s in ["ing", "'d", "ed", "'s", "st", "nd", "rd", "th", "s"] {
            if let Some(stripped) = w.strip_suffix(s) {
                w = stripped;
                break;
            }
        }
        w.chars().enumerate().all(|(i, c)| {
            c.is_ascii_digit() || c == ',' || c == '.' || (is_head && i == 0 && c == '-')
        })
    }

    /// The phonemes of one token (or merged subtokens) in context, `None` if the lexicon cannot
    /// read it.
    pub fn read(&self, tk: &Tok, ctx: &Ctx) -> Option<String> {
        let raw = tk.alias.as_deref().unwrap_or(&tk.text);
        let word = nfkc_lite(&raw.replace(['\u{2018}', '\u{2019}'], "'"));
        let stress = if is_lower_form(&word) {
            None
        } else if is_upper_form(&word) {
            Some(2.0)
        } else {
            Some(0.5)
        };
        if let Some(ps) = self.get_word(&word, &tk.tag, stress, ctx) {
            return Some(self.append_currency(ps, tk.currency.as_deref()));
        }
        if Self::is_number(&word, tk.is_head) {
            return self.get_number(&word, tk.currency.as_deref(), tk.is_head);
        }
        None
    }
}

/// `re.search(r"([bcdgklmnprstvxz])\1ing$|cking$", word)`.
fn doubled_before_ing(word: &str) -> bool {
    if word.ends_with("cking") {
        return true;
    }
    let Some(base) = word.strip_suffix("ing") else {
        return false;
    };
    let mut rev = base.chars().rev();
    match (rev.next(), rev.next()) {
        (Some(a), Some(b)) => a == b && "bcdgklmnprstvxz".contains(a),
        _ => false,
    }
}

/// `re.split(r"[^a-z]+", s)`, keeping empty pieces at the ends.
fn split_non_az(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_sep = false;
    let mut sep_start = 0;
    for (i, c) in s.char_indices() {
        let az = c.is_ascii_lowercase();
        if !az && !in_sep {
            in_sep = true;
            sep_start = i;
        } else if az && in_sep {
            out.push(&s[start..sep_start]);
            start = i;
            in_sep = false;
        }
    }
    if in_sep {
        out.push(&s[start..sep_start]);
        out.push("");
    } else {
        out.push(&s[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stress_rules() {
        // No stress change without a level.
        assert_eq!(apply_stress("hˈɛlp", None), "hˈɛlp");
        // Below -1 strips everything.
        assert_eq!(apply_stress("pˈYnt", Some(-2.0)), "pYnt");
        // -0.5 on a word with a primary demotes it.
        assert_eq!(apply_stress("ˈɛkspˌɜɹt", Some(-0.5)), "ˌɛkspɜɹt");
        // 0.5 on an unstressed word adds a secondary before the first vowel.
        assert_eq!(apply_stress("ðæt", Some(0.5)), "ðˌæt");
        // 2 promotes the secondary to primary.
        assert_eq!(apply_stress("ðˌæt", Some(2.0)), "ðˈæt");
        // 2 on an unstressed word adds a primary before the first vowel.
        assert_eq!(apply_stress("ðæt", Some(2.0)), "ðˈæt");
        // No vowel: unchanged.
        assert_eq!(apply_stress("st", Some(2.0)), "st");
        // 0 on a word that has only a secondary: unchanged.
        assert_eq!(apply_stress("ˌIm", Some(0.0)), "ˌIm");
    }

    #[test]
    fn stress_weights() {
        assert_eq!(stress_weight("ˈA"), 3);
        assert_eq!(stress_weight("tə"), 2);
        assert_eq!(stress_weight(""), 0);
    }

    #[test]
    fn suffixes() {
        assert_eq!(Lexicon::suffix_s("kˈæt").unwrap(), "kˈæts");
        assert_eq!(Lexicon::suffix_s("bˈʌs").unwrap(), "bˈʌsᵻz");
        assert_eq!(Lexicon::suffix_s("dˈɔɡ").unwrap(), "dˈɔɡz");
        assert_eq!(Lexicon::suffix_ed("wˈAt").unwrap(), "wˈAɾᵻd");
        assert_eq!(Lexicon::suffix_ed("ɹˈɛnt").unwrap(), "ɹˈɛntᵻd");
        assert_eq!(Lexicon::suffix_ed("ʃˈɪp").unwrap(), "ʃˈɪpt");
        assert_eq!(Lexicon::suffix_ing("wˈAt").unwrap(), "wˈAɾɪŋ");
        assert_eq!(Lexicon::suffix_ing("bˈɪl").unwrap(), "bˈɪlɪŋ");
        assert!(doubled_before_ing("shipping"));
        assert!(doubled_before_ing("packing"));
        assert!(!doubled_before_ing("sing"));
    }

    #[test]
    fn split_like_python() {
        assert_eq!(
            split_non_az("one thousand, two"),
            ["one", "thousand", "two"]
        );
        assert_eq!(split_non_az("oh-five"), ["oh", "five"]);
        assert_eq!(split_non_az(",a,"), ["", "a", ""]);
        assert_eq!(split_non_az(""), [""]);
    }

    fn lexicon() -> Lexicon {
        let mut gold = HashMap::new();
        for (k, v) in [
            ("U", "jˈu"),
            ("S", "ˈɛs"),
            ("A", "ˈA"),
            ("cat", "kˈæt"),
            ("to", "tu"),
            ("the", "ðə"),
        ] {
            gold.insert(k.to_string(), Entry::Plain(v.to_string()));
        }
        let mut read = HashMap::new();
        read.insert("DEFAULT".to_string(), Some("ɹˈid".to_string()));
        read.insert("VBD".to_string(), Some("ɹˈɛd".to_string()));
        gold.insert("read".to_string(), Entry::Tagged(read));
        Lexicon::new(gold, HashMap::new())
    }

    fn tok(text: &str, tag: &str) -> Tok {
        Tok {
            text: text.into(),
            tag: tag.into(),
            is_head: true,
            ..Tok::default()
        }
    }

    #[test]
    fn lexicon_rules() {
        let lx = lexicon();
        let ctx = Ctx::default();
        let vowel = Ctx {
            future_vowel: Some(true),
            future_to: false,
        };
        let consonant = Ctx {
            future_vowel: Some(false),
            future_to: false,
        };
        // Spelled initialisms, last stress primary.
        assert_eq!(lx.read(&tok("USA", "NNP"), &ctx).unwrap(), "jˌuˌɛsˈA");
        assert_eq!(lx.read(&tok("U.S.", "NNP"), &ctx).unwrap(), "jˌuˈɛs");
        // Tagged entries.
        assert_eq!(lx.read(&tok("read", "VBD"), &consonant).unwrap(), "ɹˈɛd");
        assert_eq!(lx.read(&tok("read", "VB"), &consonant).unwrap(), "ɹˈid");
        // Plurals, capitalised words, function words.
        assert_eq!(lx.read(&tok("cats", "NNS"), &ctx).unwrap(), "kˈæts");
        assert_eq!(lx.read(&tok("Cat", "NN"), &ctx).unwrap(), "kˈæt");
        assert_eq!(lx.read(&tok("the", "DT"), &vowel).unwrap(), "ði");
        assert_eq!(lx.read(&tok("to", "TO"), &consonant).unwrap(), "tə");
        assert_eq!(lx.read(&tok("a", "DT"), &consonant).unwrap(), "ɐ");
        // Unknown words are left to the OOV net.
        assert!(lx.read(&tok("zorblax", "NN"), &ctx).is_none());
    }
}
