//! The hand-over context: everything a human agent (and any CTI system) needs when the bot
//! passes a call on, so that the caller never has to repeat themselves.
//!
//! When the bot escalates, the agent's screen receives a [`HandoverContext`] (through the
//! webhook outbox and `GET /calls/{id}/context`): who is calling, the transcript of the call so
//! far (with the bot's lines cut where the caller interrupted them), the slots the bot
//! collected, the caller's last recognised intent, why and to which team the call was escalated,
//! how the caller's mood developed, and a short [`offline_summary`] written from the dialog
//! state alone (no language model, no network), readable in a few seconds.
//!
//! # Schema stability
//!
//! The JSON carries its schema name in `schema` ([`SCHEMA`], `voicebot.handover.v1`). Within
//! v1 fields may be **added** (consumers must ignore unknown fields), but no field is ever
//! renamed, removed or given another type or meaning; such a change gets a new schema name
//! (`voicebot.handover.v2`). Enum values (`speaker`, `escalation.reason`) are snake_case
//! strings; new values may appear within v1. Times are RFC 3339 UTC strings (whole seconds)
//! for wall-clock instants and milliseconds of call time (`at_ms`) within the transcript.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::dialog::intent::NONE_INTENT;
use crate::dialog::{Escalation, EscalationReason};
use crate::report::TurnReport;

/// The schema name written into every context.
pub const SCHEMA: &str = "voicebot.handover.v1";

/// The longest quote of the caller or the bot in the summary, in characters (before "…").
const QUOTE_CHARS: usize = 80;

/// Mood score from which the summary mentions the caller's mood.
const UPSET: f32 = 0.45;

/// How many of the last emotion scores must rise, turn after turn, to call the mood worsening.
const TREND_TURNS: usize = 3;

/// The least total rise over those turns that counts as worsening (not jitter).
const TREND_MIN_RISE: f32 = 0.1;

/// What the agent receives when a call is handed over (schema `voicebot.handover.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct HandoverContext {
    /// Always [`SCHEMA`].
    pub schema: String,
    pub call_id: String,
    /// The flow that answered the call.
    pub flow: String,
    /// The caller's From URI, or `"unknown"`.
    pub caller: String,
    /// The number or URI the caller dialled.
    pub called: Option<String>,
    /// When the call started, RFC 3339 UTC.
    pub started_at: String,
    /// When the bot decided to hand over, RFC 3339 UTC.
    pub escalated_at: Option<String>,
    /// What was said, in call-time order.
    pub transcript: Vec<TranscriptEntry>,
    /// Everything the bot collected (order number, name, email, ...), last value wins.
    pub slots: BTreeMap<String, String>,
    /// The caller's last recognised intent.
    pub intent: Option<IntentSummary>,
    pub escalation: Option<EscalationInfo>,
    pub emotion: EmotionTrend,
    /// A few lines for the agent, see [`offline_summary`].
    pub summary: String,
}

/// Who said a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    Caller,
    Bot,
    /// A human agent (not produced by the bot; for systems that extend the transcript).
    Agent,
}

/// One line of the transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct TranscriptEntry {
    /// Call time, ms: when the caller started speaking, or when the bot's line was queued.
    pub at_ms: u64,
    pub speaker: Speaker,
    /// What was said; for an interrupted bot line only roughly the part that was played,
    /// followed by "…".
    pub text: String,
    /// A bot line the caller cut short.
    pub interrupted: bool,
    /// The recogniser's confidence, for caller lines.
    pub asr_confidence: Option<f32>,
    /// The intent the bot recognised in a caller line (what agents' feedback corrects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
}

/// The caller's last recognised intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct IntentSummary {
    /// The intent's name in intents.toml.
    pub name: String,
    pub confidence: f32,
}

/// Why and to whom the call was handed over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct EscalationInfo {
    pub reason: EscalationReason,
    /// Which words, scores and thresholds decided it.
    pub detail: String,
    /// The skill (team key) from intents.toml.
    pub skill: String,
    /// The team's spoken name (prompts `[teams]`), or the skill when it has none.
    pub team: String,
    /// The caller turn (1-based) on which it was decided.
    pub turn: u32,
}

/// How the caller's mood developed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct EmotionTrend {
    /// The combined emotion score of each caller turn that has one, in `[0, 1]`.
    pub per_turn: Vec<f32>,
    /// The latest score.
    pub last: Option<f32>,
    /// Whether the last scores (up to three) rose turn after turn, by at least 0.1 in all.
    pub worsening: bool,
}

/// One line the bot said on the call, as the call task recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotSpeechLine {
    /// Call time when it was queued for playout, ms.
    pub at_ms: u64,
    pub text: String,
    /// How much of it was played before the caller interrupted (the duration when not).
    pub played_ms: u64,
    pub duration_ms: u64,
    pub interrupted: bool,
}

/// What [`build`] makes a context from.
#[derive(Debug, Clone)]
pub struct ContextInput<'a> {
    pub call_id: &'a str,
    pub flow: &'a str,
    /// The From URI; empty gives `"unknown"`.
    pub caller: &'a str,
    pub called: Option<&'a str>,
    pub started_at: SystemTime,
    pub escalated_at: Option<SystemTime>,
    /// The greeting and its call time (ms); used only when `bot_speech` is empty.
    pub greeting: Option<(&'a str, u64)>,
    pub turns: &'a [TurnReport],
    /// What the bot actually said, with interruptions; when empty, the bot's lines come from
    /// the greeting and each turn's reply.
    pub bot_speech: &'a [BotSpeechLine],
    /// The escalation; when none, the last escalation among the turns, if any.
    pub escalation: Option<&'a Escalation>,
    /// The spoken name of the escalation's skill (prompts `[teams]`).
    pub team_name: Option<&'a str>,
    /// Lines transcribed after the hand-over, the caller's and the agent's (merged by time).
    pub after_handover: &'a [TranscriptEntry],
}

/// Builds the context, summary included.
pub fn build(input: &ContextInput) -> HandoverContext {
    let caller = input.caller.trim();
    let caller = if caller.is_empty() {
        "unknown".to_string()
    } else {
        caller.to_string()
    };
    let called = input
        .called
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string);

    let mut ctx = HandoverContext {
        schema: SCHEMA.to_string(),
        call_id: input.call_id.to_string(),
        flow: input.flow.to_string(),
        caller,
        called,
        started_at: rfc3339_utc(input.started_at),
        escalated_at: input.escalated_at.map(rfc3339_utc),
        transcript: transcript(input),
        slots: slots(input.turns),
        intent: last_intent(input.turns),
        escalation: escalation(input),
        emotion: emotion(input.turns),
        summary: String::new(),
    };
    ctx.summary = offline_summary(&ctx);
    ctx
}

impl HandoverContext {
    /// The context as compact JSON.
    pub fn to_json(&self) -> String {
        // Plain structs, string map keys and finite floats: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| {
            tracing::error!(error = %e, call_id = %self.call_id, "hand-over context not serialisable");
            String::from("{}")
        })
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A float the JSON can carry (serde_json writes NaN and infinities as null).
fn finite(x: f32) -> f32 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

fn transcript(input: &ContextInput) -> Vec<TranscriptEntry> {
    let mut lines = Vec::new();
    let bot = |at_ms: u64, text: String, interrupted: bool| TranscriptEntry {
        at_ms,
        speaker: Speaker::Bot,
        text,
        interrupted,
        asr_confidence: None,
        intent: None,
    };
    let caller = |t: &TurnReport| {
        let text = t.transcript.trim();
        (!text.is_empty()).then(|| TranscriptEntry {
            at_ms: ms(t.start),
            speaker: Speaker::Caller,
            text: text.to_string(),
            interrupted: false,
            asr_confidence: Some(finite(t.asr_confidence)),
            intent: Some(t.intent.clone()),
        })
    };
    if input.bot_speech.is_empty() {
        if let Some((text, at_ms)) = input.greeting {
            if !text.trim().is_empty() {
                lines.push(bot(at_ms, text.trim().to_string(), false));
            }
        }
        for t in input.turns {
            lines.extend(caller(t));
            if !t.reply.trim().is_empty() {
                lines.push(bot(ms(t.end), t.reply.trim().to_string(), false));
            }
        }
    } else {
        for s in input.bot_speech {
            let text = if s.interrupted {
                played_part(&s.text, s.played_ms, s.duration_ms)
            } else {
                s.text.trim().to_string()
            };
            if !text.is_empty() {
                lines.push(bot(s.at_ms, text, s.interrupted));
            }
        }
        lines.extend(input.turns.iter().filter_map(caller));
    }
    lines.extend(input.after_handover.iter().cloned());
    lines.sort_by_key(|l| l.at_ms);
    lines
}

/// Roughly the words of an interrupted line that were played: the share `played / duration`
/// of its words, rounded to whole words, followed by "…".
fn played_part(text: &str, played_ms: u64, duration_ms: u64) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let share = if duration_ms == 0 {
        0.0
    } else {
        (played_ms as f64 / duration_ms as f64).clamp(0.0, 1.0)
    };
    let keep = ((share * words.len() as f64).round() as usize).min(words.len());
    if keep == words.len() {
        // Cut at the very end: nothing was lost.
        return words.join(" ");
    }
    let kept = words[..keep].join(" ");
    let kept = kept.trim_end_matches([',', ';', ':', '-', '.']);
    format!("{kept}…")
}

fn slots(turns: &[TurnReport]) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for t in turns {
        all.extend(t.slots.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    all
}

fn last_intent(turns: &[TurnReport]) -> Option<IntentSummary> {
    turns
        .iter()
        .rev()
        .find(|t| !t.intent.is_empty() && t.intent != NONE_INTENT)
        .map(|t| IntentSummary {
            name: t.intent.clone(),
            confidence: finite(t.intent_confidence),
        })
}

fn escalation(input: &ContextInput) -> Option<EscalationInfo> {
    let e = input
        .escalation
        .or_else(|| input.turns.iter().rev().find_map(|t| t.escalation.as_ref()))?;
    let team = input
        .team_name
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or(&e.skill);
    Some(EscalationInfo {
        reason: e.reason,
        detail: e.detail.clone(),
        skill: e.skill.clone(),
        team: team.to_string(),
        turn: e.turn,
    })
}

fn emotion(turns: &[TurnReport]) -> EmotionTrend {
    let per_turn: Vec<f32> = turns
        .iter()
        .filter_map(|t| t.emotion.as_ref())
        .map(|e| finite(e.combined))
        .collect();
    let recent = &per_turn[per_turn.len().saturating_sub(TREND_TURNS)..];
    let worsening = match (recent.first(), recent.last()) {
        (Some(first), Some(last)) if recent.len() >= 2 => {
            recent.windows(2).all(|w| w[1] > w[0]) && last - first >= TREND_MIN_RISE
        }
        _ => false,
    };
    EmotionTrend {
        last: per_turn.last().copied(),
        per_turn,
        worsening,
    }
}

/// A few short lines for the agent, from the dialog state alone: who is calling, what they
/// want (and their last words), what the bot already did, why the call was escalated (when it
/// was), and the caller's mood when it matters. Three to five lines joined with "\n".
pub fn offline_summary(ctx: &HandoverContext) -> String {
    let mut lines = Vec::with_capacity(5);

    // 1. Who.
    let name = ctx
        .slots
        .get("name")
        .map(|n| n.trim())
        .filter(|n| !n.is_empty());
    lines.push(match name {
        Some(name) => format!("Caller {} (name: {name})", ctx.caller),
        None => format!("Caller {}", ctx.caller),
    });

    // 2. What they want.
    let last_words = ctx
        .transcript
        .iter()
        .rev()
        .find(|l| l.speaker == Speaker::Caller)
        .map(|l| quote(&l.text));
    let want = match &ctx.intent {
        Some(i) => intent_words(&i.name),
        None => "not recognised".to_string(),
    };
    lines.push(match last_words {
        Some(q) => format!("Request: {want}; last words: \"{q}\""),
        None if ctx.intent.is_none() => "Request: the caller has not said anything yet".into(),
        None => format!("Request: {want}"),
    });

    // 3. What the bot already did.
    let collected: Vec<String> = ctx
        .slots
        .iter()
        // The name is already on the first line.
        .filter(|(k, _)| name.is_none() || k.as_str() != "name")
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| format!("{} {}", k.replace('_', " "), v.trim()))
        .collect();
    let mut did = Vec::new();
    if !collected.is_empty() {
        did.push(format!("collected {}", collected.join(", ")));
    }
    if let Some(told) = bot_last_told(ctx) {
        did.push(format!("last told them \"{}\"", quote(told)));
    }
    lines.push(if did.is_empty() {
        "Bot: the bot could not help yet".to_string()
    } else {
        format!("Bot: {}", did.join("; "))
    });

    // 4. Why it escalated.
    if let Some(e) = &ctx.escalation {
        lines.push(format!(
            "Escalated on turn {}: {}; for the {} team",
            e.turn,
            reason_words(e.reason),
            e.team
        ));
    }

    // 5. Mood, when it matters.
    let last = ctx.emotion.last.unwrap_or(0.0);
    if last >= UPSET || ctx.emotion.worsening {
        let mood = if last >= UPSET { "upset" } else { "tense" };
        let trend = if ctx.emotion.worsening {
            ", worsening"
        } else {
            ""
        };
        lines.push(format!("Mood: {mood} ({last:.2}){trend}"));
    }

    lines.join("\n")
}

/// The values of the agent's whisper prompt: `request` (what the caller wants), `details`
/// (the collected data as a sentence, with a leading space, or empty) and `reason`.
pub fn whisper_values(ctx: &HandoverContext) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    let request = match &ctx.intent {
        Some(i) => intent_words(&i.name),
        None => "has not said what they want".to_string(),
    };
    values.insert("request".to_string(), request);
    let details: Vec<String> = ctx
        .slots
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| format!("{} {}", k.replace('_', " "), v.trim()))
        .collect();
    let details = if details.is_empty() {
        String::new()
    } else {
        let mut s = details.join(", ");
        if let Some(first) = s.get(..1) {
            s = first.to_uppercase() + &s[1..];
        }
        format!(" {s}.")
    };
    values.insert("details".to_string(), details);
    let reason = ctx
        .escalation
        .as_ref()
        .map_or("the caller needs a person", |e| reason_words(e.reason));
    values.insert("reason".to_string(), reason.to_string());
    values
}

/// The bot's last substantive line: not the greeting (bot lines before the caller's first
/// words), and on an escalated call not the transfer announcement (a final bot line after the
/// caller's last words).
fn bot_last_told(ctx: &HandoverContext) -> Option<&str> {
    let first_caller = ctx
        .transcript
        .iter()
        .position(|l| l.speaker == Speaker::Caller)?;
    let after_greeting = &ctx.transcript[first_caller..];
    let mut bot: Vec<(usize, &TranscriptEntry)> = after_greeting
        .iter()
        .enumerate()
        .filter(|(_, l)| l.speaker == Speaker::Bot)
        .collect();
    if ctx.escalation.is_some() {
        let last_caller = after_greeting
            .iter()
            .rposition(|l| l.speaker == Speaker::Caller)
            .unwrap_or(0);
        if bot.last().is_some_and(|(i, _)| *i > last_caller) {
            bot.pop();
        }
    }
    bot.last()
        .map(|(_, l)| l.text.as_str())
        .filter(|t| !t.trim().is_empty())
}

/// What an intent means, in words for the agent.
fn intent_words(name: &str) -> String {
    match name {
        "order_status" => "wants to know the status of an order",
        "password_reset" => "needs a password reset",
        "opening_hours" => "asked about opening hours",
        "cancellation" => "wants to cancel a service",
        "complaint" => "wants to make a complaint",
        "human_request" => "asked to speak to a person",
        "greeting" => "only greeted the bot",
        "thanks" => "thanked the bot",
        "goodbye" => "said goodbye",
        "affirm" => "said yes",
        "deny" => "said no",
        other => return format!("intent {other}"),
    }
    .to_string()
}

/// Why a call was handed over, in words for the agent.
fn reason_words(reason: EscalationReason) -> &'static str {
    match reason {
        EscalationReason::ExplicitRequest => "the caller asked for a person",
        EscalationReason::CriticalKeyword => {
            "a critical request (complaint, cancellation or legal)"
        }
        EscalationReason::LowAsrConfidence => "the line was too unclear to understand the caller",
        EscalationReason::LowIntentConfidence => "the bot did not understand the request",
        EscalationReason::RepeatedMisunderstanding => {
            "the bot misunderstood the caller several times"
        }
        EscalationReason::NegativeTone => "the caller is upset",
        EscalationReason::Dtmf0 => "the caller pressed 0",
        EscalationReason::NoInput => "the caller said nothing, prompt after prompt",
    }
}

/// A quote of at most [`QUOTE_CHARS`] characters, cut at a word boundary and followed by "…"
/// when cut.
fn quote(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() <= QUOTE_CHARS {
        return text;
    }
    let mut out = String::new();
    for word in text.split(' ') {
        let len = out.chars().count() + usize::from(!out.is_empty()) + word.chars().count();
        if len > QUOTE_CHARS {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.is_empty() {
        // One very long word: cut it by characters.
        out = text.chars().take(QUOTE_CHARS).collect();
    }
    let out = out.trim_end_matches([',', ';', ':', '-', '.']);
    format!("{out}…")
}

/// An instant as RFC 3339 UTC with whole seconds, e.g. `2023-11-14T22:13:20Z`.
pub fn rfc3339_utc(time: SystemTime) -> String {
    let secs: i64 = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Before 1970: round down to the whole second.
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            whole.saturating_neg() - i64::from(d.subsec_nanos() > 0)
        }
    };
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01), after Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dialog::emotion::EmotionReading;
    use crate::report::TurnTimings;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[allow(clippy::too_many_arguments)]
    fn turn(
        index: usize,
        start_ms: u64,
        end_ms: u64,
        text: &str,
        intent: &str,
        confidence: f32,
        slots: &[(&str, &str)],
        reply: &str,
        emotion: f32,
    ) -> TurnReport {
        TurnReport {
            input: Default::default(),
            index,
            start: Duration::from_millis(start_ms),
            end: Duration::from_millis(end_ms),
            end_reason: None,
            transcript: text.to_string(),
            asr_confidence: 0.9,
            normalized: text.to_lowercase(),
            intent: intent.to_string(),
            intent_confidence: confidence,
            intent_evidence: Vec::new(),
            slots: slots
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            reply: reply.to_string(),
            escalation: None,
            ends_call: false,
            emotion: Some(EmotionReading {
                text: emotion,
                voice: None,
                voice_detail: None,
                combined: emotion,
            }),
            timings: TurnTimings::default(),
            fault: None,
            turn_end: None,
        }
    }

    const GREETING: &str = "Hello, and thank you for calling. How can I help you today?";
    const ASK: &str = "Sure, I can check that for you. What is your order number? Please say \
                       the digits one by one.";
    const STATUS: &str = "Thanks. I have noted order number 4 5 7 1 2. Its current status and \
                          tracking link are in the confirmation email for that order.";
    const TRANSFER: &str = "I'm transferring you to a colleague from our billing team who can \
                            help with this. Please hold the line.";

    fn cancellation_call() -> (Vec<TurnReport>, Escalation) {
        let escalation = Escalation {
            reason: EscalationReason::CriticalKeyword,
            detail: "critical keyword \"cancel my contract\"".to_string(),
            skill: "billing".to_string(),
            turn: 3,
        };
        let mut turns = vec![
            turn(
                1,
                5_000,
                7_000,
                "Where is my order?",
                "order_status",
                0.91,
                &[],
                ASK,
                0.0,
            ),
            turn(
                2,
                12_000,
                15_000,
                "4 5 7 1 2",
                "none",
                0.0,
                &[("order_number", "45712"), ("name", "Alice Smith")],
                STATUS,
                0.2,
            ),
            turn(
                3,
                20_000,
                23_000,
                "This is ridiculous, I want to cancel my contract",
                "cancellation",
                0.88,
                &[],
                TRANSFER,
                0.72,
            ),
        ];
        turns[2].escalation = Some(escalation.clone());
        (turns, escalation)
    }

    fn speech() -> Vec<BotSpeechLine> {
        let line = |at_ms, text: &str, duration_ms, played_ms| BotSpeechLine {
            at_ms,
            text: text.to_string(),
            played_ms,
            duration_ms,
            interrupted: played_ms < duration_ms,
        };
        vec![
            line(100, GREETING, 4_000, 4_000),
            line(7_300, ASK, 6_000, 6_000),
            // Interrupted after half of it: the caller got angry.
            line(15_300, STATUS, 8_000, 4_000),
            line(23_300, TRANSFER, 5_000, 5_000),
        ]
    }

    fn input<'a>(
        turns: &'a [TurnReport],
        speech: &'a [BotSpeechLine],
        escalation: Option<&'a Escalation>,
    ) -> ContextInput<'a> {
        ContextInput {
            call_id: "call-42",
            flow: "support",
            caller: "sip:alice@example.com",
            called: Some("sip:support@example.org"),
            started_at: at(1_700_000_000),
            escalated_at: Some(at(1_700_000_023)),
            greeting: Some((GREETING, 0)),
            turns,
            bot_speech: speech,
            escalation,
            team_name: Some("billing"),
            after_handover: &[],
        }
    }

    #[test]
    fn cancellation_escalation_gives_full_context() {
        let (turns, escalation) = cancellation_call();
        let speech = speech();
        let ctx = build(&input(&turns, &speech, Some(&escalation)));

        assert_eq!(ctx.schema, SCHEMA);
        assert_eq!(ctx.call_id, "call-42");
        assert_eq!(ctx.caller, "sip:alice@example.com");
        assert_eq!(ctx.called.as_deref(), Some("sip:support@example.org"));
        assert_eq!(ctx.started_at, "2023-11-14T22:13:20Z");
        assert_eq!(ctx.escalated_at.as_deref(), Some("2023-11-14T22:13:43Z"));

        let order: Vec<(u64, Speaker)> = ctx
            .transcript
            .iter()
            .map(|l| (l.at_ms, l.speaker))
            .collect();
        assert_eq!(
            order,
            vec![
                (100, Speaker::Bot),
                (5_000, Speaker::Caller),
                (7_300, Speaker::Bot),
                (12_000, Speaker::Caller),
                (15_300, Speaker::Bot),
                (20_000, Speaker::Caller),
                (23_300, Speaker::Bot),
            ]
        );
        let cut = &ctx.transcript[4];
        assert!(cut.interrupted);
        assert!(cut.text.ends_with('…'), "{}", cut.text);
        assert!(
            cut.text.starts_with("Thanks. I have noted order number"),
            "{}",
            cut.text
        );
        let full = STATUS.split_whitespace().count();
        let kept = cut.text.trim_end_matches('…').split_whitespace().count();
        assert_eq!(kept, (full as f64 / 2.0).round() as usize);
        assert!(!ctx.transcript[2].interrupted);
        assert_eq!(ctx.transcript[2].text, ASK);
        assert_eq!(ctx.transcript[1].asr_confidence, Some(0.9));
        assert_eq!(ctx.transcript[0].asr_confidence, None);

        assert_eq!(
            ctx.slots.get("order_number").map(String::as_str),
            Some("45712")
        );
        assert_eq!(
            ctx.slots.get("name").map(String::as_str),
            Some("Alice Smith")
        );
        assert_eq!(
            ctx.intent,
            Some(IntentSummary {
                name: "cancellation".into(),
                confidence: 0.88
            })
        );
        assert_eq!(
            ctx.escalation,
            Some(EscalationInfo {
                reason: EscalationReason::CriticalKeyword,
                detail: escalation.detail.clone(),
                skill: "billing".into(),
                team: "billing".into(),
                turn: 3,
            })
        );
        assert_eq!(ctx.emotion.per_turn, vec![0.0, 0.2, 0.72]);
        assert_eq!(ctx.emotion.last, Some(0.72));
        assert!(ctx.emotion.worsening);

        let lines: Vec<&str> = ctx.summary.lines().collect();
        assert!((3..=5).contains(&lines.len()), "{}", ctx.summary);
        assert_eq!(lines[0], "Caller sip:alice@example.com (name: Alice Smith)");
        assert!(
            lines[1].contains("wants to cancel a service"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("\"This is ridiculous, I want to cancel my contract\""));
        assert!(lines[2].contains("order number 45712"), "{}", lines[2]);
        // What the bot last told them is the (cut) status, not the transfer announcement.
        assert!(lines[2].contains("Thanks. I have noted"), "{}", lines[2]);
        assert!(!lines[2].contains("transferring"), "{}", lines[2]);
        assert!(lines[3].contains("critical request"), "{}", lines[3]);
        assert!(lines[3].contains("turn 3"), "{}", lines[3]);
        assert!(lines[3].contains("billing"), "{}", lines[3]);
        assert_eq!(lines[4], "Mood: upset (0.72), worsening");
        assert!(
            lines.iter().all(|l| l.chars().count() <= 200),
            "{}",
            ctx.summary
        );
    }

    #[test]
    fn without_bot_speech_the_replies_and_greeting_are_used() {
        let (turns, escalation) = cancellation_call();
        let mut inp = input(&turns, &[], None);
        inp.team_name = None;
        let ctx = build(&inp);
        let bot: Vec<(u64, &str)> = ctx
            .transcript
            .iter()
            .filter(|l| l.speaker == Speaker::Bot)
            .map(|l| (l.at_ms, l.text.as_str()))
            .collect();
        assert_eq!(
            bot,
            vec![
                (0, GREETING),
                (7_000, ASK),
                (15_000, STATUS),
                (23_000, TRANSFER)
            ]
        );
        assert!(ctx.transcript.iter().all(|l| !l.interrupted));
        assert_eq!(ctx.transcript.len(), 7);
        // The escalation comes from the turns; the team falls back to the skill.
        let e = ctx
            .escalation
            .as_ref()
            .map(|e| (e.reason, e.turn, e.team.as_str()));
        assert_eq!(e, Some((escalation.reason, 3, "billing")));
        assert!(
            ctx.summary.contains("noted order number 4 5 7 1 2"),
            "{}",
            ctx.summary
        );
    }

    #[test]
    fn whisper_names_request_details_and_reason() {
        let (turns, escalation) = cancellation_call();
        let speech = speech();
        let ctx = build(&input(&turns, &speech, Some(&escalation)));
        let v = whisper_values(&ctx);
        assert_eq!(v["request"], "wants to cancel a service");
        assert!(v["reason"].contains("critical request"), "{v:?}");
        assert!(
            v["details"].is_empty() || v["details"].starts_with(' '),
            "{v:?}"
        );
        let empty = build(&ContextInput {
            turns: &[],
            bot_speech: &[],
            escalation: None,
            ..input(&[], &[], None)
        });
        assert_eq!(whisper_values(&empty)["details"], "");
    }

    #[test]
    fn lines_after_the_handover_join_the_transcript_in_time_order() {
        let (turns, escalation) = cancellation_call();
        let speech = speech();
        let after = [
            TranscriptEntry {
                at_ms: 999_000,
                speaker: Speaker::Agent,
                text: "Hello, billing, how can I help?".into(),
                interrupted: false,
                asr_confidence: Some(0.9),
                intent: None,
            },
            TranscriptEntry {
                at_ms: 1_002_000,
                speaker: Speaker::Caller,
                text: "My order number is 1234".into(),
                interrupted: false,
                asr_confidence: Some(0.8),
                intent: None,
            },
        ];
        let ctx = build(&ContextInput {
            after_handover: &after,
            ..input(&turns, &speech, Some(&escalation))
        });
        let n = ctx.transcript.len();
        assert_eq!(ctx.transcript[n - 2].speaker, Speaker::Agent);
        assert_eq!(ctx.transcript[n - 1].text, "My order number is 1234");
    }

    #[test]
    fn empty_call_gives_a_valid_context() {
        let inp = ContextInput {
            call_id: "",
            flow: "",
            caller: "  ",
            called: Some(""),
            started_at: UNIX_EPOCH,
            escalated_at: None,
            greeting: None,
            turns: &[],
            bot_speech: &[],
            escalation: None,
            team_name: None,
            after_handover: &[],
        };
        let ctx = build(&inp);
        assert_eq!(ctx.caller, "unknown");
        assert_eq!(ctx.called, None);
        assert_eq!(ctx.started_at, "1970-01-01T00:00:00Z");
        assert!(ctx.transcript.is_empty());
        assert!(ctx.slots.is_empty());
        assert_eq!(ctx.intent, None);
        assert_eq!(ctx.escalation, None);
        assert_eq!(
            ctx.emotion,
            EmotionTrend {
                per_turn: vec![],
                last: None,
                worsening: false
            }
        );
        let lines: Vec<&str> = ctx.summary.lines().collect();
        assert!((3..=5).contains(&lines.len()), "{}", ctx.summary);
        assert_eq!(lines[0], "Caller unknown");
        assert!(lines[2].contains("could not help yet"), "{}", ctx.summary);
        let back: HandoverContext = serde_json::from_str(&ctx.to_json()).expect("valid JSON");
        assert_eq!(back, ctx);
    }

    #[test]
    fn dtmf_escalation_with_greeting_only() {
        let mut t = turn(1, 3_000, 3_000, "", "none", 0.0, &[], "", 0.0);
        t.emotion = None;
        let e = Escalation {
            reason: EscalationReason::Dtmf0,
            detail: "caller pressed 0".into(),
            skill: "general".into(),
            turn: 1,
        };
        let turns = [t];
        let mut inp = input(&turns, &[], Some(&e));
        inp.team_name = Some("customer service");
        let ctx = build(&inp);
        assert_eq!(
            ctx.transcript.len(),
            1,
            "the empty DTMF transcript is skipped"
        );
        let lines: Vec<&str> = ctx.summary.lines().collect();
        assert_eq!(lines.len(), 4, "{}", ctx.summary);
        assert!(lines[1].contains("not said anything"), "{}", lines[1]);
        assert!(lines[2].contains("could not help yet"), "{}", lines[2]);
        assert_eq!(
            lines[3],
            "Escalated on turn 1: the caller pressed 0; for the customer service team"
        );
    }

    #[test]
    fn json_round_trip_and_field_names() {
        let (turns, escalation) = cancellation_call();
        let speech = speech();
        let ctx = build(&input(&turns, &speech, Some(&escalation)));
        let json = ctx.to_json();
        assert!(!json.contains('\n'));
        let back: HandoverContext = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(back, ctx);
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value["schema"], "voicebot.handover.v1");
        assert_eq!(value["transcript"][0]["speaker"], "bot");
        assert_eq!(value["transcript"][1]["speaker"], "caller");
        assert_eq!(value["escalation"]["reason"], "critical_keyword");
        assert_eq!(value["emotion"]["worsening"], true);
    }

    #[test]
    fn played_part_rounds_to_whole_words() {
        assert_eq!(played_part("one two three four", 1_000, 4_000), "one…");
        assert_eq!(played_part("one, two three four", 1_000, 4_000), "one…");
        assert_eq!(
            played_part("one two three four", 2_600, 4_000),
            "one two three…"
        );
        assert_eq!(
            played_part("one two three four", 4_000, 4_000),
            "one two three four"
        );
        assert_eq!(
            played_part("one two three four", 9_000, 4_000),
            "one two three four"
        );
        assert_eq!(played_part("one two", 0, 4_000), "…");
        assert_eq!(played_part("one two", 10, 0), "…");
        assert_eq!(played_part("", 10, 100), "");
    }

    #[test]
    fn quotes_are_cut_near_80_characters() {
        let long = "word ".repeat(40);
        let q = quote(&long);
        assert!(q.ends_with('…'));
        assert!(q.chars().count() <= QUOTE_CHARS + 1);
        assert!(!q.contains("  "));
        let one = "é".repeat(200);
        assert_eq!(quote(&one).chars().count(), QUOTE_CHARS + 1);
        assert_eq!(quote("short and sweet"), "short and sweet");
    }

    #[test]
    fn mood_line_and_worsening() {
        let (turns, escalation) = cancellation_call();
        let mut ctx = build(&input(&turns, &[], Some(&escalation)));
        ctx.emotion = EmotionTrend {
            per_turn: vec![0.5, 0.3],
            last: Some(0.3),
            worsening: false,
        };
        assert!(!offline_summary(&ctx).contains("Mood"));
        ctx.emotion.last = Some(0.5);
        assert!(offline_summary(&ctx).ends_with("Mood: upset (0.50)"));

        let scores = |s: &[f32]| {
            let turns: Vec<TurnReport> = s
                .iter()
                .enumerate()
                .map(|(i, &e)| turn(i + 1, 0, 0, "x", "none", 0.0, &[], "", e))
                .collect();
            emotion(&turns).worsening
        };
        assert!(scores(&[0.1, 0.3]));
        assert!(scores(&[0.9, 0.0, 0.2, 0.4]));
        assert!(!scores(&[0.1, 0.15]), "a small rise is jitter");
        assert!(!scores(&[0.1, 0.4, 0.3]));
        assert!(!scores(&[0.5]));
        assert!(!scores(&[]));
    }

    #[test]
    fn unknown_intent_and_reason_words() {
        assert_eq!(intent_words("refund"), "intent refund");
        assert_eq!(intent_words("password_reset"), "needs a password reset");
        assert_eq!(
            reason_words(EscalationReason::ExplicitRequest),
            "the caller asked for a person"
        );
        assert_eq!(
            reason_words(EscalationReason::NegativeTone),
            "the caller is upset"
        );
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_utc(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(at(1_700_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(at(951_868_799)), "2000-02-29T23:59:59Z");
        assert_eq!(rfc3339_utc(at(951_868_800)), "2000-03-01T00:00:00Z");
        assert_eq!(rfc3339_utc(at(4_107_542_400)), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339_utc(at(1_709_164_800)), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(at(253_402_300_799)), "9999-12-31T23:59:59Z");
        // Sub-second parts are dropped.
        assert_eq!(
            rfc3339_utc(at(1_700_000_000) + Duration::from_millis(999)),
            "2023-11-14T22:13:20Z"
        );
        // Before 1970: rounded down to the whole second.
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH - Duration::from_secs(1)),
            "1969-12-31T23:59:59Z"
        );
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH - Duration::from_millis(1)),
            "1969-12-31T23:59:59Z"
        );
    }
}
