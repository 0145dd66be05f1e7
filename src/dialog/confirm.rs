//! Confirming a doubtful request for a person: "You'd like to speak to a colleague, is that
//! right?", and the yes or no that answers it.
//!
//! Callers ask for a person in one or two words ("agent", "representative", "human"), which is
//! where recognition is weakest: a short turn comes back as a near miss ("asian", "a gent",
//! "represent", "hue man") or with low confidence. Handing over on such a guess wastes an
//! agent; asking "could you repeat that?" makes the caller repeat the one word they said. The
//! bot asks the closed question instead, and a yes hands over.
//!
//! [`may_want_person`] decides when a turn deserves the question: a short turn (at most
//! [`SHORT_TURN_WORDS`] words) whose words, or whose words run together, sound like one of the
//! words callers use for a person ([`PERSON_WORDS`]), compared as Double Metaphone codes (a
//! sounds-alike key for English words, from the `rphonetic` crate) within one edit.
//! [`yes_or_no`] reads the answer as VoiceXML's built-in boolean grammar does: a plain yes or
//! no in the caller's own words, neither when unclear.

use rphonetic::{DoubleMetaphone, Encoder};

use super::normalize::words;
use crate::speech::asr::vocabulary::levenshtein;

/// A turn of at most this many words (fillers and politeness not counted) is short enough to
/// be a one- or two-word request.
pub const SHORT_TURN_WORDS: usize = 3;

/// The words callers use for a person, one or two words each.
pub const PERSON_WORDS: &[&str] = &[
    "agent",
    "representative",
    "operator",
    "human",
    "person",
    "real person",
    "someone",
    "somebody",
    "advisor",
    "supervisor",
    "manager",
    "customer service",
    "colleague",
];

/// Words a short request may carry that say nothing about what is wanted.
const FILLERS: &[&str] = &[
    "a", "an", "the", "please", "uh", "um", "erm", "hmm", "oh", "just", "can", "i", "get", "me",
    "to", "speak", "talk", "with", "want", "need", "like", "would", "yes", "yeah", "ok", "okay",
    "hello", "hi",
];

/// Length of the sounds-alike keys (Double Metaphone's default of 4 cuts long words short).
const KEY_LEN: usize = 6;

/// Shortest sounds-alike key compared with one edit of tolerance (shorter keys must be equal).
const FUZZY_KEY_LEN: usize = 5;

/// Sounds-alike keys of a word or words run together (both Double Metaphone codes).
fn keys(encoder: &DoubleMetaphone, text: &str) -> [String; 2] {
    let joined: String = text.split_whitespace().collect();
    let primary = encoder.encode(&joined);
    let alternate = encoder.encode_alternate(&joined);
    [primary, alternate]
}

/// Whether two sounds-alike keys match: equal, or within one edit when both are long enough
/// to make one edit a near miss rather than another word.
fn keys_match(a: &str, b: &str) -> bool {
    if a.is_empty() || b.is_empty() {
        return false;
    }
    a == b
        || (a.len().min(b.len()) >= FUZZY_KEY_LEN && levenshtein(a.as_bytes(), b.as_bytes()) <= 1)
}

/// The words of a turn that may carry a short request (fillers and politeness left out).
fn content_words(normalized: &str) -> Vec<String> {
    words(normalized)
        .into_iter()
        .map(|w| w.text)
        .filter(|w| !FILLERS.contains(&w.as_str()))
        .collect()
}

/// Whether a turn is short enough to be a one- or two-word request.
pub fn is_short(normalized: &str) -> bool {
    content_words(normalized).len() <= SHORT_TURN_WORDS
}

/// The person word a short turn sounds like, if any (see the module docs). `normalized` is
/// the transcript after [`super::normalize::normalize`].
pub fn may_want_person(normalized: &str) -> Option<&'static str> {
    let content = content_words(normalized);
    if content.is_empty() || content.len() > SHORT_TURN_WORDS {
        return None;
    }
    let encoder = DoubleMetaphone::new(Some(KEY_LEN));
    // Each content word alone, and all of them run together ("hue man", "rep resent ative").
    let mut candidates: Vec<String> = content.clone();
    if content.len() > 1 {
        candidates.push(content.concat());
    }
    PERSON_WORDS.iter().copied().find(|person| {
        let target = keys(&encoder, person);
        candidates.iter().any(|c| {
            let heard = keys(&encoder, c);
            heard
                .iter()
                .any(|h| target.iter().any(|t| keys_match(h, t)))
        })
    })
}

/// Yes and no in callers' words.
const YES: &[&str] = &[
    "yes",
    "yeah",
    "yep",
    "yup",
    "ya",
    "aye",
    "correct",
    "right",
    "sure",
    "please",
    "ok",
    "okay",
    "exactly",
    "absolutely",
    "definitely",
    "indeed",
    "affirmative",
];
const NO: &[&str] = &["no", "nope", "nah", "not", "wrong", "never", "negative"];

/// A yes (`Some(true)`), a no (`Some(false)`), or neither (both, or none) in a short answer.
pub fn yes_or_no(normalized: &str) -> Option<bool> {
    let said = words(normalized);
    let yes = said.iter().any(|w| YES.contains(&w.text.as_str()));
    let no = said.iter().any(|w| NO.contains(&w.text.as_str()));
    match (yes, no) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_turns_that_sound_like_a_person_word_are_suspected() {
        for heard in [
            "agent",
            "an agent please",
            "representative",
            "represent ative",
            "operator",
            "opera tor",
            "human",
            "hue man",
            "a real person",
            "someone",
            "customer service",
            "supervisor",
        ] {
            assert!(may_want_person(heard).is_some(), "{heard:?}");
        }
    }

    #[test]
    fn other_short_turns_and_long_turns_are_not() {
        for heard in [
            "hello",
            "thank you",
            "password",
            "my order",
            "opening hours",
            "yes",
            "goodbye",
            "where is my parcel it was meant to be an agent delivery",
        ] {
            assert_eq!(may_want_person(heard), None, "{heard:?}");
        }
    }

    #[test]
    fn yes_and_no_in_the_callers_words() {
        assert_eq!(yes_or_no("yes please"), Some(true));
        assert_eq!(yes_or_no("yeah that's right"), Some(true));
        assert_eq!(yes_or_no("no"), Some(false));
        assert_eq!(yes_or_no("no that's not what i said"), Some(false));
        assert_eq!(yes_or_no("where is my order"), None);
        assert_eq!(yes_or_no("yes no"), None);
    }
}
