//! One call's dialog: from a caller turn to the bot's answer.
//!
//! [`Bot`] holds what a call remembers (slots given so far, the question it is waiting on, the
//! escalation state) and applies the rules in a fixed, explainable order on every turn:
//!
//! 1. after an escalation or a goodbye the bot stays silent (a person has the call, or it ended);
//! 2. a critical keyword in the text, a critical intent, or an explicit request for a person
//!    escalates at once (even when ASR confidence is low: handing over is the safe mistake);
//! 3. low ASR confidence asks the caller to repeat, and escalates when that keeps failing
//!    (unless the words heard for sure already name a request);
//! 4. negative emotion escalates: the words' tone above the threshold, the words amplified by a
//!    raised voice (see [`super::emotion`]), or a score that rose turn after turn; then a
//!    suspected request for a person or critical intent (below the confidence to act on, above
//!    `min_critical_confidence`) escalates: the safe mistake is a person;
//! 5. otherwise the recognised intent is answered: a missing required slot is asked for (and
//!    the next turn that contains it fills it even without intent words), then the reply is
//!    rendered; nothing recognised asks for clarification, and escalates when that keeps
//!    failing.
//!
//! Silence is a turn too ([`Bot::on_no_input`], called by the pipeline when the caller said
//! nothing for `no_input_s` after the bot finished speaking): the bot prompts again, in other
//! words, and after `max_no_input` silences in a row hands over or says goodbye.
//!
//! The bot is pure: no IO, no clock, no randomness; the same turns always give the same
//! answers.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::assets::DialogAssets;
use super::confirm;
use super::emotion::{EmotionReading, EmotionTracker};
use super::escalation::{
    Escalation, EscalationConfig, EscalationPolicy, EscalationReason, Failure, NoInputAction, Tone,
};
use super::intent::{IntentDef, IntentEscalation, IntentMatch};
use super::lookup::LookupAnswer;
use super::normalize::normalize;
use super::slots;
use crate::speech::asr::Word;
use crate::speech::prosody::Prosody;

/// What the caller said in one turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallerTurn {
    /// The raw transcript.
    pub text: String,
    /// The recogniser's confidence in `[0, 1]`.
    pub asr_confidence: f32,
    /// The words with their confidences, when the recogniser gives them: a doubtful turn
    /// whose sure words already say what the caller wants is acted on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<Word>,
}

impl CallerTurn {
    /// A turn from a transcript and its confidence.
    pub fn new(text: impl Into<String>, asr_confidence: f32) -> Self {
        CallerTurn {
            text: text.into(),
            asr_confidence,
            words: Vec::new(),
        }
    }
}

/// A word the recogniser is at least this sure of counts as heard in a doubtful turn.
const SURE_WORD: f32 = 0.6;
/// A doubtful turn is acted on only if its sure words hold at least this share of its words.
const SURE_SHARE: f32 = 0.5;

/// The words of a doubtful turn the recogniser was sure of, as text, when they are enough to
/// go on (none without word confidences).
fn sure_words(words: &[Word]) -> Option<String> {
    if words.is_empty() {
        return None;
    }
    let sure: Vec<&str> = words
        .iter()
        .filter(|w| w.confidence >= SURE_WORD)
        .map(|w| w.text.as_str())
        .collect();
    (sure.len() as f32 >= SURE_SHARE * words.len() as f32).then(|| sure.join(" "))
}

/// The bot's answer to one turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BotTurn {
    /// The transcript after [`normalize`].
    pub normalized_text: String,
    /// The classifier's verdict (the dialog may add evidence, e.g. a slot filled for a pending
    /// question).
    pub intent: IntentMatch,
    /// Slots found in this turn (the call's accumulated slots are [`Bot::slots`]).
    pub slots: BTreeMap<String, String>,
    /// What the bot says; empty when it says nothing (the call was handed over or ended).
    pub reply: String,
    /// The escalation decided on this turn.
    pub escalation: Option<Escalation>,
    /// Whether the bot hangs up after the reply.
    pub ends_call: bool,
    /// The caller's emotion on this turn (none after the call was handed over or ended).
    pub emotion: Option<EmotionReading>,
}

impl BotTurn {
    /// A turn with no words to understand (a key press, a silence): nothing recognised, nothing
    /// said yet.
    fn wordless() -> Self {
        BotTurn {
            normalized_text: String::new(),
            intent: IntentMatch::none(),
            slots: BTreeMap::new(),
            reply: String::new(),
            escalation: None,
            ends_call: false,
            emotion: None,
        }
    }
}

/// Why an intent escalated: the intent, its confidence against the threshold that let it, and
/// the classifier's first piece of evidence.
fn intent_detail(kind: &str, intent: &IntentMatch, threshold_name: &str, threshold: f32) -> String {
    format!(
        "{kind}: intent {} confidence {:.2} >= {threshold_name} {threshold:.2}; {}",
        intent.intent,
        intent.confidence,
        intent
            .evidence
            .first()
            .map(String::as_str)
            .unwrap_or("no evidence")
    )
}

/// A question the bot asked and waits for an answer to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    intent: String,
    slot: String,
}

/// The dialog state of one call (see the module docs).
#[derive(Debug)]
pub struct Bot {
    assets: Arc<DialogAssets>,
    policy: EscalationPolicy,
    slots: BTreeMap<String, String>,
    pending: Option<Pending>,
    escalation: Option<Escalation>,
    ended: bool,
    emotion: EmotionTracker,
    /// Caller turns so far (utterances, key presses and silences).
    turns: u32,
    /// Silences in a row since the caller last said or pressed anything.
    silences: u32,
    /// The bot asked whether the caller wants a person and waits for the yes or no.
    confirming_person: bool,
    /// The bot has answered a request in this call (silence then more likely means the
    /// caller is done than that they need help).
    answered: bool,
}

impl Bot {
    /// A bot for a new call.
    pub fn new(assets: Arc<DialogAssets>, policy: EscalationConfig) -> Self {
        Bot {
            assets,
            policy: EscalationPolicy::new(policy),
            slots: BTreeMap::new(),
            pending: None,
            escalation: None,
            ended: false,
            emotion: EmotionTracker::default(),
            turns: 0,
            silences: 0,
            confirming_person: false,
            answered: false,
        }
    }

    /// What the bot says when it answers the call.
    pub fn greeting(&mut self) -> String {
        self.assets.prompts().greeting()
    }

    /// Whether the call has been handed to a person.
    pub fn is_escalated(&self) -> bool {
        self.escalation.is_some()
    }

    /// The escalation, once decided.
    pub fn escalation(&self) -> Option<&Escalation> {
        self.escalation.as_ref()
    }

    /// Whether the bot ended the call (goodbye).
    pub fn has_ended(&self) -> bool {
        self.ended
    }

    /// Whether the bot's last question waits for a number said digit by digit (the order
    /// number): recognition may then lean towards digits.
    pub fn awaits_digits(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.slot == slots::ORDER_NUMBER)
    }

    /// Every slot the caller has given in this call.
    pub fn slots(&self) -> &BTreeMap<String, String> {
        &self.slots
    }

    /// Handles a key press. `'0'` hands the call over (reason [`EscalationReason::Dtmf0`]);
    /// other keys, and any key after the bot let go of the call, are ignored (`None`).
    pub fn on_dtmf(&mut self, digit: char) -> Option<BotTurn> {
        if digit != '0' || self.escalation.is_some() || self.ended {
            return None;
        }
        self.turns += 1;
        self.silences = 0;
        let turn = BotTurn::wordless();
        let skill = self.assets.default_skill().to_string();
        Some(self.escalate(
            turn,
            EscalationReason::Dtmf0,
            "caller pressed 0 on the keypad".into(),
            skill,
        ))
    }

    /// The caller said nothing for the flow's `no_input_s` after the bot's last prompt: the
    /// bot prompts again (the question it waits on, if any, in other words), and after
    /// `max_no_input` silences in a row hands the call over (reason
    /// [`EscalationReason::NoInput`]) or says goodbye and ends it, as `no_input_action` says.
    /// `None` once the bot has let go of the call, or with no-input handling off.
    pub fn on_no_input(&mut self) -> Option<BotTurn> {
        if self.escalation.is_some() || self.ended {
            return None;
        }
        let config = self.policy.config();
        config.no_input_timeout()?;
        let action = if self.answered {
            config.no_input_action_answered
        } else {
            config.no_input_action
        };
        let (max, seconds) = (config.max_no_input, config.no_input_s);
        self.turns += 1;
        self.silences += 1;
        let mut out = BotTurn::wordless();
        let prompts = self.assets.prompts();
        if self.silences < max {
            let slot = self.pending.as_ref().map(|p| p.slot.as_str());
            out.reply = prompts.no_input(slot, self.silences);
            tracing::info!(in_a_row = self.silences, max, "no input: prompting again");
            return Some(out);
        }
        let detail = format!(
            "no input: the caller said nothing for {seconds} s after {max} prompt(s) in a row (max_no_input {max})"
        );
        match action {
            NoInputAction::Handover => {
                let skill = self
                    .pending
                    .as_ref()
                    .and_then(|p| self.assets.intent(&p.intent))
                    .map(|d| d.skill.clone())
                    .unwrap_or_else(|| self.assets.default_skill().to_string());
                let mut out = self.escalate(out, EscalationReason::NoInput, detail, skill);
                if let Some(e) = &out.escalation {
                    out.reply = self.assets.prompts().no_input_transfer(&e.skill);
                }
                Some(out)
            }
            NoInputAction::Hangup => {
                tracing::info!(%detail, "no input: ending the call");
                out.reply = prompts.no_input_goodbye();
                out.ends_call = true;
                self.ended = true;
                self.pending = None;
                Some(out)
            }
        }
    }

    /// Handles one caller turn.
    pub fn on_utterance(&mut self, turn: CallerTurn) -> BotTurn {
        self.on_utterance_with_voice(turn, None)
    }

    /// Like [`Bot::on_utterance`], with the prosody of the caller's audio so that a raised voice
    /// counts towards the emotion score.
    pub fn on_utterance_with_voice(
        &mut self,
        turn: CallerTurn,
        prosody: Option<&Prosody>,
    ) -> BotTurn {
        let normalized = normalize(&turn.text);
        let intent = self.assets.classifier().classify(&normalized);
        let found = slots::extract(&normalized);
        let mut out = BotTurn {
            normalized_text: normalized,
            intent,
            slots: found,
            reply: String::new(),
            escalation: None,
            ends_call: false,
            emotion: None,
        };
        if self.escalation.is_some() || self.ended {
            return out;
        }
        self.turns += 1;
        self.silences = 0;
        let tone = self
            .policy
            .tone(&out.normalized_text)
            .with_meaning(out.intent.tone.as_ref(), self.policy.config());
        let voice_weight = self.policy.config().voice_weight;
        let reading = self.emotion.observe(tone.score, prosody, voice_weight);
        out.emotion = Some(reading.clone());
        self.slots
            .extend(out.slots.iter().map(|(k, v)| (k.clone(), v.clone())));
        let assets = Arc::clone(&self.assets);
        let confident = self.policy.intent_confident(out.intent.confidence);
        let recognised: Option<&IntentDef> =
            assets.intent(&out.intent.intent).filter(|_| confident);
        tracing::debug!(
            text = %out.normalized_text,
            intent = %out.intent.intent,
            confidence = out.intent.confidence,
            asr_confidence = turn.asr_confidence,
            "caller turn"
        );

        let steps = self.escalate_or_ask(out, &turn, &tone, &reading, recognised);
        match steps {
            ControlFlow::Break(decided) => decided,
            ControlFlow::Continue(out) => self.dialog(out, recognised),
        }
    }

    /// Steps 2 to 4b, in order: the first that decides the turn breaks.
    fn escalate_or_ask(
        &mut self,
        out: BotTurn,
        turn: &CallerTurn,
        tone: &Tone,
        reading: &EmotionReading,
        recognised: Option<&IntentDef>,
    ) -> ControlFlow<BotTurn, BotTurn> {
        let out = self.immediate(out, recognised)?;
        let out = self.confirmation(out, recognised)?;
        let out = self.unclear(out, turn, recognised)?;
        let out = self.upset(out, tone, reading, recognised)?;
        self.suspected_handover(out)
    }

    /// Step 2, immediate escalations: a critical keyword, a critical intent, a request for a person.
    fn immediate(
        &mut self,
        out: BotTurn,
        recognised: Option<&IntentDef>,
    ) -> ControlFlow<BotTurn, BotTurn> {
        let assets = Arc::clone(&self.assets);
        if let Some(hit) = self.policy.critical_keyword(&out.normalized_text) {
            // Route by what the keyword itself means ("cancel my contract" -> cancellation).
            let routed = assets.classifier().classify(&hit.matched);
            let routed_def = if routed.is_none() {
                None
            } else {
                assets.intent(&routed.intent)
            };
            let (skill, via) = match routed_def.or(recognised) {
                Some(def) => (def.skill.clone(), format!("; team of intent {}", def.name)),
                None => (
                    assets.default_skill().to_string(),
                    "; default team".to_string(),
                ),
            };
            let detail = format!(
                "critical keyword \"{}\" matched \"{}\"{via}",
                hit.keyword, hit.matched
            );
            return ControlFlow::Break(self.escalate(
                out,
                EscalationReason::CriticalKeyword,
                detail,
                skill,
            ));
        }
        if let Some(def) = recognised {
            let reason = match def.escalate {
                IntentEscalation::Critical => Some(EscalationReason::CriticalKeyword),
                IntentEscalation::ExplicitRequest => Some(EscalationReason::ExplicitRequest),
                IntentEscalation::No => None,
            };
            if let Some(reason) = reason {
                let kind = if reason == EscalationReason::ExplicitRequest {
                    "caller asked for a person"
                } else {
                    "critical intent"
                };
                let threshold = self.policy.config().min_intent_confidence;
                let detail = intent_detail(kind, &out.intent, "min_intent_confidence", threshold);
                let skill = def.skill.clone();
                return ControlFlow::Break(self.escalate(out, reason, detail, skill));
            }
        }

        ControlFlow::Continue(out)
    }

    /// Step 2b, the answer to the person question, if it was asked.
    fn confirmation(
        &mut self,
        mut out: BotTurn,
        recognised: Option<&IntentDef>,
    ) -> ControlFlow<BotTurn, BotTurn> {
        let assets = Arc::clone(&self.assets);
        // 2b. The answer to "you'd like to speak to a colleague, is that right?"; an answer that
        // asks for something else is taken as that.
        if std::mem::take(&mut self.confirming_person) {
            let other_request = recognised
                .filter(|d| !d.secondary && d.escalate != IntentEscalation::ExplicitRequest);
            match (confirm::yes_or_no(&out.normalized_text), other_request) {
                (Some(true), None) => {
                    let detail = format!(
                        "caller confirmed they want a person (\"{}\")",
                        out.normalized_text
                    );
                    let skill = assets.default_skill().to_string();
                    return ControlFlow::Break(self.escalate(
                        out,
                        EscalationReason::ExplicitRequest,
                        detail,
                        skill,
                    ));
                }
                (Some(false), None) => {
                    self.policy.record_understood();
                    out.intent
                        .evidence
                        .push("dialog: the caller does not want a person".into());
                    out.reply = assets.prompts().confirm_person_no();
                    return ControlFlow::Break(out);
                }
                _ => {}
            }
        }

        ControlFlow::Continue(out)
    }

    /// Step 3, unclear audio.
    fn unclear(
        &mut self,
        mut out: BotTurn,
        turn: &CallerTurn,
        recognised: Option<&IntentDef>,
    ) -> ControlFlow<BotTurn, BotTurn> {
        // 3. Unclear audio, unless the words heard for sure already name a request.
        if self.policy.asr_too_low(turn.asr_confidence) {
            match self.clear_despite_doubt(turn, recognised) {
                Some(evidence) => out.intent.evidence.push(evidence),
                None => {
                    let failure = Failure::LowAsr {
                        confidence: turn.asr_confidence,
                    };
                    return ControlFlow::Break(self.fail(out, failure));
                }
            }
        }

        ControlFlow::Continue(out)
    }

    /// Step 4, emotion.
    fn upset(
        &mut self,
        out: BotTurn,
        tone: &Tone,
        reading: &EmotionReading,
        recognised: Option<&IntentDef>,
    ) -> ControlFlow<BotTurn, BotTurn> {
        let assets = Arc::clone(&self.assets);
        // 4. Emotion: the words, the words amplified by the voice, or a rising trend.
        let config = self.policy.config();
        let threshold = config.negative_tone_threshold;
        let detail = if let Some((_, detail)) = self.policy.tone_escalation(tone.clone()) {
            Some(detail)
        } else if reading.combined >= threshold {
            Some(format!(
                "negative tone {:.2} with a raised voice (arousal {:.2}: {}) = {:.2} >= negative_tone_threshold {threshold:.2}: {}",
                reading.text,
                reading.voice.unwrap_or(0.0),
                reading.voice_detail.as_deref().unwrap_or(""),
                reading.combined,
                tone.cues.join(", ")
            ))
        } else if config.trend_turns >= 2 {
            self.emotion
                .worsening(config.trend_turns as usize, config.trend_min_score)
                .map(|scores| {
                    format!(
                        "emotion rising over {} turns ({scores}) to >= trend_min_score {:.2}",
                        config.trend_turns, config.trend_min_score
                    )
                })
        } else {
            None
        };
        if let Some(detail) = detail {
            let skill = recognised
                .map(|d| d.skill.clone())
                .unwrap_or_else(|| assets.default_skill().to_string());
            return ControlFlow::Break(self.escalate(
                out,
                EscalationReason::NegativeTone,
                detail,
                skill,
            ));
        }

        ControlFlow::Continue(out)
    }

    /// Step 4b, a suspected hand-over intent.
    fn suspected_handover(&mut self, out: BotTurn) -> ControlFlow<BotTurn, BotTurn> {
        let assets = Arc::clone(&self.assets);
        // A hand-over intent escalates from a lower confidence than routine ones.
        let suspected = assets.intent(&out.intent.intent).filter(|d| {
            d.escalate != IntentEscalation::No
                && out.intent.confidence >= self.policy.config().min_critical_confidence
        });
        // 4b. A suspected hand-over intent (below min_intent_confidence, at or above
        // min_critical_confidence): the safe mistake is a person.
        if let Some(def) = suspected {
            let (reason, kind) = match def.escalate {
                IntentEscalation::ExplicitRequest => (
                    EscalationReason::ExplicitRequest,
                    "caller may be asking for a person",
                ),
                _ => (
                    EscalationReason::CriticalKeyword,
                    "suspected critical intent",
                ),
            };
            let threshold = self.policy.config().min_critical_confidence;
            let detail = intent_detail(kind, &out.intent, "min_critical_confidence", threshold);
            let skill = def.skill.clone();
            return ControlFlow::Break(self.escalate(out, reason, detail, skill));
        }

        ControlFlow::Continue(out)
    }

    /// Step 5, the dialog: answer the recognised intent (or the question the bot asked),
    /// asking for what it still needs; nothing recognised asks for clarification.
    fn dialog(&mut self, mut out: BotTurn, recognised: Option<&IntentDef>) -> BotTurn {
        let assets = Arc::clone(&self.assets);
        let acting: Option<&IntentDef> = match &self.pending {
            Some(p) => {
                let filled = out.slots.contains_key(&p.slot);
                let same_or_minor = recognised.is_none_or(|d| d.secondary || d.name == p.intent);
                if filled && same_or_minor {
                    out.intent.evidence.push(format!(
                        "dialog: {} answers the question of intent {}",
                        p.slot, p.intent
                    ));
                    assets.intent(&p.intent)
                } else {
                    recognised.filter(|d| !d.secondary)
                }
            }
            None => recognised.or_else(|| {
                let implied = assets
                    .intents()
                    .intents
                    .iter()
                    .find(|d| d.requires.iter().any(|s| out.slots.contains_key(s)));
                if let Some(d) = implied {
                    out.intent.evidence.push(format!(
                        "dialog: intent {} implied by the slot the caller gave",
                        d.name
                    ));
                }
                implied
            }),
        };
        let Some(def) = acting else {
            let failure = match &self.pending {
                Some(p) => Failure::MissingSlot {
                    slot: p.slot.clone(),
                },
                None => Failure::LowIntent {
                    intent: out.intent.intent.clone(),
                    confidence: out.intent.confidence,
                },
            };
            return self.fail(out, failure);
        };
        self.pending = None;
        self.answer(out, def)
    }

    /// Acts on intent `def`: asks for a slot it still needs, answers from the flow's data, or
    /// says its reply (and ends the call if it is a goodbye).
    fn answer(&mut self, mut out: BotTurn, def: &IntentDef) -> BotTurn {
        let assets = Arc::clone(&self.assets);
        if let Some(missing) = def.requires.iter().find(|s| !self.slots.contains_key(*s)) {
            self.policy.record_understood();
            out.reply = assets.prompts().ask(missing).unwrap_or_default();
            self.pending = Some(Pending {
                intent: def.name.clone(),
                slot: missing.clone(),
            });
            return out;
        }
        if let Some(lookup) = assets.lookup(&def.name) {
            match lookup.answer(&self.slots) {
                LookupAnswer::Found(text) => {
                    self.policy.record_understood();
                    self.answered = true;
                    out.intent
                        .evidence
                        .push(format!("lookup: {} found", lookup.key));
                    out.reply = text;
                    return out;
                }
                LookupAnswer::NotFound(text) => {
                    // Ask for the key again; a caller who keeps giving unknown keys counts as
                    // failing on that slot and reaches a person.
                    out.intent
                        .evidence
                        .push(format!("lookup: {} not found", lookup.key));
                    self.slots.remove(&lookup.key);
                    self.pending = Some(Pending {
                        intent: def.name.clone(),
                        slot: lookup.key.clone(),
                    });
                    let failure = Failure::MissingSlot {
                        slot: lookup.key.clone(),
                    };
                    let mut out = self.fail(out, failure);
                    if out.escalation.is_none() {
                        out.reply = text;
                    }
                    return out;
                }
            }
        }
        self.policy.record_understood();
        self.answered |= !def.secondary;
        out.reply = assets
            .prompts()
            .reply(&def.name, &self.slots)
            .unwrap_or_default();
        if def.ends_call {
            self.ended = true;
            out.ends_call = true;
        }
        out
    }

    /// Whether a turn heard with low confidence can be acted on: its intent is a request (not
    /// social words, not a goodbye that would end the call on a guess), and the words the
    /// recogniser was sure of, taken alone, give the same intent confidently. The evidence
    /// line says so.
    fn clear_despite_doubt(
        &self,
        turn: &CallerTurn,
        recognised: Option<&IntentDef>,
    ) -> Option<String> {
        let def = recognised.filter(|d| !d.secondary && !d.ends_call)?;
        let sure = sure_words(&turn.words)?;
        let again = self.assets.classifier().classify(&normalize(&sure));
        (again.intent == def.name && self.policy.intent_confident(again.confidence)).then(|| {
            format!(
                "doubtful recognition (asr confidence {:.2}) acted on: its sure words \"{sure}\" give {} at {:.2}",
                turn.asr_confidence, def.name, again.confidence
            )
        })
    }

    /// Why a turn the bot could not act on may be a request for a person (see
    /// [`confirm`]): its best, if doubtful, intent is one, or it is short and sounds like one.
    /// Not while a slot's question waits for its answer.
    fn person_suspected(&self, failure: &Failure, out: &BotTurn) -> Option<String> {
        if matches!(failure, Failure::MissingSlot { .. }) || self.pending.is_some() {
            return None;
        }
        let weak_request = self
            .assets
            .intent(&out.intent.intent)
            .is_some_and(|d| d.escalate == IntentEscalation::ExplicitRequest);
        if weak_request && confirm::is_short(&out.normalized_text) {
            return Some(format!(
                "dialog: a short turn whose best intent is {} ({:.2}): asking whether the caller wants a person",
                out.intent.intent, out.intent.confidence
            ));
        }
        confirm::may_want_person(&out.normalized_text).map(|word| {
            format!(
                "dialog: \"{}\" sounds like \"{word}\": asking whether the caller wants a person",
                out.normalized_text
            )
        })
    }

    /// A turn the bot could not act on: clarify, or escalate when clarifying keeps failing.
    fn fail(&mut self, mut out: BotTurn, failure: Failure) -> BotTurn {
        let verdict = self.policy.record_failure(&failure);
        tracing::debug!(
            ?failure,
            in_a_row = self.policy.consecutive_failures(),
            in_call = self.policy.misunderstandings(),
            "turn not understood"
        );
        if let Some((reason, detail)) = verdict {
            let skill = self
                .pending
                .as_ref()
                .and_then(|p| self.assets.intent(&p.intent))
                .map(|d| d.skill.clone())
                .unwrap_or_else(|| self.assets.default_skill().to_string());
            return self.escalate(out, reason, detail, skill);
        }
        let prompts = self.assets.prompts();
        // A short turn that may be a request for a person gets the closed question instead.
        if let Some(evidence) = self.person_suspected(&failure, &out) {
            out.intent.evidence.push(evidence);
            out.reply = prompts.confirm_person();
            self.confirming_person = true;
            return out;
        }
        out.reply = match (&failure, &self.pending) {
            (Failure::LowAsr { .. }, _) => prompts.repeat(),
            (_, Some(p)) => prompts.reask(&p.slot).unwrap_or_else(|| prompts.clarify()),
            _ => prompts.clarify(),
        };
        out
    }

    fn escalate(
        &mut self,
        mut out: BotTurn,
        reason: EscalationReason,
        detail: String,
        skill: String,
    ) -> BotTurn {
        tracing::info!(?reason, %detail, %skill, "escalating to a person");
        let escalation = Escalation {
            reason,
            detail,
            skill,
            turn: self.turns,
        };
        out.reply = self.assets.prompts().transfer(&escalation.skill);
        out.escalation = Some(escalation.clone());
        self.escalation = Some(escalation);
        self.pending = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot() -> Bot {
        bot_with(EscalationConfig::default())
    }

    fn bot_with(config: EscalationConfig) -> Bot {
        let assets = DialogAssets::embedded().expect("embedded assets");
        Bot::new(Arc::new(assets), config)
    }

    fn say(bot: &mut Bot, text: &str) -> BotTurn {
        bot.on_utterance(CallerTurn::new(text, 0.9))
    }

    fn reason(turn: &BotTurn) -> Option<EscalationReason> {
        turn.escalation.as_ref().map(|e| e.reason)
    }

    #[test]
    fn greets() {
        assert!(bot().greeting().starts_with("Hello"));
    }

    #[test]
    fn order_status_fills_the_slot_across_turns() {
        let mut b = bot();
        assert!(!b.awaits_digits());
        let t = say(&mut b, "Hi, my package hasn't arrived yet.");
        assert_eq!(t.intent.intent, "order_status");
        assert!(b.awaits_digits(), "the bot asked for the order number");
        assert!(
            t.reply.contains("What is your order number?"),
            "{}",
            t.reply
        );
        assert!(t.escalation.is_none());
        // No intent words, only digits: fills the pending slot.
        let t = say(&mut b, "Yes, it's one two three four.");
        assert_eq!(
            t.slots.get("order_number").map(String::as_str),
            Some("1234")
        );
        assert!(!b.awaits_digits(), "the number was given");
        assert!(
            t.reply
                .starts_with("Thanks. I have noted order number 1 2 3 4."),
            "{}",
            t.reply
        );
        assert!(
            t.intent
                .evidence
                .iter()
                .any(|e| e.contains("answers the question")),
            "{:?}",
            t.intent
        );
        assert_eq!(
            b.slots().get("order_number").map(String::as_str),
            Some("1234")
        );
        let t = say(&mut b, "No, thanks.");
        assert!(t.ends_call, "{t:?}");
        assert!(b.has_ended());
        assert_eq!(say(&mut b, "hello?").reply, "");
    }

    #[test]
    fn order_number_in_the_first_turn_is_confirmed_directly() {
        let mut b = bot();
        let t = say(&mut b, "Where is my order? The number is 9-8-7-6-5.");
        assert!(
            t.reply
                .starts_with("Thanks. I have noted order number 9 8 7 6 5."),
            "{}",
            t.reply
        );
    }

    #[test]
    fn digits_alone_imply_the_intent_that_needs_them() {
        let mut b = bot();
        let t = say(&mut b, "5 5 5 1 2 3 4");
        assert!(
            t.reply.contains("order number 5 5 5 1 2 3 4"),
            "{}",
            t.reply
        );
    }

    #[test]
    fn missing_slot_is_asked_again_then_escalates() {
        let mut b = bot();
        say(&mut b, "where is my order");
        let t = say(&mut b, "I don't know it, sorry");
        assert!(
            t.reply.contains("didn't catch a complete order number"),
            "{}",
            t.reply
        );
        assert!(t.escalation.is_none());
        let t = say(&mut b, "it's in my emails somewhere");
        assert_eq!(
            reason(&t),
            Some(EscalationReason::LowIntentConfidence),
            "{t:?}"
        );
        assert_eq!(
            t.escalation.as_ref().map(|e| e.skill.as_str()),
            Some("support")
        );
        assert!(t.reply.contains("our support team"), "{}", t.reply);
    }

    #[test]
    fn switching_topic_while_a_question_is_pending() {
        let mut b = bot();
        say(&mut b, "where is my parcel");
        let t = say(&mut b, "actually, what are your opening hours?");
        assert!(
            t.reply.starts_with("We're open Monday to Friday"),
            "{}",
            t.reply
        );
    }

    #[test]
    fn canned_replies() {
        let mut b = bot();
        let t = say(&mut b, "I can't log in to my account");
        assert!(t.reply.contains("password reset link"), "{}", t.reply);
        let t = say(&mut b, "Are you open on Saturday?");
        assert!(
            t.reply.contains("Saturday") && t.reply.contains("Sundays we're closed"),
            "{}",
            t.reply
        );
        let t = say(&mut b, "thanks!");
        assert!(t.reply.starts_with("You're welcome"), "{}", t.reply);
        assert!(!t.ends_call);
        let t = say(&mut b, "Goodbye.");
        assert_eq!(t.reply, "Thank you for calling. Goodbye!");
        assert!(t.ends_call);
    }

    #[test]
    fn explicit_request_escalates_at_once() {
        let mut b = bot();
        let t = say(&mut b, "I need a real person.");
        assert_eq!(reason(&t), Some(EscalationReason::ExplicitRequest));
        let e = t.escalation.as_ref().expect("escalation");
        assert_eq!(e.skill, "general");
        assert!(e.detail.contains("real person"), "{}", e.detail);
        assert!(t.reply.contains("customer service team"), "{}", t.reply);
        assert!(b.is_escalated());
        // The human has the call now.
        let t = say(&mut b, "hello? where is my order?");
        assert_eq!(t.reply, "");
        assert!(t.escalation.is_none());
        assert_eq!(t.intent.intent, "order_status");
    }

    #[test]
    fn critical_keyword_escalates_with_the_intents_skill() {
        let mut b = bot();
        let t = say(&mut b, "I want to cancel my subscription right now");
        assert_eq!(reason(&t), Some(EscalationReason::CriticalKeyword));
        let e = t.escalation.as_ref().expect("escalation");
        assert_eq!(e.skill, "billing");
        assert!(
            e.detail.contains("\"cancel my subscription\""),
            "{}",
            e.detail
        );
        assert_eq!(t.reply, "I'm transferring you to a colleague from our billing team who can help with this. Please hold the line.");
    }

    #[test]
    fn critical_intent_without_configured_keyword_escalates() {
        let mut b = bot();
        let t = say(&mut b, "I want to cancel my order");
        assert_eq!(reason(&t), Some(EscalationReason::CriticalKeyword));
        let e = t.escalation.as_ref().expect("escalation");
        assert_eq!(e.skill, "billing");
        assert!(
            e.detail.contains("critical intent: intent cancellation"),
            "{}",
            e.detail
        );
        assert!(e.detail.contains("cancel my order"), "{}", e.detail);
        let mut b = bot();
        let t = say(&mut b, "This is outrageous, I'm calling my lawyer");
        assert_eq!(
            t.escalation.as_ref().map(|e| e.skill.as_str()),
            Some("complaints")
        );
    }

    #[test]
    fn negated_critical_keyword_does_not_escalate() {
        let mut b = bot();
        let t = say(
            &mut b,
            "I don't want to cancel my contract, I just can't log in.",
        );
        assert!(t.escalation.is_none(), "{t:?}");
        assert!(t.reply.contains("password reset link"), "{}", t.reply);
    }

    #[test]
    fn low_asr_confidence_asks_to_repeat_then_escalates() {
        let mut b = bot();
        let t = b.on_utterance(CallerTurn::new("where is my older", 0.3));
        assert!(t.reply.contains("repeat"), "{}", t.reply);
        assert!(t.escalation.is_none());
        let t = b.on_utterance(CallerTurn::new("mumble", 0.2));
        assert_eq!(reason(&t), Some(EscalationReason::LowAsrConfidence));
        let detail = &t.escalation.as_ref().expect("escalation").detail;
        assert!(
            detail.contains("0.20 below min_asr_confidence 0.45"),
            "{detail}"
        );
        let mut b = bot();
        let t = b.on_utterance(CallerTurn::new("where is my order", f32::NAN));
        assert!(
            t.reply.contains("repeat"),
            "NaN is not trusted: {}",
            t.reply
        );
    }

    #[test]
    fn clarification_then_low_intent_escalation() {
        let mut b = bot();
        let t = say(&mut b, "The weather is lovely today.");
        assert!(
            t.reply.starts_with("Sorry, I didn't quite understand"),
            "{}",
            t.reply
        );
        let t = say(&mut b, "Blue elephants.");
        assert_eq!(reason(&t), Some(EscalationReason::LowIntentConfidence));
        assert_eq!(
            t.escalation.as_ref().map(|e| e.skill.as_str()),
            Some("general")
        );
    }

    #[test]
    fn clarification_that_works_resets_the_count() {
        let mut b = bot();
        say(&mut b, "blah blah");
        let t = say(&mut b, "when are you open");
        assert!(t.escalation.is_none());
        let t = say(&mut b, "blah blah");
        assert!(
            t.escalation.is_none(),
            "one miss after success only clarifies: {t:?}"
        );
    }

    #[test]
    fn scattered_misunderstandings_escalate() {
        let mut b = bot();
        for _ in 0..2 {
            assert!(say(&mut b, "purple monkey").escalation.is_none());
            assert!(say(&mut b, "thank you").escalation.is_none());
        }
        let t = say(&mut b, "purple monkey");
        assert_eq!(reason(&t), Some(EscalationReason::RepeatedMisunderstanding));
    }

    #[test]
    fn negative_tone_escalates() {
        let mut b = bot();
        let t = say(
            &mut b,
            "This is absolutely ridiculous, I'm not happy at all. Where is my order?",
        );
        assert_eq!(reason(&t), Some(EscalationReason::NegativeTone));
        let e = t.escalation.as_ref().expect("escalation");
        assert_eq!(
            e.skill, "support",
            "routed to the team of what the caller talks about"
        );
        assert!(
            e.detail.contains("\"absolutely ridiculous\""),
            "{}",
            e.detail
        );
        let mut b = bot();
        let t = say(&mut b, "Oh great, another robot.");
        assert_eq!(reason(&t), Some(EscalationReason::NegativeTone), "{t:?}");
        let mut b = bot();
        let t = say(&mut b, "Not bad. When are you open?");
        assert!(t.escalation.is_none(), "{t:?}");
    }

    #[test]
    fn dtmf_zero_escalates_once() {
        let mut b = bot();
        assert!(b.on_dtmf('5').is_none());
        let t = b.on_dtmf('0').expect("escalates");
        assert_eq!(reason(&t), Some(EscalationReason::Dtmf0));
        assert!(t.reply.contains("customer service"), "{}", t.reply);
        assert!(b.is_escalated());
        assert!(b.on_dtmf('0').is_none());
        assert_eq!(
            b.escalation().map(|e| e.reason),
            Some(EscalationReason::Dtmf0)
        );
    }

    #[test]
    fn bot_turn_serialises_for_reports() {
        let mut b = bot();
        let t = say(&mut b, "get me an agent");
        let json = serde_json::to_value(&t).expect("json");
        assert_eq!(json["intent"]["intent"], "human_request");
        assert_eq!(json["escalation"]["reason"], "explicit_request");
        assert_eq!(json["escalation"]["skill"], "general");
        assert_eq!(json["ends_call"], false);
    }

    #[test]
    fn bot_is_deterministic() {
        let script = [
            "hello",
            "where's my parcel",
            "it's 4 4 4 4",
            "thanks",
            "bye",
        ];
        let run = || {
            let mut b = bot();
            script.iter().map(|t| say(&mut b, t)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn assets_are_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<DialogAssets>();
        fn assert_send<T: Send>() {}
        assert_send::<Bot>();
    }

    #[test]
    fn a_silent_caller_is_prompted_again_then_handed_over() {
        let mut b = bot();
        let first = b.on_no_input().expect("prompted");
        assert!(first.reply.contains("still there"), "{}", first.reply);
        assert!(first.escalation.is_none() && !first.ends_call);
        let second = b.on_no_input().expect("prompted");
        assert_ne!(
            first.reply, second.reply,
            "the second prompt says it differently"
        );
        let third = b.on_no_input().expect("decided");
        assert_eq!(reason(&third), Some(EscalationReason::NoInput));
        assert!(third.reply.contains("can't hear you"), "{}", third.reply);
        assert!(b.on_no_input().is_none(), "a person has the call");
    }

    #[test]
    fn speech_resets_the_silence_count_and_a_pending_question_is_asked_again() {
        let mut b = bot();
        assert!(b.on_no_input().is_some());
        assert!(b.on_no_input().is_some());
        let t = say(&mut b, "Where is my parcel?");
        assert!(t.reply.contains("order number"), "{}", t.reply);
        let again = b.on_no_input().expect("prompted");
        assert!(
            again.reply.contains("order number"),
            "the question being asked is asked again: {}",
            again.reply
        );
        assert!(again.escalation.is_none());
        assert!(b.on_no_input().expect("prompted").escalation.is_none());
        assert!(b.on_no_input().expect("decided").escalation.is_some());
    }

    #[test]
    fn no_input_can_hang_up_or_be_off() {
        let mut b = bot_with(EscalationConfig {
            max_no_input: 1,
            no_input_action: NoInputAction::Hangup,
            ..EscalationConfig::default()
        });
        let t = b.on_no_input().expect("decided");
        assert!(t.ends_call && t.escalation.is_none(), "{t:?}");
        assert!(t.reply.contains("Goodbye"), "{}", t.reply);
        assert!(b.has_ended());
        // After an answered request the silent caller is said goodbye to.
        let mut served = bot();
        assert!(say(&mut served, "What are your opening hours?")
            .reply
            .contains("Monday"));
        for _ in 0..2 {
            let prompt = served.on_no_input().expect("prompted");
            assert!(
                prompt.escalation.is_none() && !prompt.ends_call,
                "{prompt:?}"
            );
        }
        let last = served.on_no_input().expect("decided");
        assert!(last.ends_call && last.escalation.is_none(), "{last:?}");
        let mut off = bot_with(EscalationConfig {
            no_input_s: 0.0,
            ..EscalationConfig::default()
        });
        assert!(off.on_no_input().is_none());
    }

    #[test]
    fn a_short_turn_that_sounds_like_a_person_word_is_confirmed_before_handing_over() {
        let mut b = bot();
        let t = say(&mut b, "Hue man.");
        assert!(t.escalation.is_none(), "{t:?}");
        assert!(t.reply.contains("speak to a colleague"), "{}", t.reply);
        let t = say(&mut b, "Yes please.");
        assert_eq!(reason(&t), Some(EscalationReason::ExplicitRequest));
        assert!(t
            .escalation
            .as_ref()
            .is_some_and(|e| e.detail.contains("confirmed")));
    }

    #[test]
    fn a_no_to_the_person_question_goes_on_with_the_bot_and_a_new_request_is_taken() {
        let mut b = bot();
        assert!(say(&mut b, "Opera tor.").reply.contains("colleague"));
        let t = say(&mut b, "No.");
        assert!(t.escalation.is_none() && !t.ends_call, "{t:?}");
        assert!(t.reply.contains("What can I help you with"), "{}", t.reply);
        assert!(say(&mut b, "Represent ative.").reply.contains("colleague"));
        let t = say(&mut b, "No, I forgot my password.");
        assert_eq!(t.intent.intent, "password_reset", "{t:?}");
        assert!(t.escalation.is_none());
    }

    #[test]
    fn a_doubtful_turn_whose_sure_words_name_the_request_is_acted_on() {
        let word = |text: &str, confidence: f32| Word {
            text: text.into(),
            confidence,
        };
        let turn = |words: Vec<Word>| CallerTurn {
            text: words
                .iter()
                .map(|w| w.text.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            asr_confidence: 0.3,
            words,
        };
        let mut b = bot();
        let t = b.on_utterance(turn(vec![
            word("I", 0.9),
            word("forgot", 0.8),
            word("my", 0.9),
            word("password", 0.85),
            word("flurble", 0.05),
        ]));
        assert_eq!(t.intent.intent, "password_reset");
        assert!(t.reply.contains("password reset link"), "{}", t.reply);
        assert!(t.intent.evidence.iter().any(|e| e.contains("sure words")));
        // The request rests on doubtful words: the bot asks to repeat.
        let mut b = bot();
        let t = b.on_utterance(turn(vec![
            word("I", 0.9),
            word("forgot", 0.2),
            word("my", 0.9),
            word("password", 0.1),
        ]));
        assert!(t.reply.contains("repeat"), "{}", t.reply);
        // Without word confidences a doubtful turn is not acted on either.
        let t = bot().on_utterance(CallerTurn::new("I forgot my password", 0.3));
        assert!(t.reply.contains("repeat"), "{}", t.reply);
    }
}

#[cfg(test)]
mod emotion_tests {
    use super::*;
    use crate::dialog::EscalationReason;

    fn bot() -> Bot {
        Bot::new(
            Arc::new(DialogAssets::embedded().expect("embedded")),
            EscalationConfig::default(),
        )
    }

    fn voice(loud: f32, pitch: f32) -> Prosody {
        Prosody {
            loudness_dbfs: loud,
            pitch_hz: pitch,
            pitch_spread_st: 2.0,
            syllable_rate: 4.0,
            voiced_seconds: 1.5,
        }
    }

    fn say(b: &mut Bot, text: &str, p: &Prosody) -> BotTurn {
        b.on_utterance_with_voice(CallerTurn::new(text, 0.9), Some(p))
    }

    #[test]
    fn mild_complaint_in_a_raised_voice_escalates_but_not_in_a_calm_one() {
        let calm = voice(-30.0, 120.0);
        let raised = voice(-21.0, 150.0);
        // One negative word (tone 0.5) is below the threshold on its own.
        let text = "this is annoying, where is my order";
        let mut b = bot();
        say(&mut b, "hello", &calm);
        let t = say(&mut b, text, &calm);
        assert!(t.escalation.is_none(), "{t:?}");
        let mut b = bot();
        say(&mut b, "hello", &calm);
        let t = say(&mut b, text, &raised);
        let e = t.escalation.expect("raised voice amplifies the words");
        assert_eq!(e.reason, EscalationReason::NegativeTone);
        assert!(e.detail.contains("raised voice"), "{}", e.detail);
        let em = t.emotion.expect("emotion measured");
        assert!(
            em.voice.unwrap_or(0.0) > 0.8 && em.combined >= 0.6,
            "{em:?}"
        );
    }

    #[test]
    fn loud_but_friendly_caller_is_not_handed_over() {
        let mut b = bot();
        say(&mut b, "hello", &voice(-30.0, 120.0));
        let t = say(&mut b, "what are your opening hours", &voice(-18.0, 170.0));
        assert!(t.escalation.is_none(), "{t:?}");
        assert_eq!(t.emotion.map(|e| e.combined), Some(0.0));
    }

    #[test]
    fn rising_irritation_escalates_on_the_trend() {
        let mut b = bot();
        let calm = voice(-30.0, 120.0);
        let t = say(&mut b, "where is my order", &calm);
        assert!(t.escalation.is_none());
        // Scores 0, then 0.5 ("annoying"), then the same words' level in a somewhat raised
        // voice (+4 dB, +2 semitones): about 0.53, below the 0.6 threshold but still rising.
        let t = say(&mut b, "that's annoying, my order number is 1 2 3 4", &calm);
        assert!(t.escalation.is_none(), "{t:?}");
        let somewhat_raised = voice(-26.0, 120.0 * 2f32.powf(2.0 / 12.0));
        let t = say(
            &mut b,
            "I am frustrated, what are your opening hours",
            &somewhat_raised,
        );
        let em = t.emotion.clone().expect("emotion");
        assert!(em.combined > 0.5 && em.combined < 0.6, "{em:?}");
        let e = t.escalation.expect("trend escalates");
        assert_eq!(e.reason, EscalationReason::NegativeTone);
        assert!(e.detail.contains("rising over 3 turns"), "{}", e.detail);
    }
}
