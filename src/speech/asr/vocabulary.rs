//! Post-correction of doubtful words towards the flow's own vocabulary.
//!
//! Neither engine takes a word list at decode time (whisper's initial prompt biases it only
//! loosely, Moonshine has none), but both say how sure they are of each word. A word the
//! engine doubts (confidence below [`DOUBTFUL`]) that is one or two letters away from a word
//! of the flow's vocabulary (its intents' examples and synonyms, its escalation phrases:
//! "refund", "invoice", "cancellation", product names) is replaced by the closest one, but
//! only when it is not an English word itself: "refunt" and "sub-cription" are corrected,
//! "whether" is never turned into "tether". English words are the neural voice's pronouncing
//! lexicon (about 90,000 words, [`Dictionary`]); without it no single word is replaced. Two
//! doubtful neighbours whose concatenation is a vocabulary word are joined ("pass word" ->
//! "password"). Words the engine is sure of, short words and numbers are never touched, so a
//! correct transcript stays as it was.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// English words (lower case): a word in it is never replaced.
#[derive(Debug, Default)]
pub struct Dictionary(HashSet<String>);

impl Dictionary {
    /// The words of a pronouncing lexicon: a JSON object whose keys are words.
    pub fn from_lexicon(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let entries: HashMap<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Dictionary(
            entries.into_keys().map(|w| w.to_lowercase()).collect(),
        ))
    }

    /// A dictionary of `words`.
    pub fn from_words<'a>(words: impl IntoIterator<Item = &'a str>) -> Self {
        Dictionary(words.into_iter().map(str::to_lowercase).collect())
    }

    /// Whether `word` (lower case) is an English word.
    pub fn contains(&self, word: &str) -> bool {
        self.0.contains(word)
    }

    /// The lexicon at `path`, loaded once per process and shared; None (with one warning) when
    /// it cannot be read.
    pub fn shared(path: &Path) -> Option<Arc<Dictionary>> {
        type Loaded = Mutex<HashMap<PathBuf, Option<Arc<Dictionary>>>>;
        static LOADED: OnceLock<Loaded> = OnceLock::new();
        let mut loaded = LOADED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        loaded
            .entry(path.to_path_buf())
            .or_insert_with(|| match Dictionary::from_lexicon(path) {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    tracing::warn!(error = %e, "no English word list: recognition is only corrected by joining split words");
                    None
                }
            })
            .clone()
    }
}

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
    /// English words, never replaced; without it, no single word is.
    dictionary: Option<Arc<Dictionary>>,
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
        Vocabulary {
            words,
            targets,
            dictionary: None,
        }
    }

    /// The vocabulary with the English words it must never replace.
    pub fn with_dictionary(mut self, dictionary: Option<Arc<Dictionary>>) -> Self {
        self.dictionary = dictionary;
        self
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
            let plain = lower.replace('-', "");
            let unknown = self
                .dictionary
                .as_ref()
                .is_some_and(|d| !d.contains(&lower) && !d.contains(&plain));
            if word.confidence < DOUBTFUL && unknown && !self.words.contains(&plain) {
                if let Some(best) = self.closest(&plain) {
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
    levenshtein(&a, &b)
}

/// Edits (substitutions, deletions, insertions) from `a` to `b`: over characters for the
/// correction, over words for word error rates.
pub fn levenshtein<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let cost = usize::from(x != y);
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
        let english = Dictionary::from_words([
            "i",
            "want",
            "a",
            "refund",
            "where",
            "is",
            "my",
            "parcel",
            "reset",
            "password",
            "cancel",
            "subscription",
            "have",
            "question",
            "about",
            "invoice",
            "whether",
            "pass",
            "word",
            "please",
            "cart",
            "card",
            "tether",
        ]);
        Vocabulary::from_phrases([
            "I want a refund",
            "where is my parcel",
            "reset my password",
            "cancel my subscription",
            "I have a question about my invoice",
            "I'm at the end of my tether",
        ])
        .with_dictionary(Some(Arc::new(english)))
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
    fn english_words_are_never_replaced() {
        // "whether" is one letter from "tether", but it is a word.
        let (text, changes) = vocab().correct(&words(&[("whether", 0.2), ("is", 0.9)]));
        assert_eq!(text, "whether is");
        assert!(changes.is_empty());
        // Hyphenated slips are matched without the hyphen.
        let (text, _) = vocab().correct(&words(&[("sub-cription.", 0.3)]));
        assert_eq!(text, "subscription.");
        // Without a word list, nothing is replaced (only joined).
        let bare = Vocabulary::from_phrases(["I want a refund"]);
        let (text, _) = bare.correct(&words(&[("refunt", 0.1)]));
        assert_eq!(text, "refunt");
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
        let tie = Vocabulary::from_phrases(["cart card"])
            .with_dictionary(Some(Arc::new(Dictionary::from_words(["cart", "card"]))));
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
