//! Post-correction of doubtful words towards the flow's own vocabulary.
//!
//! Neither engine takes a word list at decode time (whisper's initial prompt biases it only
//! loosely, Moonshine has none), but both say how sure they are of each word. A word the
//! engine doubts (confidence below [`DOUBTFUL`]) that is one or two letters away from a word
//! of the flow's vocabulary (its intents' examples and synonyms, its escalation phrases:
//! "refund", "invoice", "cancellation", product names), and is not itself a vocabulary word,
//! is replaced by the closest one; two doubtful neighbours whose concatenation is a
//! vocabulary word are joined ("pass word" -> "password"). Words the engine is sure of, short
//! words and numbers are never touched, so a correct transcript stays as it was.

use std::collections::HashSet;

use super::Word;

/// Below this word confidence a word may be corrected.
pub const DOUBTFUL: f32 = 0.5;
/// Words shorter than this are never corrected (too many near neighbours).
const MIN_LEN: usize = 4;

/// A flow's vocabulary: lower-case words.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    words: HashSet<String>,
    /// Words long enough to be correction targets.
    targets: Vec<String>,
}

impl Vocabulary {
    /// Builds the vocabulary from phrases (examples, keywords, names).
    pub fn from_phrases<'a>(phrases: impl IntoIterator<Item = &'a str>) -> Self {
        let mut words = HashSet::new();
        for phrase in phrases {
            for w in phrase.split(|c: char| !c.is_alphanumeric() && c != '\'') {
                let w = w.trim_matches('\'').to_lowercase();
                if !w.is_empty() {
                    words.insert(w);
                }
            }
        }
        let mut targets: Vec<String> = words
            .iter()
            .filter(|w| w.chars().count() >= MIN_LEN && w.chars().all(char::is_alphabetic))
            .cloned()
            .collect();
        targets.sort();
        Vocabulary { words, targets }
    }

    /// Number of distinct words.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the vocabulary has no words.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Corrects `words`; returns the corrected text and what was changed ("from -> to").
    pub fn correct(&self, words: &[Word]) -> (String, Vec<String>) {
        let mut out: Vec<String> = Vec::with_capacity(words.len());
        let mut changes = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let word = &words[i];
            let (core, prefix, suffix) = split_punctuation(&word.text);
            let lower = core.to_lowercase();
            // Two doubtful neighbours that make one vocabulary word.
            if let Some(next) = words.get(i + 1) {
                let (next_core, _, next_suffix) = split_punctuation(&next.text);
                let joined = format!("{lower}{}", next_core.to_lowercase());
                let doubtful = word.confidence < DOUBTFUL || next.confidence < DOUBTFUL;
                if doubtful
                    && suffix.is_empty()
                    && !self.words.contains(&lower)
                    && self.words.contains(&joined)
                {
                    changes.push(format!("{} {} -> {joined}", word.text, next.text));
                    out.push(format!("{prefix}{joined}{next_suffix}"));
                    i += 2;
                    continue;
                }
            }
            if word.confidence < DOUBTFUL && !self.words.contains(&lower) {
                if let Some(best) = self.closest(&lower) {
                    changes.push(format!("{core} -> {best}"));
                    out.push(format!("{prefix}{}{suffix}", match_case(core, best)));
                    i += 1;
                    continue;
                }
            }
            out.push(word.text.clone());
            i += 1;
        }
        (out.join(" "), changes)
    }

    /// The single vocabulary word within reach of `word` (1 edit up to 6 letters, 2 above);
    /// None when there is none or when two are equally close.
    fn closest(&self, word: &str) -> Option<&str> {
        let len = word.chars().count();
        if len < MIN_LEN || !word.chars().all(char::is_alphabetic) {
            return None;
        }
        let reach = if len <= 6 { 1 } else { 2 };
        let mut best: Option<(&str, usize)> = None;
        let mut tie = false;
        for target in &self.targets {
            let tlen = target.chars().count();
            if tlen.abs_diff(len) > reach {
                continue;
            }
            let d = edit_distance(word, target);
            if d > reach {
                continue;
            }
            match best {
                Some((_, bd)) if d > bd => {}
                Some((_, bd)) if d == bd => tie = true,
                _ => {
                    best = Some((target, d));
                    tie = false;
                }
            }
        }
        if tie {
            return None;
        }
        best.map(|(t, _)| t)
    }
}

/// Leading and trailing punctuation split off a word: (core, prefix, suffix).
fn split_punctuation(word: &str) -> (&str, &str, &str) {
    let start = word
        .find(|c: char| c.is_alphanumeric())
        .unwrap_or(word.len());
    let end = word
        .rfind(|c: char| c.is_alphanumeric())
        .map_or(start, |i| {
            i + word[i..].chars().next().map_or(1, char::len_utf8)
        });
    (&word[start..end], &word[..start], &word[end..])
}

/// `target` with `original`'s capitalisation of the first letter.
fn match_case(original: &str, target: &str) -> String {
    let upper = original.chars().next().is_some_and(char::is_uppercase);
    let mut chars = target.chars();
    match chars.next() {
        Some(first) if upper => first.to_uppercase().chain(chars).collect(),
        _ => target.to_string(),
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(spec: &[(&str, f32)]) -> Vec<Word> {
        spec.iter()
            .map(|(t, c)| Word {
                text: t.to_string(),
                confidence: *c,
            })
            .collect()
    }

    fn vocab() -> Vocabulary {
        Vocabulary::from_phrases([
            "I want a refund",
            "where is my parcel",
            "reset my password",
            "cancel my subscription",
            "I have a question about my invoice",
        ])
    }

    #[test]
    fn doubtful_near_words_are_corrected() {
        let (text, changes) = vocab().correct(&words(&[
            ("I", 0.9),
            ("want", 0.9),
            ("a", 0.9),
            ("refunt.", 0.3),
        ]));
        assert_eq!(text, "I want a refund.");
        assert_eq!(changes, ["refunt -> refund"]);
    }

    #[test]
    fn confident_words_and_known_words_stay() {
        let v = vocab();
        let (text, changes) = v.correct(&words(&[("refunt", 0.9), ("parcel", 0.2)]));
        assert_eq!(text, "refunt parcel");
        assert!(changes.is_empty());
        // Short words and numbers are never touched.
        let (text, _) = v.correct(&words(&[("mi", 0.1), ("4471", 0.1)]));
        assert_eq!(text, "mi 4471");
    }

    #[test]
    fn split_words_are_joined() {
        let (text, changes) = vocab().correct(&words(&[
            ("Reset", 0.9),
            ("my", 0.9),
            ("pass", 0.4),
            ("word,", 0.6),
            ("please", 0.9),
        ]));
        assert_eq!(text, "Reset my password, please");
        assert_eq!(changes, ["pass word, -> password"]);
    }

    #[test]
    fn longer_words_reach_two_edits_and_ties_are_left_alone() {
        let (text, _) = vocab().correct(&words(&[("Subscripshun", 0.2)]));
        assert_eq!(text, "Subscripshun", "three edits: too far");
        let (text, _) = vocab().correct(&words(&[("subscriptoin", 0.2)]));
        assert_eq!(text, "subscription");
        let tie = Vocabulary::from_phrases(["cart card"]);
        let (text, _) = tie.correct(&words(&[("carx", 0.1)]));
        assert_eq!(text, "carx");
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("parcel", "parcel"), 0);
    }
}
