//! Intent definitions (`sip-config/intents.toml`) and the rule-based intent classifier.
//!
//! The bot has to decide what a caller wants from one noisy transcript. Admins describe each
//! intent in TOML: the team (skill) that takes it over, what the bot does with it (reply,
//! ask for a slot, end the call, escalate), example sentences, and weighted cue phrases.
//! [`RuleClassifier`] scores every intent from
//!
//! * cue phrases ([`Pattern`]s over stemmed, synonym-rewritten words, with `*` gaps), combined as
//!   independent evidence (noisy-OR: `1 - Π(1 - weight)`), so one generic word such as `order`
//!   (0.4) stays weak while `where * order` (0.85) plus `order` is strong; and
//! * similarity to the intent's example sentences (IDF-weighted word overlap), which lets
//!   paraphrases that no cue foresaw still score,
//!
//! A cue that lies inside a longer, at least as strong cue of another intent is explained by
//! that one (`order` inside `cancel * order`, `thanks` inside `^ no thanks`), and cues of
//! `negatable` intents are ignored after a negation ("I don't want to cancel"). The best
//! intent wins (a primary request beats the social words around it: "hello, where is my order"
//! is `order_status`), and its confidence is discounted by how close the runner-up came, so
//! ambiguous turns come out uncertain. Every score is explained in [`IntentMatch::evidence`].
//!
//! The classifier sits behind the [`IntentClassifier`] trait so that a sentence-embedding model
//! can replace it later without touching the dialog logic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::normalize::normalize;
use super::pattern::{negation_before, Pattern, Synonyms, TokenStream, NEGATORS};
use super::slots::KNOWN_SLOTS;
use crate::config_file::{self, ConfigError};

/// The intent name reported when nothing matched.
pub const NONE_INTENT: &str = "none";

/// Turns normalised caller text into an intent. Implementations must be pure and cheap enough
/// to run on every turn.
pub trait IntentClassifier: Send + Sync {
    /// Classifies one normalised utterance (see [`super::normalize::normalize`]).
    fn classify(&self, normalized_text: &str) -> IntentMatch;
}

/// The classifier's verdict on one utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentMatch {
    /// The intent's name, or [`NONE_INTENT`] when nothing matched.
    pub intent: String,
    /// Confidence in `[0, 1]`: about 0.9 for a strong unambiguous match, 0.4–0.6 for a single
    /// generic word, 0 for nothing.
    pub confidence: f32,
    /// Why: which cue phrases matched which words, the closest example, the runner-up.
    pub evidence: Vec<String>,
    /// How upset the turn sounds by its meaning (closeness to the intents file's `[tone]`
    /// examples), from a classifier that models meaning; none from the rules alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tone: Option<MeaningTone>,
}

/// The tone of a turn judged by its meaning rather than by listed words: "nobody ever calls me
/// back" has no angry word, yet means what "I keep calling and nobody helps me" means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeaningTone {
    /// Negativity in `[0, 1)`, on the scale of the word lexicon's score.
    pub score: f32,
    /// The closest `[tone] upset` example.
    pub example: String,
    /// Cosine similarity to that example.
    pub similarity: f32,
    /// Similarity of the closest intent example (a calm request).
    pub calm_similarity: f32,
}

impl IntentMatch {
    /// "Nothing matched".
    pub fn none() -> Self {
        IntentMatch {
            intent: NONE_INTENT.to_string(),
            confidence: 0.0,
            evidence: Vec::new(),
            tone: None,
        }
    }

    /// Whether this is [`NONE_INTENT`].
    pub fn is_none(&self) -> bool {
        self.intent == NONE_INTENT
    }
}

/// What the bot does when an intent is recognised, besides replying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentEscalation {
    /// Handled by the bot.
    #[default]
    No,
    /// The caller asks for a person: hand over at once (reason `explicit_request`).
    ExplicitRequest,
    /// Too sensitive for the bot (complaints, cancellations): hand over at once to the intent's
    /// skill (reason `critical_keyword`).
    Critical,
}

/// The content of `intents.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentsFile {
    /// Teams that can take an escalated call; every intent names one.
    pub skills: Vec<String>,
    /// Team for escalations not tied to an intent (not understood, low ASR confidence, DTMF 0).
    pub default_skill: String,
    /// `canonical = ["variant", ...]`: variants are rewritten to the canonical wording in
    /// utterances, cues and examples alike.
    #[serde(default)]
    pub synonyms: BTreeMap<String, Vec<String>>,
    /// The intents, `[[intent]]` tables.
    #[serde(rename = "intent")]
    pub intents: Vec<IntentDef>,
    /// Example sentences of an upset or sarcastic caller, for a tone judged by meaning.
    #[serde(default)]
    pub tone: ToneExamples,
}

/// The `[tone]` table: how upset callers sound, and how calm callers sound, as whole sentences.
/// A linear model over the sentence embedding is trained on these (and on the intents' own
/// examples, as calm speech) when the intents load (see [`super::tone_model`]), so anger and
/// sarcasm are caught in words no lexicon lists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToneExamples {
    /// Angry, exasperated or sarcastic sentences.
    #[serde(default)]
    pub upset: Vec<String>,
    /// Sentences that are not upset enough for a person although they may sound a little
    /// negative: mild inconvenience, worry, neutral talk about time, a problem long solved.
    #[serde(default)]
    pub calm: Vec<String>,
}

/// One `[[intent]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentDef {
    /// Identifier (lowercase letters, digits, `_`); also the key of its reply in the prompts.
    pub name: String,
    /// The team that takes the call when this intent escalates.
    pub skill: String,
    /// Whether recognising the intent hands the call over.
    #[serde(default)]
    pub escalate: IntentEscalation,
    /// Slots that must be filled before the reply (the bot asks for them).
    #[serde(default)]
    pub requires: Vec<String>,
    /// Whether the bot hangs up after its reply (goodbye).
    #[serde(default)]
    pub ends_call: bool,
    /// An intent that often accompanies another (hello, thanks, yes): it wins only when no
    /// primary intent is about as strong, and does not make primary intents look ambiguous.
    #[serde(default)]
    pub secondary: bool,
    /// Ignore a cue when a negation precedes it ("I don't want to cancel").
    #[serde(default)]
    pub negatable: bool,
    /// Example sentences: documentation, paraphrase similarity, and test material.
    pub examples: Vec<String>,
    /// `"phrase" = weight` cue phrases (`*` skips up to three words, `^`/`$` anchor).
    #[serde(default)]
    pub cues: BTreeMap<String, f32>,
}

/// True for identifiers such as `order_status`.
pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.starts_with(|c: char| c.is_ascii_lowercase())
}

impl IntentsFile {
    /// Parses and validates the text of an intents file; `file` labels errors.
    pub fn from_text(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let parsed: IntentsFile = config_file::parse(file, text)?;
        parsed.validate(file, text)?;
        Ok(parsed)
    }

    /// The definition of intent `name`.
    pub fn intent(&self, name: &str) -> Option<&IntentDef> {
        self.intents.iter().find(|i| i.name == name)
    }

    fn validate(&self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let bad =
            |field: String, reason: String| Err(ConfigError::invalid(file, text, &field, reason));
        if self.skills.is_empty() {
            return bad("skills".into(), "must list at least one skill".into());
        }
        for (i, skill) in self.skills.iter().enumerate() {
            if !is_identifier(skill) {
                return bad(
                    format!("skills.{i}"),
                    format!("`{skill}` is not an identifier (lowercase letters, digits, `_`)"),
                );
            }
            if self.skills[..i].contains(skill) {
                return bad(
                    format!("skills.{i}"),
                    format!("skill `{skill}` is listed twice"),
                );
            }
        }
        if !self.skills.contains(&self.default_skill) {
            return bad(
                "default_skill".into(),
                format!(
                    "unknown skill `{}`; declared skills: {}",
                    self.default_skill,
                    self.skills.join(", ")
                ),
            );
        }
        let synonyms = match Synonyms::new(&self.synonyms) {
            Ok(s) => s,
            Err(e) => {
                let field = match e.variant {
                    Some(v) => format!("synonyms.{}.{v}", e.canonical),
                    None => format!("synonyms.{}", e.canonical),
                };
                return bad(field, e.reason);
            }
        };
        if self.intents.is_empty() {
            return bad("intent".into(), "define at least one [[intent]]".into());
        }
        for (k, example) in self.tone.upset.iter().enumerate() {
            if normalize(example).is_empty() {
                return bad(
                    format!("tone.upset.{k}"),
                    "example sentence is empty".into(),
                );
            }
        }
        for (i, intent) in self.intents.iter().enumerate() {
            let at = |field: &str| format!("intent.{i}.{field}");
            if !is_identifier(&intent.name) {
                return bad(
                    at("name"),
                    format!(
                        "`{}` is not an identifier (lowercase letters, digits, `_`)",
                        intent.name
                    ),
                );
            }
            if intent.name == NONE_INTENT {
                return bad(
                    at("name"),
                    format!("`{NONE_INTENT}` is reserved for \"nothing matched\""),
                );
            }
            if let Some(first) = self.intents[..i].iter().position(|o| o.name == intent.name) {
                let line = config_file::locate(text, &format!("intent.{first}.name"))
                    .map(|l| format!(" (first defined at line {l})"))
                    .unwrap_or_default();
                return bad(
                    at("name"),
                    format!("duplicate intent name `{}`{line}", intent.name),
                );
            }
            if !self.skills.contains(&intent.skill) {
                return bad(
                    at("skill"),
                    format!(
                        "unknown skill `{}`; declared skills: {}",
                        intent.skill,
                        self.skills.join(", ")
                    ),
                );
            }
            if intent.examples.is_empty() {
                return bad(
                    at("examples"),
                    "must list at least one example sentence".into(),
                );
            }
            for (k, example) in intent.examples.iter().enumerate() {
                if normalize(example).is_empty() {
                    return bad(
                        format!("intent.{i}.examples.{k}"),
                        "example sentence is empty".into(),
                    );
                }
            }
            for (phrase, weight) in &intent.cues {
                let field = format!("intent.{i}.cues.{phrase}");
                if !(*weight > 0.0 && *weight <= 1.0) {
                    return bad(field, format!("cue weight {weight} must be in (0, 1]"));
                }
                if let Err(reason) = Pattern::compile(phrase, Some(&synonyms)) {
                    return bad(field, format!("cue \"{phrase}\" {reason}"));
                }
            }
            for (k, slot) in intent.requires.iter().enumerate() {
                if !KNOWN_SLOTS.contains(&slot.as_str()) {
                    return bad(
                        format!("intent.{i}.requires.{k}"),
                        format!(
                            "unknown slot `{slot}`; known slots: {}",
                            KNOWN_SLOTS.join(", ")
                        ),
                    );
                }
            }
            if intent.escalate != IntentEscalation::No
                && (intent.ends_call || !intent.requires.is_empty())
            {
                return bad(at("escalate"), "an escalating intent hands the call over; it cannot also end the call or require slots".into());
            }
        }
        Ok(())
    }
}

/// Cue weight multiplier when a word matched only within one edit.
const FUZZY_FACTOR: f32 = 0.85;
/// Weight of example similarity (applied to the squared cosine similarity).
const EXAMPLE_WEIGHT: f32 = 0.9;
/// Scores below this report [`NONE_INTENT`].
const NONE_FLOOR: f32 = 0.2;
/// A primary intent scoring at least this wins over any secondary one.
const PRIMARY_FLOOR: f32 = 0.35;
/// A secondary intent competes with this fraction of its score.
const SECONDARY_FACTOR: f32 = 0.5;
/// How many words before a cue a negation is looked for (negatable intents).
const NEGATION_SCOPE: usize = 3;

/// Words that carry no intent on their own; ignored for example similarity (cues still see
/// them). Given as stems.
const STOPWORDS: &[&str] = &[
    "a", "an", "the", "i", "me", "my", "you", "your", "we", "our", "us", "it", "is", "am", "are",
    "be", "was", "were", "been", "to", "of", "in", "on", "for", "at", "by", "with", "and", "or",
    "so", "do", "doe", "did", "can", "could", "would", "will", "should", "please", "just", "um",
    "uh", "er", "hmm", "well", "like", "this", "that", "there", "here", "have", "has", "had",
    "some", "any", "about", "oh", "ok", "okay", "yeah", "hi", "hello", "get", "want", "need",
    "know", "wonder", "tell", "let", "think", "also", "really", "very", "actually", "guy",
];

/// The rule-based classifier built from an [`IntentsFile`].
#[derive(Debug, Clone)]
pub struct RuleClassifier {
    synonyms: Synonyms,
    intents: Vec<RuleIntent>,
    idf: HashMap<String, f32>,
    unknown_idf: f32,
}

#[derive(Debug, Clone)]
struct RuleIntent {
    name: String,
    secondary: bool,
    negatable: bool,
    /// Recognising it hands the call over (a request for a person, a critical intent).
    hands_over: bool,
    cues: Vec<(Pattern, f32)>,
    examples: Vec<Example>,
}

#[derive(Debug, Clone)]
struct Example {
    text: String,
    terms: BTreeSet<String>,
}

/// A matched cue phrase: token span, effective weight, explanation.
#[derive(Debug, Clone)]
struct CueHit {
    start: usize,
    end: usize,
    weight: f32,
    source: String,
    text: String,
}

/// One intent's score and its explanation.
struct Scored {
    index: usize,
    score: f32,
    competing: f32,
    evidence: Vec<String>,
}

fn content_terms(stream: &TokenStream) -> BTreeSet<String> {
    stream
        .stems()
        .into_iter()
        .filter(|s| !STOPWORDS.contains(s))
        .map(str::to_string)
        .collect()
}

fn round3(x: f32) -> f32 {
    (x.clamp(0.0, 1.0) * 1000.0).round() / 1000.0
}

impl RuleClassifier {
    /// Builds the classifier from validated intents (cues that do not compile, which
    /// validation rejects, are skipped).
    pub fn new(file: &IntentsFile) -> Self {
        let synonyms = Synonyms::new(&file.synonyms).unwrap_or_default();
        let intents: Vec<RuleIntent> = file
            .intents
            .iter()
            .map(|def| RuleIntent {
                name: def.name.clone(),
                secondary: def.secondary,
                negatable: def.negatable,
                hands_over: def.escalate != IntentEscalation::No,
                cues: def
                    .cues
                    .iter()
                    .filter_map(|(phrase, weight)| {
                        Pattern::compile(phrase, Some(&synonyms))
                            .ok()
                            .map(|p| (p, weight.clamp(0.0, 1.0)))
                    })
                    .collect(),
                examples: def
                    .examples
                    .iter()
                    .map(|text| Example {
                        text: text.clone(),
                        terms: content_terms(&TokenStream::new(&normalize(text), Some(&synonyms))),
                    })
                    .collect(),
            })
            .collect();
        let mut df: HashMap<String, usize> = HashMap::new();
        for intent in &intents {
            let terms: BTreeSet<&String> = intent.examples.iter().flat_map(|e| &e.terms).collect();
            for term in terms {
                *df.entry(term.clone()).or_default() += 1;
            }
        }
        let n = intents.len().max(1) as f32;
        let idf = df
            .into_iter()
            .map(|(term, count)| (term, (1.0 + n / count as f32).ln()))
            .collect();
        RuleClassifier {
            synonyms,
            intents,
            idf,
            unknown_idf: (1.0 + n).ln(),
        }
    }

    fn idf(&self, term: &str) -> f32 {
        self.idf.get(term).copied().unwrap_or(self.unknown_idf)
    }

    /// IDF-weighted cosine similarity of two term sets.
    fn similarity(&self, a: &BTreeSet<String>, b: &BTreeSet<String>) -> f32 {
        let norm = |s: &BTreeSet<String>| s.iter().map(|t| self.idf(t).powi(2)).sum::<f32>().sqrt();
        let (na, nb) = (norm(a), norm(b));
        if na == 0.0 || nb == 0.0 {
            return 0.0;
        }
        let dot: f32 = a.intersection(b).map(|t| self.idf(t).powi(2)).sum();
        dot / (na * nb)
    }

    /// Pass 1: the cue phrases of `intent` that match, minus negated ones (noted).
    fn cue_hits(&self, intent: &RuleIntent, stream: &TokenStream) -> (Vec<CueHit>, Vec<String>) {
        let stems = stream.stems();
        let mut hits = Vec::new();
        let mut notes = Vec::new();
        for (pattern, weight) in &intent.cues {
            let Some(m) = pattern.find(&stems, true) else {
                continue;
            };
            let quote = stream.quote(m.start, m.end);
            if intent.negatable && !NEGATORS.iter().any(|n| pattern.has_word(n)) {
                if let Some(neg) = negation_before(&stems, m.start, NEGATION_SCOPE, &[]) {
                    notes.push(format!(
                        "cue \"{}\" ignored: \"{quote}\" is negated by \"{neg}\"",
                        pattern.source()
                    ));
                    continue;
                }
            }
            let fuzzy = if m.fuzzy { ", fuzzy" } else { "" };
            hits.push(CueHit {
                start: m.start,
                end: m.end,
                weight: if m.fuzzy {
                    weight * FUZZY_FACTOR
                } else {
                    *weight
                },
                source: pattern.source().to_string(),
                text: format!(
                    "cue \"{}\" ({weight:.2}{fuzzy}): \"{quote}\"",
                    pattern.source()
                ),
            });
        }
        (hits, notes)
    }

    /// Pass 2: one intent's score from its surviving cues and its examples.
    fn score(
        &self,
        index: usize,
        hits: Vec<CueHit>,
        notes: Vec<String>,
        others: &[(usize, &CueHit)],
        terms: &BTreeSet<String>,
    ) -> Scored {
        let Some(intent) = self.intents.get(index) else {
            return Scored {
                index,
                score: 0.0,
                competing: 0.0,
                evidence: Vec::new(),
            };
        };
        let mut notes = notes;
        let mut evidence: Vec<(f32, String)> = Vec::new();
        let mut miss = 1.0f32;
        let negated = !notes.is_empty();
        for hit in &hits {
            // A cue inside a longer, at least as strong cue of another intent is explained by
            // that one: "order" in "cancel my order", "thanks" in "no thanks".
            let claimed = others.iter().find(|(other, g)| {
                *other != index
                    && g.start <= hit.start
                    && hit.end <= g.end
                    && g.end - g.start > hit.end - hit.start
                    && g.weight >= hit.weight
            });
            if let Some((other, g)) = claimed {
                let name = self
                    .intents
                    .get(*other)
                    .map(|i| i.name.as_str())
                    .unwrap_or_default();
                notes.push(format!(
                    "cue \"{}\" explained by {name} cue \"{}\"",
                    hit.source, g.source
                ));
                continue;
            }
            miss *= 1.0 - hit.weight;
            evidence.push((hit.weight, hit.text.clone()));
        }
        let cue_score = 1.0 - miss;
        // A negated key word ("I don't want to cancel") also silences the examples' word overlap.
        let silenced = negated && evidence.is_empty();
        let best_example = intent
            .examples
            .iter()
            .map(|e| (self.similarity(terms, &e.terms), e))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let mut example_score = 0.0;
        if let Some((sim, example)) = best_example.filter(|_| !silenced) {
            example_score = EXAMPLE_WEIGHT * sim * sim;
            if example_score >= 0.05 {
                evidence.push((
                    example_score,
                    format!("example \"{}\" (similarity {sim:.2})", example.text),
                ));
            }
        }
        evidence.sort_by(|a, b| b.0.total_cmp(&a.0));
        let score = 1.0 - (1.0 - cue_score) * (1.0 - example_score);
        let mut evidence: Vec<String> = evidence.into_iter().map(|(_, e)| e).collect();
        evidence.extend(notes);
        Scored {
            index,
            score,
            competing: if intent.secondary {
                score * SECONDARY_FACTOR
            } else {
                score
            },
            evidence,
        }
    }
}

impl IntentClassifier for RuleClassifier {
    fn classify(&self, normalized_text: &str) -> IntentMatch {
        let stream = TokenStream::new(normalized_text, Some(&self.synonyms));
        if stream.tokens().is_empty() {
            return IntentMatch::none();
        }
        let terms = content_terms(&stream);
        let hits: Vec<(Vec<CueHit>, Vec<String>)> = self
            .intents
            .iter()
            .map(|i| self.cue_hits(i, &stream))
            .collect();
        let all: Vec<(usize, &CueHit)> = hits
            .iter()
            .enumerate()
            .flat_map(|(i, (h, _))| h.iter().map(move |hit| (i, hit)))
            .collect();
        let mut scored: Vec<Scored> = hits
            .iter()
            .enumerate()
            .map(|(i, (h, notes))| self.score(i, h.clone(), notes.clone(), &all, &terms))
            .collect();
        let secondary = |s: &Scored| self.intents.get(s.index).is_some_and(|i| i.secondary);
        scored.sort_by(|a, b| b.score.total_cmp(&a.score));
        let primaries: Vec<&Scored> = scored.iter().filter(|s| !secondary(s)).collect();
        // A request present in the turn beats the social words around it ("hello, where is my
        // order"), and those do not make it look ambiguous; otherwise secondary intents compete
        // with a reduced score.
        let (best, runner) = match primaries.first() {
            Some(first) if first.score >= PRIMARY_FLOOR => (*first, primaries.get(1).copied()),
            _ => {
                let mut by_competing: Vec<&Scored> = scored.iter().collect();
                by_competing.sort_by(|a, b| {
                    b.competing
                        .total_cmp(&a.competing)
                        .then(b.score.total_cmp(&a.score))
                });
                let Some(first) = by_competing.first().copied() else {
                    return IntentMatch::none();
                };
                (first, by_competing.get(1).copied())
            }
        };
        let name = |s: &Scored| {
            self.intents
                .get(s.index)
                .map(|i| i.name.clone())
                .unwrap_or_default()
        };
        if best.score < NONE_FLOOR {
            let mut none = IntentMatch::none();
            if best.score > 0.0 {
                none.evidence.push(format!(
                    "best candidate {} {:.2} is below {NONE_FLOOR:.2}",
                    name(best),
                    best.score
                ));
            }
            return none;
        }
        let mut evidence = best.evidence.clone();
        let mut confidence = best.score;
        let hands_over = |s: &Scored| self.intents.get(s.index).is_some_and(|i| i.hands_over);
        if let Some(runner) = runner.filter(|r| r.competing > 0.0) {
            if hands_over(best) && !hands_over(runner) {
                // An act outranks a topic: "can I speak to someone about my order" asks for a
                // person; the order is what they will talk about.
                evidence.push(format!(
                    "a hand-over request outranks the topic {} {:.2}",
                    name(runner),
                    runner.score
                ));
                return IntentMatch {
                    intent: name(best),
                    confidence: round3(confidence),
                    evidence,
                    tone: None,
                };
            }
            let (ours, theirs) = if secondary(best) {
                (best.competing, runner.competing)
            } else {
                (best.score, runner.score)
            };
            let ratio = (theirs / ours.max(f32::EPSILON)).min(1.0);
            confidence *= 1.0 - 0.5 * ratio * ratio;
            evidence.push(format!("runner-up {} {:.2}", name(runner), runner.score));
        }
        IntentMatch {
            intent: name(best),
            confidence: round3(confidence),
            evidence,
            tone: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialog::normalize::normalize;

    const EMBEDDED: &str = include_str!("../../sip-config/intents.toml");

    fn classifier() -> RuleClassifier {
        let file = IntentsFile::from_text(Path::new("intents.toml"), EMBEDDED)
            .expect("embedded intents are valid");
        RuleClassifier::new(&file)
    }

    fn classify(c: &RuleClassifier, text: &str) -> IntentMatch {
        c.classify(&normalize(text))
    }

    /// (transcript as whisper might write it, expected intent). Most are paraphrases that do not
    /// appear literally in intents.toml.
    const PHRASINGS: &[(&str, &str)] = &[
        ("Where is my order?", "order_status"),
        ("My package hasn't arrived yet.", "order_status"),
        ("Where's my parcel?", "order_status"),
        ("I'd like to track my delivery, please.", "order_status"),
        (
            "Hi, um, I ordered something last week and it still hasn't come.",
            "order_status",
        ),
        ("WHEN WILL MY ORDER ARRIVE", "order_status"),
        ("I never got my shipment", "order_status"),
        (
            "Can you check the status of my order? It's 1-2-3-4-5.",
            "order_status",
        ),
        ("my order number is one two three four", "order_status"),
        ("I can't log in.", "password_reset"),
        ("I'm locked out of my account", "password_reset"),
        ("Reset my password, please.", "password_reset"),
        ("I forgot my pasword", "password_reset"),
        ("The website won't let me sign in", "password_reset"),
        ("I need a new password", "password_reset"),
        ("I cannot access my account anymore.", "password_reset"),
        ("When are you open?", "opening_hours"),
        ("Are you open on Saturday?", "opening_hours"),
        ("What time do you close today?", "opening_hours"),
        ("What are your opening hours?", "opening_hours"),
        (
            "Uh, yeah, hi. I was wondering when you guys open tomorrow?",
            "opening_hours",
        ),
        ("Is the shop open on Sundays?", "opening_hours"),
        ("I need a real person.", "human_request"),
        ("Get me an agent.", "human_request"),
        ("Let me talk to someone.", "human_request"),
        ("Can I speak to a human, please?", "human_request"),
        ("Operator!", "human_request"),
        ("Put me through to a representative", "human_request"),
        ("I want to speak with your manager", "human_request"),
        ("I want to make a formal complaint.", "complaint"),
        ("I'd like to complain about your service", "complaint"),
        ("I'm going to get my lawyer involved", "complaint"),
        ("I want to cancel my order.", "cancellation"),
        ("Please cancel my subscription", "cancellation"),
        ("I want to terminate my contract", "cancellation"),
        ("How do I close my account?", "cancellation"),
        ("Hello?", "greeting"),
        ("Good morning!", "greeting"),
        ("Thank you so much.", "thanks"),
        ("Cheers, that's helpful", "thanks"),
        ("That's all, goodbye.", "goodbye"),
        ("Bye!", "goodbye"),
        ("Thanks, bye.", "goodbye"),
        ("Yes, that's right.", "affirm"),
        ("Yeah, sure", "affirm"),
        ("No thanks.", "deny"),
        ("Nope.", "deny"),
        (
            "Hello, I'm calling about my order, it should have been here by now.",
            "order_status",
        ),
        ("Has my parcel been shipped yet?", "order_status"),
        ("Any update on my delivery?", "order_status"),
        (
            "The tracking says delivered but I have nothing.",
            "order_status",
        ),
        ("I'm still waiting for my package.", "order_status"),
        (
            "Could you tell me when my shipment will get here?",
            "order_status",
        ),
        ("I need to check on an order I placed.", "order_status"),
        ("i forgot my login details", "password_reset"),
        ("My password isn't working.", "password_reset"),
        ("How do I change my password?", "password_reset"),
        ("It keeps saying my password is wrong.", "password_reset"),
        ("I'm unable to sign into my account.", "password_reset"),
        ("Can you send me a password reset link?", "password_reset"),
        ("What are your business hours?", "opening_hours"),
        ("How late are you open tonight?", "opening_hours"),
        ("Are you guys open this weekend?", "opening_hours"),
        ("Until when are you open on Friday?", "opening_hours"),
        ("When do you close on Saturdays?", "opening_hours"),
        ("Can I talk to an actual human being?", "human_request"),
        ("I'd rather speak to a person.", "human_request"),
        ("Transfer me to customer service.", "human_request"),
        ("I don't want to talk to a machine.", "human_request"),
        ("Is there someone I can speak with?", "human_request"),
        ("Connect me with an operator please.", "human_request"),
        ("I'd like to file a complaint.", "complaint"),
        ("I want to unsubscribe.", "cancellation"),
        ("I'd like to end my contract.", "cancellation"),
        ("Please terminate my account.", "cancellation"),
        ("Stop my subscription.", "cancellation"),
        ("Hi, good afternoon.", "greeting"),
        ("Thanks a lot, that was really helpful.", "thanks"),
        ("I appreciate it.", "thanks"),
        ("That's everything, bye bye.", "goodbye"),
        ("OK that's all I needed, have a nice day.", "goodbye"),
        ("Yep, correct.", "affirm"),
        ("Absolutely, yes.", "affirm"),
        ("Nah, I'm good.", "deny"),
        ("What's the capital of France?", NONE_INTENT),
        ("Can you sing me a song?", NONE_INTENT),
        ("The weather is lovely today.", NONE_INTENT),
        ("Blue elephants.", NONE_INTENT),
        ("", NONE_INTENT),
    ];

    #[test]
    fn classifies_varied_phrasings() {
        let c = classifier();
        let mut failures = Vec::new();
        for (text, expected) in PHRASINGS {
            let m = classify(&c, text);
            if m.intent != *expected {
                failures.push(format!(
                    "{text:?}: expected {expected}, got {} {:.2} {:?}",
                    m.intent, m.confidence, m.evidence
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} misclassified:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn most_phrasings_are_paraphrases_not_examples() {
        let file = IntentsFile::from_text(Path::new("intents.toml"), EMBEDDED).expect("valid");
        let examples: BTreeSet<String> = file
            .intents
            .iter()
            .flat_map(|i| &i.examples)
            .map(|e| normalize(e))
            .collect();
        let novel = PHRASINGS
            .iter()
            .filter(|(t, e)| *e != NONE_INTENT && !examples.contains(&normalize(t)))
            .count();
        assert!(
            novel >= 60,
            "only {novel} phrasings are not literal examples"
        );
    }

    #[test]
    fn recognised_phrasings_clear_the_default_threshold() {
        let c = classifier();
        for (text, expected) in PHRASINGS.iter().filter(|(_, e)| *e != NONE_INTENT) {
            let m = classify(&c, text);
            assert!(
                m.confidence >= 0.5,
                "{text:?} → {expected} only {:.2}: {:?}",
                m.confidence,
                m.evidence
            );
        }
    }

    #[test]
    fn every_example_classifies_as_its_own_intent() {
        let file = IntentsFile::from_text(Path::new("intents.toml"), EMBEDDED).expect("valid");
        let c = RuleClassifier::new(&file);
        for intent in &file.intents {
            for example in &intent.examples {
                let m = classify(&c, example);
                assert_eq!(
                    m.intent, intent.name,
                    "example {example:?}: {:?}",
                    m.evidence
                );
            }
        }
    }

    #[test]
    fn confidence_is_calibrated() {
        let c = classifier();
        let strong = classify(&c, "Where is my order?");
        assert!(strong.confidence >= 0.85, "strong: {strong:?}");
        let weak = classify(&c, "order");
        assert_eq!(weak.intent, "order_status");
        assert!((0.35..=0.6).contains(&weak.confidence), "weak: {weak:?}");
        let nothing = classify(&c, "purple monkey dishwasher");
        assert_eq!(nothing.intent, NONE_INTENT);
        assert_eq!(nothing.confidence, 0.0);
    }

    #[test]
    fn generic_word_does_not_misfire() {
        let c = classifier();
        let m = classify(&c, "I want to cancel my order");
        assert_eq!(m.intent, "cancellation", "{m:?}");
        assert!(m.confidence >= 0.7, "{m:?}");
        assert!(
            m.evidence
                .iter()
                .any(|e| e.contains("runner-up order_status")
                    || e.contains("outranks the topic order_status")),
            "{m:?}"
        );
    }

    #[test]
    fn evidence_quotes_the_callers_words() {
        let c = classifier();
        let m = classify(&c, "My package hasn't arrived");
        assert!(
            m.evidence.iter().any(|e| e.contains("\"hasn't arrived\"")),
            "{m:?}"
        );
        let m = classify(&c, "I forgot my pasword");
        assert!(m.evidence.iter().any(|e| e.contains("fuzzy")), "{m:?}");
    }

    #[test]
    fn negated_critical_cue_is_ignored() {
        let c = classifier();
        let m = classify(&c, "I don't want to cancel, where is my order?");
        assert_eq!(m.intent, "order_status", "{m:?}");
        let m = classify(&c, "I don't want to cancel anything");
        assert_ne!(m.intent, "cancellation", "{m:?}");
    }

    #[test]
    fn ambiguity_lowers_confidence() {
        let c = classifier();
        let clear = classify(&c, "where is my order");
        let mixed = classify(&c, "where is my order and I can't log in");
        assert!(
            mixed.confidence < clear.confidence - 0.2,
            "{clear:?} vs {mixed:?}"
        );
    }

    #[test]
    fn secondary_intent_does_not_mask_a_request() {
        let c = classifier();
        let m = classify(&c, "Hi there, I can't log in to my account");
        assert_eq!(m.intent, "password_reset");
        assert!(m.confidence >= 0.75, "{m:?}");
    }
}
