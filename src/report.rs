//! What the pipeline reports about a call: one record per caller turn and one per call. The same
//! records are printed by `voicebot simulate`, written as its JSON report, and (later) stored for
//! live calls, so a tester and an admin read identical facts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::dialog::emotion::EmotionReading;
use crate::dialog::Escalation;
use crate::speech::vad::EndReason;

pub use crate::serde_util::ser_ms;

/// Processing time of one turn's stages (wall clock).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TurnTimings {
    #[serde(rename = "asr_ms", serialize_with = "ser_ms")]
    pub asr: Duration,
    #[serde(rename = "intent_ms", serialize_with = "ser_ms")]
    pub intent: Duration,
    #[serde(rename = "tts_ms", serialize_with = "ser_ms")]
    pub tts: Duration,
    /// From the end-of-utterance decision to the reply audio being ready.
    #[serde(rename = "total_ms", serialize_with = "ser_ms")]
    pub total: Duration,
}

/// What started a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnInput {
    /// The caller spoke (or typed, in a test chat).
    #[default]
    Speech,
    /// The caller pressed a key.
    Dtmf,
    /// The caller said nothing for `no_input_s` after the bot finished speaking.
    NoInput,
}

/// One caller turn and the bot's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TurnReport {
    /// 1-based turn number.
    pub index: usize,
    /// What started the turn: speech, a key press or a silence.
    pub input: TurnInput,
    /// Media time the caller's utterance started.
    #[serde(rename = "start_ms", serialize_with = "ser_ms")]
    pub start: Duration,
    /// Media time the caller's utterance ended.
    #[serde(rename = "end_ms", serialize_with = "ser_ms")]
    pub end: Duration,
    /// Why the endpointer closed the utterance (none for a DTMF turn).
    pub end_reason: Option<EndReason>,
    /// What the recogniser heard.
    pub transcript: String,
    pub asr_confidence: f32,
    /// The transcript after normalisation (digits, casing) as the intent engine saw it.
    pub normalized: String,
    pub intent: String,
    pub intent_confidence: f32,
    /// Why that intent: the matched words or examples.
    pub intent_evidence: Vec<String>,
    pub slots: BTreeMap<String, String>,
    /// What the bot said back (empty when it said nothing).
    pub reply: String,
    /// The escalation decided on this turn, with its reason.
    pub escalation: Option<Escalation>,
    /// Whether the bot ended the call on this turn (goodbye).
    pub ends_call: bool,
    /// The caller's emotion on this turn: words, voice against their baseline, combined.
    pub emotion: Option<EmotionReading>,
    pub timings: TurnTimings,
    /// A fault on this turn (recognition or synthesis failed), the call went on regardless.
    pub fault: Option<String>,
    /// How the end of the turn was decided: the turn-end model's score, the silence waited,
    /// whether the transcript was ready at the pause (none without a turn-end judge, or for
    /// a DTMF turn).
    pub turn_end: Option<crate::speech::turn_end::TurnEndNote>,
}

/// How a call ended for the bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    /// The caller's audio ended while the bot still had the call.
    CallerHungUp,
    /// The bot said goodbye.
    Completed,
    /// The bot handed the call to a human.
    Escalated,
}

/// Everything about one call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallReport {
    /// The flow that answered the call.
    pub flow: String,
    /// The bot's greeting.
    pub greeting: String,
    pub turns: Vec<TurnReport>,
    pub outcome: CallOutcome,
    /// The escalation, if the call was handed over.
    pub escalation: Option<Escalation>,
    /// Media length of the caller's audio.
    #[serde(rename = "caller_audio_ms", serialize_with = "ser_ms")]
    pub caller_audio: Duration,
    /// Caller audio after the bot handed the call over or ended it, not processed by the bot.
    #[serde(rename = "unprocessed_after_end_ms", serialize_with = "ser_ms")]
    pub unprocessed_after_end: Duration,
    /// Short, doubtful utterances ignored as line noise (not turns).
    pub noise_ignored: usize,
    /// What the caller said after the hand-over (live calls keep transcribing for the agent).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after_handover: Vec<HeardLine>,
}

/// One utterance transcribed without a dialog turn (after the hand-over; the agent's side).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeardLine {
    #[serde(rename = "start_ms", serialize_with = "ser_ms")]
    pub start: Duration,
    #[serde(rename = "end_ms", serialize_with = "ser_ms")]
    pub end: Duration,
    pub text: String,
    pub confidence: f32,
}
