//! Slot extraction: the facts a reply needs, pulled out of normalised caller text.
//!
//! A reply such as "I have noted order number 1 2 3 4" needs the order number; the transfer to a
//! person is friendlier with the caller's name. Slots are extracted from every turn (so a
//! caller may give the number before the bot asks) and kept for the call by the [`super::Bot`].
//! Extraction works on [`super::normalize::normalize`]d text, where spoken digits are already
//! digit runs, so "one two three four" and "1-2-3-4" both give `1234`.
//!
//! Slots: [`ORDER_NUMBER`] (4–12 digits), [`NAME`] ("my name is …", "this is … speaking"),
//! [`EMAIL`] (written `john@example.com` or spoken "john dot doe at example dot com").

use std::collections::BTreeMap;

/// The order number: a run of 4 to 12 digits.
pub const ORDER_NUMBER: &str = "order_number";
/// The caller's name, title-cased.
pub const NAME: &str = "name";
/// An e-mail address.
pub const EMAIL: &str = "email";
/// Every slot the dialog knows; intents may require these and templates may name them.
pub const KNOWN_SLOTS: &[&str] = &[ORDER_NUMBER, NAME, EMAIL];

/// Shortest and longest digit run accepted as an order number.
pub const ORDER_NUMBER_DIGITS: std::ops::RangeInclusive<usize> = 4..=12;

/// Extracts every slot found in one normalised utterance.
pub fn extract(normalized: &str) -> BTreeMap<String, String> {
    let mut slots = BTreeMap::new();
    if let Some(n) = order_number(normalized) {
        slots.insert(ORDER_NUMBER.to_string(), n);
    }
    if let Some(n) = caller_name(normalized) {
        slots.insert(NAME.to_string(), n);
    }
    if let Some(e) = email(normalized) {
        slots.insert(EMAIL.to_string(), e);
    }
    slots
}

/// Words after which a digit run is most likely the order number.
const ORDER_CUES: &[&str] = &["order", "number", "reference", "ref", "id", "is"];

/// The order number: the first 4–12 digit run that follows an order cue within four words, or
/// else the first 4–12 digit run at all.
pub fn order_number(normalized: &str) -> Option<String> {
    let words: Vec<&str> = normalized.split_whitespace().collect();
    let candidates: Vec<usize> = words
        .iter()
        .enumerate()
        .filter(|(_, w)| {
            w.chars().all(|c| c.is_ascii_digit()) && ORDER_NUMBER_DIGITS.contains(&w.len())
        })
        .map(|(i, _)| i)
        .collect();
    let cued = candidates.iter().find(|&&i| {
        words[i.saturating_sub(4)..i]
            .iter()
            .any(|w| ORDER_CUES.contains(w))
    });
    cued.or(candidates.first())
        .and_then(|&i| words.get(i))
        .map(|w| w.to_string())
}

/// Words that are never taken as a name ("this is ridiculous", "my name is not important").
const NOT_NAMES: &[&str] = &[
    "a",
    "about",
    "absolutely",
    "after",
    "again",
    "all",
    "also",
    "am",
    "an",
    "and",
    "annoying",
    "another",
    "any",
    "are",
    "as",
    "at",
    "awful",
    "bad",
    "be",
    "because",
    "been",
    "but",
    "by",
    "call",
    "calling",
    "can",
    "can't",
    "complaint",
    "completely",
    "concerning",
    "could",
    "crazy",
    "did",
    "do",
    "does",
    "don't",
    "email",
    "for",
    "from",
    "getting",
    "going",
    "good",
    "great",
    "had",
    "has",
    "have",
    "he",
    "her",
    "here",
    "him",
    "his",
    "how",
    "i",
    "i'm",
    "if",
    "important",
    "in",
    "insane",
    "is",
    "isn't",
    "it",
    "it's",
    "just",
    "me",
    "mine",
    "my",
    "no",
    "not",
    "now",
    "of",
    "ok",
    "okay",
    "on",
    "one",
    "or",
    "order",
    "our",
    "re",
    "really",
    "regarding",
    "ridiculous",
    "she",
    "so",
    "speaking",
    "still",
    "taking",
    "terrible",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "they",
    "this",
    "to",
    "too",
    "uh",
    "um",
    "unacceptable",
    "urgent",
    "us",
    "very",
    "was",
    "we",
    "weird",
    "well",
    "what",
    "when",
    "where",
    "which",
    "who",
    "why",
    "will",
    "with",
    "wrong",
    "yes",
    "you",
    "your",
    "sorry",
    "actually",
];

/// Honorifics kept in front of a name.
const TITLES: &[&str] = &["mr", "mrs", "ms", "miss", "dr"];

/// Filler allowed before "this is <name>" at the start of an utterance.
const OPENERS: &[&str] = &[
    "hi",
    "hello",
    "hey",
    "yes",
    "yeah",
    "oh",
    "um",
    "uh",
    "good",
    "morning",
    "afternoon",
    "evening",
    "well",
];

fn name_word(word: &str) -> bool {
    word.len() >= 2
        && word.chars().all(|c| c.is_alphabetic() || c == '-')
        && !NOT_NAMES.contains(&word)
}

/// The caller's name (one or two words) from "my name is X", "name's X", "call me X",
/// "this is X speaking/calling/here", or "this is X" opening the utterance; title-cased.
pub fn caller_name(normalized: &str) -> Option<String> {
    let words: Vec<&str> = normalized.split_whitespace().collect();
    let take = |from: usize| -> Option<(Vec<&str>, usize)> {
        let mut name = Vec::new();
        let mut i = from;
        if let Some(&title) = words.get(i).filter(|w| TITLES.contains(w)) {
            name.push(title);
            i += 1;
        }
        let first = *words.get(i).filter(|w| name_word(w))?;
        name.push(first);
        i += 1;
        if let Some(&second) = words.get(i).filter(|w| name_word(w)) {
            name.push(second);
            i += 1;
        }
        Some((name, i))
    };
    let mut found = None;
    for i in 0..words.len() {
        let rest = &words[i..];
        let start = match rest {
            ["my", "name", "is", ..] => Some(i + 3),
            ["name's", ..] => Some(i + 1),
            ["call", "me", ..] => Some(i + 2),
            ["this", "is", ..] => Some(i + 2),
            _ => None,
        };
        let Some(start) = start else { continue };
        let Some((mut name, end)) = take(start) else {
            continue;
        };
        if words[i] == "this" {
            let opening = words[..i].iter().all(|w| OPENERS.contains(w));
            let signed = matches!(words.get(end), Some(&("speaking" | "calling" | "here")));
            // "this is about my order" is rejected by NOT_NAMES; "this is john smith" only
            // counts at the start or when signed with "speaking"/"calling"/"here".
            if !opening && !signed {
                continue;
            }
            if name
                .last()
                .is_some_and(|w| matches!(*w, "speaking" | "calling" | "here"))
            {
                name.pop();
            }
        }
        found = Some(name);
        break;
    }
    let name = found?;
    Some(
        name.iter()
            .map(|w| title_case(w))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn title_case(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Words that are never the local part of a spoken address ("email me at …").
const NOT_LOCAL: &[&str] = &[
    "me", "us", "you", "him", "her", "them", "it", "is", "email", "address", "mail", "reach",
    "contact",
];

fn address_word(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric())
}

/// An e-mail address: a written one, or a spoken "john dot doe at example dot com".
pub fn email(normalized: &str) -> Option<String> {
    let words: Vec<&str> = normalized.split_whitespace().collect();
    if let Some(written) = words.iter().find(|w| w.contains('@')) {
        return Some(written.to_string());
    }
    for at in words
        .iter()
        .enumerate()
        .filter(|(_, w)| **w == "at")
        .map(|(i, _)| i)
    {
        // Local part: X (dot|underscore X)* right before "at".
        let Some(mut start) = at.checked_sub(1) else {
            continue;
        };
        if !address_word(words[start]) || NOT_LOCAL.contains(&words[start]) {
            continue;
        }
        while start >= 2
            && matches!(words[start - 1], "dot" | "underscore")
            && address_word(words[start - 2])
        {
            start -= 2;
        }
        // Domain: X (dot X)+ right after "at".
        let mut end = at + 1;
        if !words.get(end).is_some_and(|w| address_word(w)) {
            continue;
        }
        end += 1;
        while words.get(end) == Some(&"dot") && words.get(end + 1).is_some_and(|w| address_word(w))
        {
            end += 2;
        }
        if end == at + 2 {
            continue;
        }
        let join = |part: &[&str]| -> String {
            part.iter()
                .map(|w| match *w {
                    "dot" => ".",
                    "underscore" => "_",
                    other => other,
                })
                .collect()
        };
        return Some(format!(
            "{}@{}",
            join(&words[start..at]),
            join(&words[at + 1..end])
        ));
    }
    None
}

/// How a slot value is spoken in a reply: order numbers digit by digit ("1 2 3 4"), so that
/// text-to-speech does not read "one thousand two hundred…"; other values unchanged.
pub fn spoken(slot: &str, value: &str) -> String {
    if slot == ORDER_NUMBER {
        let digits: Vec<String> = value.chars().map(String::from).collect();
        digits.join(" ")
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialog::normalize::normalize;

    fn slots(text: &str) -> BTreeMap<String, String> {
        extract(&normalize(text))
    }

    fn one(text: &str, slot: &str) -> Option<String> {
        slots(text).get(slot).cloned()
    }

    #[test]
    fn order_numbers() {
        let cases: &[(&str, Option<&str>)] = &[
            ("My order number is one two three four", Some("1234")),
            ("It's 1-2-3-4-5.", Some("12345")),
            ("order 98765432", Some("98765432")),
            ("the number is double seven oh one", Some("7701")),
            (
                "I ordered 2 items in 2023 and my order number is 5550123",
                Some("5550123"),
            ),
            ("my order number is 12", None),
            ("1234567890123", None),
            ("I ordered it three days ago", None),
            ("four five six seven", Some("4567")),
        ];
        for (text, expected) in cases {
            assert_eq!(one(text, ORDER_NUMBER).as_deref(), *expected, "{text:?}");
        }
    }

    #[test]
    fn names() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Hi, my name is John Smith.", Some("John Smith")),
            ("my name is anna and I can't log in", Some("Anna")),
            ("This is Maria Garcia.", Some("Maria Garcia")),
            ("Hello, this is Dr Brown speaking", Some("Dr Brown")),
            ("Yes, this is Peter calling about my order", Some("Peter")),
            ("This is ridiculous!", None),
            ("this is about my order", None),
            ("I think this is wrong", None),
            ("I think this is Tom", None),
            ("you can call me Sam", Some("Sam")),
            ("where is my order", None),
        ];
        for (text, expected) in cases {
            assert_eq!(one(text, NAME).as_deref(), *expected, "{text:?}");
        }
    }

    #[test]
    fn emails() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "My email is john.doe@example.com.",
                Some("john.doe@example.com"),
            ),
            (
                "it's john dot doe at example dot com",
                Some("john.doe@example.com"),
            ),
            (
                "mary underscore k at mail dot co dot uk",
                Some("mary_k@mail.co.uk"),
            ),
            ("email me at home", None),
            ("I'm at home", None),
            ("we open at nine dot", None),
        ];
        for (text, expected) in cases {
            assert_eq!(one(text, EMAIL).as_deref(), *expected, "{text:?}");
        }
    }

    #[test]
    fn several_slots_in_one_turn() {
        let s = slots("This is Jane Doe, order 4 4 5 5 6, email jane at doe dot org");
        assert_eq!(s.get(NAME).map(String::as_str), Some("Jane Doe"));
        assert_eq!(s.get(ORDER_NUMBER).map(String::as_str), Some("44556"));
        assert_eq!(s.get(EMAIL).map(String::as_str), Some("jane@doe.org"));
        assert!(slots("hello").is_empty());
    }

    #[test]
    fn spoken_forms() {
        assert_eq!(spoken(ORDER_NUMBER, "1234"), "1 2 3 4");
        assert_eq!(spoken(NAME, "John Smith"), "John Smith");
    }
}
