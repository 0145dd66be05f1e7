//! When the bot hands a call to a person, and why.
//!
//! A voicebot that never lets go frustrates callers; one that escalates at random wastes
//! agents. The rules are therefore explicit, configurable (`[escalation]` in the gateway's
//! TOML, [`EscalationConfig`]) and explained: every [`Escalation`] carries an
//! [`EscalationReason`] and a human-readable detail naming the words, scores and thresholds
//! that decided it.
//!
//! [`EscalationPolicy`] is the per-call state machine: it checks each turn for critical keywords
//! (negation-aware: "I don't want to cancel my contract" is not one) and negative tone (a small
//! lexicon; "not happy" counts, "not bad" does not; sarcasm cues such as "oh great, another
//! robot" count), and counts failed turns (low ASR confidence, nothing understood) so that the
//! bot asks for clarification first and escalates when clarification keeps failing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::intent::MeaningTone;
use super::pattern::{negation_before, Match, Pattern, TokenStream, NEGATORS};
use crate::config_file::ConfigError;

/// Why a call was handed to a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationReason {
    /// The caller asked for a person.
    ExplicitRequest,
    /// A critical keyword or intent (complaint, cancellation, legal threat).
    CriticalKeyword,
    /// The recogniser was unsure of what it heard, repeatedly.
    LowAsrConfidence,
    /// The bot did not understand the request, repeatedly.
    LowIntentConfidence,
    /// Too many misunderstood turns in the call overall.
    RepeatedMisunderstanding,
    /// The caller sounds upset.
    NegativeTone,
    /// The caller pressed 0.
    Dtmf0,
    /// The caller said nothing, prompt after prompt (`max_no_input` silences in a row).
    NoInput,
}

/// What the bot does when the caller stays silent `max_no_input` times in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoInputAction {
    /// Hand the call to a person (reason [`EscalationReason::NoInput`]): a caller who cannot
    /// be heard may still be there, and a person can tell.
    #[default]
    Handover,
    /// Say the `[no_input] goodbye` prompt and hang up.
    Hangup,
}

/// A decision to hand the call over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    pub reason: EscalationReason,
    /// Human-readable explanation: which words, which scores against which thresholds.
    pub detail: String,
    /// The team that should take the call (a skill from intents.toml).
    pub skill: String,
    /// The caller turn (1-based; key presses count as turns) on which it was decided.
    pub turn: u32,
}

/// The `[escalation]` table of the gateway configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationConfig {
    /// Turns whose ASR confidence is below this are not trusted (the bot asks to repeat).
    pub min_asr_confidence: f32,
    /// Intents recognised with less confidence than this count as not understood.
    pub min_intent_confidence: f32,
    /// Clarification prompts the bot tries in a row before escalating (0: escalate at the
    /// first failed turn).
    pub clarifications_before_escalation: u32,
    /// Misunderstood turns tolerated in one call (not necessarily in a row); one more
    /// escalates with `repeated_misunderstanding`.
    pub max_misunderstandings: u32,
    /// Phrases that hand the call over at once (`*` skips up to three words). Ignored when
    /// negated ("I don't want to cancel my contract").
    pub critical_keywords: Vec<String>,
    /// Words and phrases that signal an upset caller; negated ones do not count ("not bad").
    pub negative_words: Vec<String>,
    /// Words and phrases that say the caller is very upset ("livid", "sick and tired"): each
    /// weighs as much as an intensified negative word, so one alone reaches the default
    /// threshold.
    pub strong_negative_words: Vec<String>,
    /// Words that signal an upset caller when negated ("not happy").
    pub positive_words: Vec<String>,
    /// Sarcastic phrases that count as negative ("oh great", "another robot").
    pub sarcasm_cues: Vec<String>,
    /// Praise that is sarcastic when it opens a turn that also names a setback ("brilliant,
    /// lost again"): sarcasm by contrast.
    pub sarcastic_praise: Vec<String>,
    /// Setbacks that turn opening praise into sarcasm ("lost", "expired", "still no").
    pub setbacks: Vec<String>,
    /// Tone score (`hits / (hits + 1)`, a hit weighing 1, or 1.5 after an intensifier such as
    /// "very") at or above which the call escalates; 0.6 needs "very annoyed" or two hits,
    /// 1.0 disables.
    pub negative_tone_threshold: f32,
    /// Share of the voice's arousal (against the caller's own baseline) in a turn's emotion
    /// score; the voice amplifies negative words and never escalates alone. 0 ignores the voice.
    pub voice_weight: f32,
    /// An intent that hands the call over (critical or a request for a person) escalates from
    /// this confidence on, below `min_intent_confidence`: suspecting a cancellation or a legal
    /// threat is enough, as handing over is the safe mistake.
    pub min_critical_confidence: f32,
    /// Turns over which a steadily rising emotion score escalates (0 disables the trend).
    pub trend_turns: u32,
    /// The last score of a rising trend must reach this to escalate.
    pub trend_min_score: f32,
    /// The tone model's probability (see [`super::tone_model`]) at which a turn's meaning alone
    /// counts as upset enough to hand over. Lower catches more anger said plainly and hands
    /// over more callers who are only mildly frustrated about something the bot could solve;
    /// higher the reverse (see the README for measured figures).
    pub meaning_tone_threshold: f32,
    /// Seconds of silence after the bot's prompt has finished playing before the bot prompts
    /// again (0 disables no-input handling).
    pub no_input_s: f32,
    /// Silences in a row that end the bot's patience: the ones before re-prompt, this one
    /// takes `no_input_action`.
    pub max_no_input: u32,
    /// What the last silence does: `handover` (reason `no_input`) or `hangup` (after the
    /// `[no_input] goodbye` prompt).
    pub no_input_action: NoInputAction,
    /// The same, once the bot has answered a request in the call: a caller who got an answer
    /// and then says nothing is more likely done than in need of a person.
    pub no_input_action_answered: NoInputAction,
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl Default for EscalationConfig {
    fn default() -> Self {
        EscalationConfig {
            min_asr_confidence: 0.45,
            min_intent_confidence: 0.5,
            clarifications_before_escalation: 1,
            max_misunderstandings: 2,
            critical_keywords: strings(&[
                "formal complaint",
                "make a complaint",
                "cancel my contract",
                "cancel my subscription",
                "cancel my account",
                "close my account",
                "lawyer",
                "solicitor",
                "attorney",
                "legal action",
                "ombudsman",
                "trading standards",
                "small claims",
                "take you to court",
                "sue you",
            ]),
            negative_words: strings(&[
                "ridiculous",
                "unacceptable",
                "useless",
                "terrible",
                "awful",
                "horrible",
                "worst",
                "disgusting",
                "pathetic",
                "rubbish",
                "garbage",
                "stupid",
                "hate",
                "angry",
                "mad",
                "upset",
                "annoyed",
                "annoying",
                "frustrated",
                "frustrating",
                "sick of",
                "nightmare",
                "shocking",
                "hopeless",
                "disappointed",
                "waste of time",
                "incompetent",
                "joke",
                "bad",
            ]),
            strong_negative_words: strings(&[
                "furious",
                "livid",
                "fuming",
                "outraged",
                "outrageous",
                "seething",
                "appalling",
                "appalled",
                "disgrace",
                "disgraceful",
                "shambles",
                "sick and tired",
                "had enough",
                "fed up",
                "end of my tether",
                "for god's sake",
                "for goodness sake",
                "for heaven's sake",
                "for crying out loud",
                "scandalous",
                "infuriating",
                "despicable",
            ]),
            positive_words: strings(&[
                "happy",
                "good",
                "great",
                "satisfied",
                "pleased",
                "helpful",
                "acceptable",
                "okay",
            ]),
            sarcasm_cues: strings(&[
                "oh great",
                "oh wonderful",
                "oh perfect",
                "oh brilliant",
                "just great",
                "just perfect",
                "yeah right",
                "thanks for nothing",
                "thank you for nothing",
                "another robot",
                "another machine",
            ]),
            sarcastic_praise: strings(&[
                "great",
                "wonderful",
                "fantastic",
                "brilliant",
                "perfect",
                "lovely",
                "marvellous",
                "amazing",
                "excellent",
                "superb",
                "terrific",
                "splendid",
                "fabulous",
            ]),
            setbacks: strings(&[
                "again",
                "lost",
                "expired",
                "broken",
                "damaged",
                "still no",
                "still not",
                "still waiting",
                "still nothing",
                "on hold",
                "nobody",
                "no one",
                "cut off",
            ]),
            negative_tone_threshold: 0.6,
            voice_weight: 0.4,
            min_critical_confidence: 0.25,
            trend_turns: 3,
            trend_min_score: 0.45,
            meaning_tone_threshold: 0.65,
            no_input_s: 7.0,
            max_no_input: 3,
            no_input_action: NoInputAction::Handover,
            no_input_action_answered: NoInputAction::Hangup,
        }
    }
}

impl EscalationConfig {
    /// The silence after a prompt that counts as no input; none when switched off.
    pub fn no_input_timeout(&self) -> Option<std::time::Duration> {
        (self.no_input_s > 0.0).then(|| std::time::Duration::from_secs_f32(self.no_input_s))
    }

    /// Checks ranges and phrases; errors name `prefix.field` (e.g. `escalation.min_asr_confidence`)
    /// and its line in `text`, the content of `file`. Use an empty prefix for a top-level table.
    pub fn validate(&self, file: &Path, text: &str, prefix: &str) -> Result<(), ConfigError> {
        let field = |name: &str| {
            if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}.{name}")
            }
        };
        let bad = |name: &str, reason: String| {
            Err(ConfigError::invalid(file, text, &field(name), reason))
        };
        for (name, value) in [
            ("min_asr_confidence", self.min_asr_confidence),
            ("min_intent_confidence", self.min_intent_confidence),
            ("voice_weight", self.voice_weight),
            ("min_critical_confidence", self.min_critical_confidence),
            ("trend_min_score", self.trend_min_score),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return bad(name, format!("{value} must be between 0 and 1"));
            }
        }
        if !(self.negative_tone_threshold > 0.0 && self.negative_tone_threshold <= 1.0) {
            return bad(
                "negative_tone_threshold",
                format!(
                    "{} must be above 0 and at most 1 (1 disables tone escalation)",
                    self.negative_tone_threshold
                ),
            );
        }
        if !(self.meaning_tone_threshold >= 0.5 && self.meaning_tone_threshold < 1.0) {
            return bad(
                "meaning_tone_threshold",
                format!(
                    "{} must be at least 0.5 and below 1",
                    self.meaning_tone_threshold
                ),
            );
        }
        if self.trend_turns == 1 || self.trend_turns > 10 {
            return bad(
                "trend_turns",
                format!("{} must be 0 (off) or between 2 and 10", self.trend_turns),
            );
        }
        if self.clarifications_before_escalation > 10 {
            return bad(
                "clarifications_before_escalation",
                format!(
                    "{} must be at most 10",
                    self.clarifications_before_escalation
                ),
            );
        }
        if self.no_input_s != 0.0 && !(2.0..=120.0).contains(&self.no_input_s) {
            return bad(
                "no_input_s",
                format!(
                    "{} must be 0 (off) or between 2 and 120 seconds",
                    self.no_input_s
                ),
            );
        }
        if !(1..=10).contains(&self.max_no_input) {
            return bad(
                "max_no_input",
                format!("{} must be between 1 and 10", self.max_no_input),
            );
        }
        if !(1..=50).contains(&self.max_misunderstandings) {
            return bad(
                "max_misunderstandings",
                format!("{} must be between 1 and 50", self.max_misunderstandings),
            );
        }
        for (name, list) in [
            ("critical_keywords", &self.critical_keywords),
            ("negative_words", &self.negative_words),
            ("strong_negative_words", &self.strong_negative_words),
            ("positive_words", &self.positive_words),
            ("sarcasm_cues", &self.sarcasm_cues),
            ("sarcastic_praise", &self.sarcastic_praise),
            ("setbacks", &self.setbacks),
        ] {
            for (i, phrase) in list.iter().enumerate() {
                if let Err(reason) = Pattern::compile(phrase, None) {
                    return bad(&format!("{name}.{i}"), format!("\"{phrase}\" {reason}"));
                }
            }
        }
        Ok(())
    }
}

/// Words that may come before a turn's opening praise without changing it ("oh, brilliant").
const OPENING_FILLERS: &[&str] = &[
    "oh", "well", "yeah", "um", "uh", "wow", "just", "so", "really",
];

/// Weight of one `strong_negative_words` match (a plain negative word weighs 1).
const STRONG_WEIGHT: f32 = 1.5;

/// Words that strengthen the negative word after them.
const INTENSIFIERS: &[&str] = &[
    "very",
    "really",
    "so",
    "absolutely",
    "totally",
    "completely",
    "extremely",
    "incredibly",
    "utterly",
    "bloody",
    "fucking",
    "damn",
    "such",
    "too",
];
/// Words that do not end a negation's reach in tone analysis ("not at all happy").
const NEGATION_TRANSPARENT: &[&str] = &[
    "very",
    "really",
    "so",
    "too",
    "quite",
    "that",
    "at",
    "all",
    "exactly",
    "particularly",
    "feel",
    "total",
    "completely",
    "entirely",
];
/// How far (in words) a negation reaches back from a critical keyword.
const CRITICAL_NEGATION_SCOPE: usize = 3;

/// A critical keyword found in an utterance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeywordHit {
    /// The configured phrase.
    pub keyword: String,
    /// The caller's words that matched it.
    pub matched: String,
}

/// The tone of one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Tone {
    /// `hits / (hits + 1)`, in `[0, 1)`.
    pub score: f32,
    /// The caller's words that counted, e.g. `"not happy"`, `"very annoyed"`, `"oh great"`.
    pub cues: Vec<String>,
    /// Whether the caller negated a negative word ("I'm not angry").
    pub denied: bool,
}

impl Tone {
    /// The tone with the judgement of a model of meaning taken in, put on the lexicon's
    /// scale: the model's probability times `negative_tone_threshold / meaning_tone_threshold`
    /// (so a probability at `meaning_tone_threshold` reaches the escalation threshold). The
    /// higher of the two scores counts, and the meaning's closest upset example becomes a cue
    /// when it decides. A negated lexicon word ("not angry") vetoes the meaning, which barely
    /// sees "not".
    pub fn with_meaning(
        mut self,
        meaning: Option<&MeaningTone>,
        config: &EscalationConfig,
    ) -> Tone {
        let Some(m) = meaning else {
            return self;
        };
        let scale = config.negative_tone_threshold / config.meaning_tone_threshold;
        let score = (m.score * scale).min(0.999);
        if self.denied || score <= self.score {
            return self;
        }
        self.score = (score * 1000.0).round() / 1000.0;
        self.cues.push(format!(
            "sounds upset by its meaning (tone model {:.2}, meaning_tone_threshold {:.2}), like \"{}\" (similarity {:.2}; closest request {:.2})",
            m.score, config.meaning_tone_threshold, m.example, m.similarity, m.calm_similarity
        ));
        self
    }
}

/// A turn that the bot could not act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// ASR confidence below `min_asr_confidence`.
    LowAsr { confidence: f32 },
    /// No intent, or one below `min_intent_confidence`.
    LowIntent { intent: String, confidence: f32 },
    /// The bot asked for a slot and the answer did not contain it.
    MissingSlot { slot: String },
}

impl Failure {
    fn describe(&self, config: &EscalationConfig) -> String {
        match self {
            Failure::LowAsr { confidence } => format!(
                "ASR confidence {confidence:.2} below min_asr_confidence {:.2}",
                config.min_asr_confidence
            ),
            Failure::LowIntent { intent, confidence } if intent == super::intent::NONE_INTENT => {
                format!(
                    "no intent recognised (min_intent_confidence {:.2})",
                    config.min_intent_confidence
                )
            }
            Failure::LowIntent { intent, confidence } => format!(
                "intent {intent} confidence {confidence:.2} below min_intent_confidence {:.2}",
                config.min_intent_confidence
            ),
            Failure::MissingSlot { slot } => format!("asked for {slot} but did not get it"),
        }
    }
}

/// Per-call escalation state (see the module docs).
#[derive(Debug, Clone)]
pub struct EscalationPolicy {
    config: EscalationConfig,
    critical: Vec<Pattern>,
    negative: Vec<Pattern>,
    strong: Vec<Pattern>,
    positive: Vec<Pattern>,
    sarcasm: Vec<Pattern>,
    praise: Vec<Pattern>,
    setbacks: Vec<Pattern>,
    consecutive_failures: u32,
    misunderstandings: u32,
}

fn compile_all(list: &[String]) -> Vec<Pattern> {
    list.iter()
        .filter_map(|phrase| match Pattern::compile(phrase, None) {
            Ok(p) => Some(p),
            Err(reason) => {
                tracing::warn!(
                    phrase,
                    reason,
                    "escalation phrase skipped (config not validated?)"
                );
                None
            }
        })
        .collect()
}

impl EscalationPolicy {
    /// A fresh policy for one call. Phrases that do not compile (which
    /// [`EscalationConfig::validate`] rejects) are skipped with a warning.
    pub fn new(config: EscalationConfig) -> Self {
        EscalationPolicy {
            critical: compile_all(&config.critical_keywords),
            negative: compile_all(&config.negative_words),
            strong: compile_all(&config.strong_negative_words),
            positive: compile_all(&config.positive_words),
            sarcasm: compile_all(&config.sarcasm_cues),
            praise: compile_all(&config.sarcastic_praise),
            setbacks: compile_all(&config.setbacks),
            config,
            consecutive_failures: 0,
            misunderstandings: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EscalationConfig {
        &self.config
    }

    /// Failed turns in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Failed turns in the call so far.
    pub fn misunderstandings(&self) -> u32 {
        self.misunderstandings
    }

    /// Whether an ASR confidence is too low to trust the words (NaN counts as too low).
    pub fn asr_too_low(&self, asr_confidence: f32) -> bool {
        asr_confidence.is_nan() || asr_confidence < self.config.min_asr_confidence
    }

    /// Whether an intent confidence is high enough to act on.
    pub fn intent_confident(&self, confidence: f32) -> bool {
        confidence >= self.config.min_intent_confidence
    }

    /// The first configured critical keyword in the utterance that is not negated.
    pub fn critical_keyword(&self, normalized: &str) -> Option<KeywordHit> {
        let stream = TokenStream::new(normalized, None);
        let stems = stream.stems();
        self.critical.iter().find_map(|pattern| {
            let negatable = !NEGATORS.iter().any(|n| pattern.has_word(n));
            pattern
                .find_all(&stems, false)
                .into_iter()
                .find(|m| {
                    !negatable
                        || negation_before(&stems, m.start, CRITICAL_NEGATION_SCOPE, &[]).is_none()
                })
                .map(|m| KeywordHit {
                    keyword: pattern.source().to_string(),
                    matched: stream.quote(m.start, m.end),
                })
        })
    }

    /// Scores the tone of an utterance (see [`EscalationConfig::negative_tone_threshold`]).
    pub fn tone(&self, normalized: &str) -> Tone {
        let stream = TokenStream::new(normalized, None);
        let stems = stream.stems();
        let mut total = 0.0f32;
        let mut cues = Vec::new();
        let negated =
            |start: usize| negation_before(&stems, start, 1, NEGATION_TRANSPARENT).is_some();
        let intensified = |start: usize| {
            start
                .checked_sub(1)
                .and_then(|p| stems.get(p))
                .is_some_and(|s| INTENSIFIERS.contains(s))
        };
        // Each word counts once ("annoyed" and "annoying" share a stem; "great" in "oh great").
        let mut used = vec![false; stems.len()];
        for pattern in &self.sarcasm {
            for m in pattern.find_all(&stems, false) {
                if claim(&mut used, m.start, m.end) {
                    // Sarcasm is deliberate: one cue weighs as much as an intensified word.
                    total += 1.5;
                    cues.push(format!("sarcasm \"{}\"", stream.quote(m.start, m.end)));
                }
            }
        }
        if let Some((praise, setback)) = self.contrast(&stems, &used) {
            claim(&mut used, praise.start, praise.end);
            total += 1.5;
            cues.push(format!(
                "sarcasm \"{}\" despite \"{}\"",
                stream.quote(praise.start, praise.end),
                stream.quote(setback.start, setback.end)
            ));
        }
        let mut denied = false;
        // Strong words first, so that "fed up" counts as strong and not also as "fed".
        let weighted = self
            .strong
            .iter()
            .map(|p| (p, STRONG_WEIGHT))
            .chain(self.negative.iter().map(|p| (p, 1.0)));
        for (pattern, base) in weighted {
            for m in pattern.find_all(&stems, false) {
                if negated(m.start) {
                    denied = true;
                    continue;
                }
                if !claim(&mut used, m.start, m.end) {
                    continue;
                }
                let (weight, from) = if intensified(m.start) {
                    (base + 0.5, m.start - 1)
                } else {
                    (base, m.start)
                };
                total += weight;
                cues.push(format!("\"{}\"", stream.quote(from, m.end)));
            }
        }
        for pattern in &self.positive {
            for m in pattern.find_all(&stems, false) {
                let Some(neg) = stems[..m.start].iter().rposition(|s| NEGATORS.contains(s)) else {
                    continue;
                };
                if negated(m.start) && claim(&mut used, m.start, m.end) {
                    total += 1.0;
                    cues.push(format!("\"{}\"", stream.quote(neg, m.end)));
                }
            }
        }
        Tone {
            score: round3(total / (total + 1.0)),
            cues,
            denied,
        }
    }

    /// Sarcasm by contrast: praise opening the turn (after fillers such as "oh", "well") while
    /// the turn names a setback: "wonderful, three weeks and still no parcel". Praise followed
    /// by thanks is sincere ("great, thanks").
    fn contrast(&self, stems: &[&str], used: &[bool]) -> Option<(Match, Match)> {
        let opening = stems
            .iter()
            .position(|s| !OPENING_FILLERS.contains(s))
            .filter(|&i| !used.get(i).copied().unwrap_or(true))?;
        let praise = self
            .praise
            .iter()
            .flat_map(|p| p.find_all(stems, false))
            .find(|m| m.start == opening)?;
        if stems.get(praise.end).is_some_and(|s| *s == "thank") {
            return None;
        }
        let setback = self
            .setbacks
            .iter()
            .flat_map(|p| p.find_all(stems, false))
            .find(|m| m.start >= praise.end)?;
        Some((praise, setback))
    }

    /// The tone escalation for an utterance, if its score reaches the threshold.
    pub fn negative_tone(&self, normalized: &str) -> Option<(Tone, String)> {
        self.tone_escalation(self.tone(normalized))
    }

    /// The tone escalation for a scored tone (e.g. [`Tone::with_meaning`]), if its score
    /// reaches the threshold.
    pub fn tone_escalation(&self, tone: Tone) -> Option<(Tone, String)> {
        (tone.score >= self.config.negative_tone_threshold).then(|| {
            let detail = format!(
                "negative tone {:.2} >= negative_tone_threshold {:.2}: {}",
                tone.score,
                self.config.negative_tone_threshold,
                tone.cues.join(", ")
            );
            (tone, detail)
        })
    }

    /// A turn the bot acted on: clarification succeeded, the run of failures ends.
    pub fn record_understood(&mut self) {
        self.consecutive_failures = 0;
    }

    /// A failed turn. Returns the escalation reason and detail when it is one too many,
    /// `None` when the bot should ask for clarification.
    pub fn record_failure(&mut self, failure: &Failure) -> Option<(EscalationReason, String)> {
        self.consecutive_failures += 1;
        self.misunderstandings += 1;
        let what = failure.describe(&self.config);
        let limit = self.config.clarifications_before_escalation;
        if self.consecutive_failures > limit {
            let reason = match failure {
                Failure::LowAsr { .. } => EscalationReason::LowAsrConfidence,
                _ => EscalationReason::LowIntentConfidence,
            };
            let detail = format!(
                "{what}; {} failed turn(s) in a row after {limit} clarification(s) \
                 (clarifications_before_escalation = {limit})",
                self.consecutive_failures
            );
            return Some((reason, detail));
        }
        if self.misunderstandings > self.config.max_misunderstandings {
            let detail = format!(
                "{what}; {} misunderstood turns in this call, more than max_misunderstandings = {}",
                self.misunderstandings, self.config.max_misunderstandings
            );
            return Some((EscalationReason::RepeatedMisunderstanding, detail));
        }
        None
    }
}

fn round3(x: f32) -> f32 {
    (x * 1000.0).round() / 1000.0
}

/// Marks tokens `start..end` as counted; false if one already was.
fn claim(used: &mut [bool], start: usize, end: usize) -> bool {
    let Some(range) = used.get_mut(start..end) else {
        return false;
    };
    if range.iter().any(|&u| u) {
        return false;
    }
    range.fill(true);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_file;
    use crate::dialog::normalize::normalize;

    fn policy() -> EscalationPolicy {
        EscalationPolicy::new(EscalationConfig::default())
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Gateway {
        #[serde(default)]
        escalation: EscalationConfig,
    }

    fn load(text: &str) -> Result<EscalationConfig, ConfigError> {
        let file = Path::new("gateway.toml");
        let g: Gateway = config_file::parse(file, text)?;
        g.escalation.validate(file, text, "escalation")?;
        Ok(g.escalation)
    }

    #[test]
    fn defaults_are_valid_and_partial_tables_keep_defaults() {
        EscalationConfig::default()
            .validate(Path::new("x"), "", "escalation")
            .expect("defaults valid");
        let c = load("[escalation]\nmin_asr_confidence = 0.3\n").expect("valid");
        assert_eq!(c.min_asr_confidence, 0.3);
        assert_eq!(
            c.max_misunderstandings,
            EscalationConfig::default().max_misunderstandings
        );
    }

    #[test]
    fn threshold_out_of_range_names_line_and_field() {
        let text = "[escalation]\nmin_intent_confidence = 0.5\nmin_asr_confidence = 1.5\n";
        let err = load(text).unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert_eq!(err.field.as_deref(), Some("escalation.min_asr_confidence"));
        let err = load("[escalation]\n\nnegative_tone_threshold = 0.0\n").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        let err = load("[escalation]\nmax_misunderstandings = 0\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        let err = load("[escalation]\nclarifications_before_escalation = 11\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
    }

    #[test]
    fn bad_phrase_and_unknown_key_name_line() {
        let err =
            load("[escalation]\ncritical_keywords = [\n  \"lawyer\",\n  \"*\",\n]\n").unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert_eq!(err.field.as_deref(), Some("escalation.critical_keywords.1"));
        let err =
            load("[escalation]\nmin_asr_confidence = 0.4\nmax_misunderstanding = 3\n").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.reason.contains("max_misunderstanding"), "{err}");
    }

    #[test]
    fn validate_without_prefix() {
        let text = "min_asr_confidence = -0.1\n";
        let c: EscalationConfig = config_file::parse(Path::new("e.toml"), text).expect("parses");
        let err = c.validate(Path::new("e.toml"), text, "").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("min_asr_confidence"));
        assert_eq!(err.line, Some(1));
    }

    #[test]
    fn critical_keywords_are_negation_aware() {
        let p = policy();
        let hit = p
            .critical_keyword(&normalize("I want to cancel my contract!"))
            .expect("hit");
        assert_eq!(hit.keyword, "cancel my contract");
        assert_eq!(hit.matched, "cancel my contract");
        let hit = p
            .critical_keyword(&normalize("I'll call my lawyers"))
            .expect("inflected");
        assert_eq!(hit.matched, "lawyers");
        assert_eq!(
            p.critical_keyword(&normalize("I don't want to cancel my contract")),
            None
        );
        assert_eq!(p.critical_keyword(&normalize("where is my order")), None);
    }

    #[test]
    fn tone_lexicon_with_negation_and_sarcasm() {
        let p = policy();
        let score = |t: &str| p.tone(&normalize(t)).score;
        assert_eq!(score("where is my order"), 0.0);
        assert_eq!(score("not bad, thanks"), 0.0);
        assert_eq!(score("that's good"), 0.0);
        assert_eq!(score("I'm not happy"), 0.5);
        assert_eq!(score("I am not at all happy"), 0.5);
        assert_eq!(score("I'm very annoyed"), 0.6);
        // A sarcasm cue weighs 1.5: one is enough to reach the default threshold (0.6).
        assert_eq!(score("Oh great, another robot."), 0.75);
        assert_eq!(score("yeah right, like that helps"), 0.6);
        let t = p.tone(&normalize("This is ridiculous, I'm not happy."));
        assert_eq!(t.score, round3(2.0 / 3.0));
        assert_eq!(t.cues, ["\"ridiculous\"", "\"not happy\""]);
        assert_eq!(score("I have never been so disappointed"), 0.6);
        // A strong word weighs 1.5 alone, 2 intensified.
        assert_eq!(score("I'm livid"), 0.6);
        assert_eq!(score("I am absolutely fuming"), round3(2.0 / 3.0));
        assert_eq!(score("I'm not furious, just curious"), 0.0);
        assert!(p.tone(&normalize("I'm not furious")).denied);
    }

    #[test]
    fn sarcasm_by_contrast() {
        let p = policy();
        let score = |t: &str| p.tone(&normalize(t)).score;
        let t = p.tone(&normalize(
            "Oh marvellous, the engineer didn't turn up again.",
        ));
        assert_eq!(t.score, 0.6, "{t:?}");
        assert_eq!(t.cues, ["sarcasm \"marvellous\" despite \"again\""]);
        assert_eq!(score("Excellent, still no refund after a month."), 0.6);
        // Sincere praise: thanks after it, no setback, or praise not opening the turn.
        assert_eq!(score("Great, thanks, I'll call again tomorrow."), 0.0);
        assert_eq!(score("Perfect, that's what I needed."), 0.0);
        assert_eq!(score("I lost my password, that would be great."), 0.0);
    }

    #[test]
    fn meaning_lifts_the_tone_unless_a_word_is_denied() {
        let p = policy();
        let meaning = MeaningTone {
            score: 0.8,
            example: "nobody ever gets back to me".into(),
            similarity: 0.7,
            calm_similarity: 0.4,
        };
        let t = p
            .tone(&normalize("nobody ever rings me back"))
            .with_meaning(Some(&meaning), &p.config);
        // On the lexicon's scale: times negative_tone_threshold / meaning_tone_threshold.
        let scale = p.config.negative_tone_threshold / p.config.meaning_tone_threshold;
        assert_eq!(t.score, round3(0.8 * scale));
        assert!(t.score >= p.config.negative_tone_threshold);
        assert!(t.cues[0].contains("sounds upset"), "{t:?}");
        let t = p
            .tone(&normalize("I'm not angry, nobody rang me back"))
            .with_meaning(Some(&meaning), &p.config);
        assert_eq!(t.score, 0.0, "{t:?}");
        // A lower meaning score leaves the words' score alone.
        let lower = MeaningTone {
            score: 0.5,
            ..meaning
        };
        let t = p
            .tone(&normalize("this is ridiculous and useless"))
            .with_meaning(Some(&lower), &p.config);
        assert_eq!(t.score, round3(2.0 / 3.0));
        assert!(t.cues.iter().all(|c| !c.contains("sounds upset")));
    }

    #[test]
    fn negative_tone_respects_threshold() {
        let p = policy();
        assert!(p.negative_tone(&normalize("I'm annoyed")).is_none());
        let (_, detail) = p
            .negative_tone(&normalize("this is absolutely ridiculous"))
            .expect("escalates");
        assert!(detail.contains("\"absolutely ridiculous\""), "{detail}");
        assert!(
            detail.contains(">= negative_tone_threshold 0.60"),
            "{detail}"
        );
        let off = EscalationPolicy::new(EscalationConfig {
            negative_tone_threshold: 1.0,
            ..EscalationConfig::default()
        });
        assert!(off
            .negative_tone(&normalize("terrible awful useless rubbish"))
            .is_none());
    }

    #[test]
    fn failures_clarify_then_escalate() {
        let mut p = policy();
        let low = Failure::LowIntent {
            intent: "none".into(),
            confidence: 0.0,
        };
        assert_eq!(p.record_failure(&low), None, "first failure clarifies");
        let (reason, detail) = p.record_failure(&low).expect("second escalates");
        assert_eq!(reason, EscalationReason::LowIntentConfidence);
        assert!(detail.contains("2 failed turn(s) in a row"), "{detail}");

        let mut p = policy();
        let asr = Failure::LowAsr { confidence: 0.2 };
        assert_eq!(p.record_failure(&asr), None);
        let (reason, detail) = p.record_failure(&asr).expect("escalates");
        assert_eq!(reason, EscalationReason::LowAsrConfidence);
        assert!(
            detail.contains("ASR confidence 0.20 below min_asr_confidence 0.45"),
            "{detail}"
        );
    }

    #[test]
    fn scattered_failures_escalate_as_repeated_misunderstanding() {
        let mut p = policy();
        let low = Failure::LowIntent {
            intent: "order_status".into(),
            confidence: 0.3,
        };
        for _ in 0..2 {
            assert_eq!(p.record_failure(&low), None);
            p.record_understood();
        }
        let (reason, detail) = p.record_failure(&low).expect("third escalates");
        assert_eq!(reason, EscalationReason::RepeatedMisunderstanding);
        assert!(detail.contains("3 misunderstood turns"), "{detail}");
        assert_eq!(p.misunderstandings(), 3);
    }

    #[test]
    fn zero_clarifications_escalates_at_once() {
        let mut p = EscalationPolicy::new(EscalationConfig {
            clarifications_before_escalation: 0,
            ..EscalationConfig::default()
        });
        let got = p.record_failure(&Failure::MissingSlot {
            slot: "order_number".into(),
        });
        assert_eq!(
            got.map(|(r, _)| r),
            Some(EscalationReason::LowIntentConfidence)
        );
    }

    #[test]
    fn reasons_serialise_in_snake_case() {
        let json = serde_json::to_string(&EscalationReason::Dtmf0).expect("json");
        assert_eq!(json, "\"dtmf0\"");
        let json = serde_json::to_string(&EscalationReason::LowAsrConfidence).expect("json");
        assert_eq!(json, "\"low_asr_confidence\"");
    }
}
