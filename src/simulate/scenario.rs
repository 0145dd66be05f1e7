//! Scenario files: a scripted call as caller turns with expectations.
//!
//! A turn is either a WAV recording or text that is spoken with espeak-ng (optionally squeezed
//! through an 8 kHz telephone band). The turns are joined with pauses into one call recording,
//! run through the same pipeline as any call, and each heard caller turn is checked against its
//! expectations. Format (TOML):
//!
//! ```toml
//! description = "Order status with the number in a second turn"
//! [caller]            # optional: how `say` turns are spoken
//! voice = "en-us"     # espeak-ng voice
//! rate_wpm = 150
//! telephone = true    # band-limit to 8 kHz like a phone line
//!
//! [[turn]]
//! say = "Where is my order?"
//! [turn.expect]
//! transcript_contains = ["order"]
//! intent = "order_status"
//! escalates = false
//! ```
//!
//! Expectations: `transcript_contains`, `intent`, `escalates`, `reason`, `reply_contains`,
//! `slots` (a table of slot = value), `ends_call`.
//!
//! A turn can also be a silence: `silence_s = 20` keeps the caller quiet that long, and its
//! expectations apply to what the bot did meanwhile (its no-input prompts): `no_input_prompts`
//! (how many times it spoke up), `escalates`, `reason` (`no_input`), `reply_contains` (any of
//! its words then), `ends_call`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::audio::resample::resample_all;
use crate::audio::wav::{read_wav, MonoAudio};
use crate::audio::{ms_to_samples, SPEECH_RATE};
use crate::config_file::{self, ConfigError};
use crate::dialog::normalize::normalize;
use crate::flows::Flow;
use crate::pipeline::Engines;
use crate::report::{CallReport, TurnInput, TurnReport};
use crate::speech::tts::{EspeakSynthesizer, SpeechSynthesizer, TtsConfig};

use super::call::{simulate_call, SimulatedCall};

/// How synthetic caller turns are spoken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallerVoice {
    pub voice: String,
    pub rate_wpm: u32,
    pub pitch: u32,
    /// Band-limit through 8 kHz, as a telephone line does.
    pub telephone: bool,
    /// Pause between turns.
    pub pause_ms: u64,
}

impl Default for CallerVoice {
    fn default() -> Self {
        CallerVoice {
            voice: "en-us".into(),
            rate_wpm: 150,
            pitch: 50,
            telephone: true,
            pause_ms: 1800,
        }
    }
}

/// What a heard turn must show.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    pub transcript_contains: Vec<String>,
    pub intent: Option<String>,
    pub escalates: Option<bool>,
    pub reason: Option<String>,
    pub reply_contains: Vec<String>,
    pub slots: BTreeMap<String, String>,
    /// Whether the bot ends the call on this turn (said goodbye and hung up).
    pub ends_call: Option<bool>,
    /// For a silent turn: how many times the bot spoke up (no-input prompts, the hand-over
    /// or the goodbye included).
    pub no_input_prompts: Option<usize>,
}

/// One caller turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    /// Text to speak with espeak-ng.
    pub say: Option<String>,
    /// A recording, relative to the scenario file.
    pub wav: Option<PathBuf>,
    /// Seconds the caller says nothing (instead of `say` or `wav`).
    pub silence_s: Option<f32>,
    #[serde(default)]
    pub expect: Expect,
}

impl Turn {
    fn is_silence(&self) -> bool {
        self.silence_s.is_some()
    }
}

/// A scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub description: String,
    /// The flow that answers (the default flow when absent).
    pub flow: Option<String>,
    #[serde(default)]
    pub caller: CallerVoice,
    #[serde(rename = "turn")]
    pub turns: Vec<Turn>,
}

const KNOWN_REASONS: &[&str] = &[
    "explicit_request",
    "critical_keyword",
    "low_asr_confidence",
    "low_intent_confidence",
    "repeated_misunderstanding",
    "negative_tone",
    "dtmf0",
    "no_input",
];

impl Scenario {
    /// Loads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::whole_file(path, format!("cannot read: {e}")))?;
        Self::from_text(path, &text)
    }

    /// Parses and validates scenario text; `path` labels errors and anchors relative WAV paths.
    pub fn from_text(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut scenario: Scenario = config_file::parse(path, text)?;
        if scenario.turns.is_empty() {
            return Err(ConfigError::whole_file(
                path,
                "a scenario needs at least one [[turn]]",
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for (i, turn) in scenario.turns.iter_mut().enumerate() {
            let field = format!("turn.{i}");
            let sources = [turn.say.is_some(), turn.wav.is_some(), turn.is_silence()];
            match sources.iter().filter(|s| **s).count() {
                0 => return Err(ConfigError::invalid(
                    path,
                    text,
                    &field,
                    "needs `say` (text), `wav` (a recording) or `silence_s` (seconds of silence)",
                )),
                1 => {}
                _ => {
                    return Err(ConfigError::invalid(
                        path,
                        text,
                        &field,
                        "give one of `say`, `wav` and `silence_s`, not several",
                    ))
                }
            }
            validate_silence(path, text, &field, turn)?;
            match (&turn.say, &turn.wav) {
                (Some(say), None) if say.trim().is_empty() => {
                    return Err(ConfigError::invalid(
                        path,
                        text,
                        &format!("{field}.say"),
                        "is empty",
                    ))
                }
                (None, Some(wav)) if wav.is_relative() => turn.wav = Some(base.join(wav)),
                _ => {}
            }
            if let Some(reason) = &turn.expect.reason {
                if !KNOWN_REASONS.contains(&reason.as_str()) {
                    return Err(ConfigError::invalid(
                        path,
                        text,
                        &format!("{field}.expect.reason"),
                        format!(
                            "unknown reason `{reason}`; known: {}",
                            KNOWN_REASONS.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(scenario)
    }

    /// Builds the call recording: a short lead-in, then each turn followed by a pause.
    pub fn render_audio(&self) -> Result<MonoAudio, String> {
        let tts = EspeakSynthesizer::new(TtsConfig {
            voice: self.caller.voice.clone(),
            rate_wpm: self.caller.rate_wpm,
            pitch: self.caller.pitch,
            peak_dbfs: -6.0,
            ..TtsConfig::default()
        });
        let pause = vec![0.0f32; ms_to_samples(self.caller.pause_ms, SPEECH_RATE)];
        let mut samples = vec![0.0f32; ms_to_samples(600, SPEECH_RATE)];
        for (i, turn) in self.turns.iter().enumerate() {
            if let Some(seconds) = turn.silence_s {
                let silence = ms_to_samples((seconds * 1000.0) as u64, SPEECH_RATE);
                samples.resize(samples.len() + silence, 0.0);
                continue;
            }
            let audio = match (&turn.say, &turn.wav) {
                (Some(text), _) => {
                    let speech = tts
                        .synthesize(text)
                        .map_err(|e| format!("turn {}: {e}", i + 1))?;
                    speech.audio
                }
                (None, Some(wav)) => {
                    read_wav(wav)
                        .map_err(|e| format!("turn {}: {e}", i + 1))?
                        .audio
                }
                (None, None) => return Err(format!("turn {}: nothing to say", i + 1)),
            };
            let resample =
                |x: &[f32], from, to| resample_all(x, from, to).map_err(|e| e.to_string());
            let at_16k = if self.caller.telephone && turn.say.is_some() {
                let narrow = resample(&audio.samples, audio.rate, 8000)?;
                resample(&narrow, 8000, SPEECH_RATE)?
            } else {
                resample(&audio.samples, audio.rate, SPEECH_RATE)?
            };
            samples.extend_from_slice(&at_16k);
            samples.extend_from_slice(&pause);
        }
        Ok(MonoAudio {
            samples,
            rate: SPEECH_RATE,
        })
    }
}

/// The longest silence a scenario turn may ask for.
const MAX_SILENCE_S: f32 = 300.0;

/// A silent turn's length is sane and it expects only what a silence can show.
fn validate_silence(path: &Path, text: &str, field: &str, turn: &Turn) -> Result<(), ConfigError> {
    let bad = |key: &str, reason: String| {
        Err(ConfigError::invalid(
            path,
            text,
            &format!("{field}.{key}"),
            reason,
        ))
    };
    let Some(seconds) = turn.silence_s else {
        if turn.expect.no_input_prompts.is_some() {
            return bad(
                "expect.no_input_prompts",
                "only a silent turn (`silence_s`) has no-input prompts".into(),
            );
        }
        return Ok(());
    };
    if !(seconds > 0.0 && seconds <= MAX_SILENCE_S) {
        return bad(
            "silence_s",
            format!("{seconds} must be above 0 and at most {MAX_SILENCE_S} seconds"),
        );
    }
    let e = &turn.expect;
    if !e.transcript_contains.is_empty() || e.intent.is_some() || !e.slots.is_empty() {
        return bad(
            "expect",
            "a silent turn has no transcript, intent or slots to expect".into(),
        );
    }
    Ok(())
}

/// A scenario's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub file: PathBuf,
    pub description: String,
    pub passed: bool,
    /// Each expectation that did not hold, in words.
    pub failures: Vec<String>,
    pub report: Option<CallReport>,
}

/// Loads, renders and runs one scenario file.
pub async fn run_scenario(
    engines: &Engines,
    default_flow: Arc<Flow>,
    path: &Path,
) -> (ScenarioResult, Option<SimulatedCall>) {
    let fail = |description: String, msg: String| ScenarioResult {
        file: path.to_path_buf(),
        description,
        passed: false,
        failures: vec![msg],
        report: None,
    };
    let scenario = match Scenario::load(path) {
        Ok(s) => s,
        Err(e) => return (fail(String::new(), e.to_string()), None),
    };
    let ran = async {
        let flow = match &scenario.flow {
            None => default_flow,
            Some(name) => engines.flows.current().get(name).ok_or_else(|| {
                format!(
                    "unknown flow `{name}` (flows: {})",
                    engines.flows.current().names().join(", ")
                )
            })?,
        };
        let audio = scenario.render_audio()?;
        simulate_call(engines, flow, &audio)
            .await
            .map_err(|e| e.to_string())
    };
    let call = match ran.await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("{}: {e}", path.display());
            return (fail(scenario.description.clone(), msg), None);
        }
    };
    let failures = check(&scenario, &call.report);
    let result = ScenarioResult {
        file: path.to_path_buf(),
        description: scenario.description,
        passed: failures.is_empty(),
        failures,
        report: Some(call.report.clone()),
    };
    (result, Some(call))
}

/// Compares heard turns with the scenario's expectations: each spoken turn with the bot's
/// answer to it, each silent turn with what the bot said meanwhile (its no-input turns).
pub fn check(scenario: &Scenario, report: &CallReport) -> Vec<String> {
    let mut failures = Vec::new();
    let is_silence = |t: &&TurnReport| t.input == TurnInput::NoInput;
    let spoken_expected = scenario.turns.iter().filter(|t| !t.is_silence()).count();
    let spoken_heard: Vec<&TurnReport> = report.turns.iter().filter(|t| !is_silence(t)).collect();
    // After an escalation or a goodbye the bot hears no more turns; expectations beyond that
    // point can only be met if they expect nothing from the bot.
    if spoken_heard.len() != spoken_expected {
        let transcripts: Vec<String> = spoken_heard
            .iter()
            .map(|t| format!("\"{}\"", t.transcript))
            .collect();
        failures.push(format!(
            "expected {spoken_expected} caller turns, the bot handled {}: [{}]",
            spoken_heard.len(),
            transcripts.join(", ")
        ));
    }
    let mut heard = report.turns.iter().peekable();
    for (i, expected) in scenario.turns.iter().enumerate() {
        let n = i + 1;
        let mut silent = Vec::new();
        while let Some(t) = heard.next_if(is_silence) {
            silent.push(t);
        }
        if expected.is_silence() {
            check_silence(n, &expected.expect, &silent, &mut failures);
            continue;
        }
        if !silent.is_empty() {
            failures.push(format!(
                "turn {n}: the bot prompted {} time(s) for silence before it (\"{}\")",
                silent.len(),
                silent[0].reply
            ));
        }
        if let Some(turn) = heard.next() {
            check_turn(n, &expected.expect, turn, &mut failures);
        }
    }
    let left: Vec<&TurnReport> = heard.filter(is_silence).collect();
    if let Some(first) = left.first() {
        failures.push(format!(
            "the bot prompted {} time(s) for silence after the last turn (\"{}\")",
            left.len(),
            first.reply
        ));
    }
    failures
}

/// The serialised name of a turn's escalation reason, if it escalated.
fn reason_name(turn: &TurnReport) -> Option<String> {
    turn.escalation
        .as_ref()
        .and_then(|x| serde_json::to_value(x.reason).ok())
        .and_then(|v| v.as_str().map(str::to_string))
}

/// What the bot did while the caller of turn `n` was silent.
fn check_silence(n: usize, e: &Expect, during: &[&TurnReport], failures: &mut Vec<String>) {
    let replies: Vec<&str> = during.iter().map(|t| t.reply.as_str()).collect();
    if let Some(count) = e.no_input_prompts {
        if during.len() != count {
            failures.push(format!(
                "turn {n}: the bot spoke up {} time(s) during the silence, expected {count}: {replies:?}",
                during.len()
            ));
        }
    }
    let escalation = during
        .iter()
        .find_map(|t| t.escalation.as_ref().map(|_| *t));
    if let Some(escalates) = e.escalates {
        if escalation.is_some() != escalates {
            failures.push(format!(
                "turn {n}: {} during the silence",
                if escalates {
                    "expected an escalation, got none"
                } else {
                    "unexpected escalation"
                }
            ));
        }
    }
    if let Some(reason) = &e.reason {
        let got = escalation.and_then(reason_name);
        if got.as_deref() != Some(reason.as_str()) {
            failures.push(format!(
                "turn {n}: escalation reason is {}, expected {reason}",
                got.unwrap_or_else(|| "none".into())
            ));
        }
    }
    let said = replies.join(" ").to_lowercase();
    for needle in &e.reply_contains {
        if !said.contains(&needle.to_lowercase()) {
            failures.push(format!(
                "turn {n}: nothing the bot said during the silence contains \"{needle}\": {replies:?}"
            ));
        }
    }
    if let Some(ends) = e.ends_call {
        if during.iter().any(|t| t.ends_call) != ends {
            failures.push(format!(
                "turn {n}: the bot {} the call during the silence",
                if ends { "did not end" } else { "ended" }
            ));
        }
    }
}

/// One spoken turn against its expectations.
fn check_turn(n: usize, e: &Expect, turn: &TurnReport, failures: &mut Vec<String>) {
    let heard_norm = normalize(&turn.transcript);
    for needle in &e.transcript_contains {
        if !heard_norm.contains(&normalize(needle)) {
            failures.push(format!(
                "turn {n}: transcript \"{}\" does not contain \"{needle}\"",
                turn.transcript
            ));
        }
    }
    if let Some(intent) = &e.intent {
        if &turn.intent != intent {
            failures.push(format!(
                "turn {n}: intent is {} ({:.2}), expected {intent} (heard \"{}\")",
                turn.intent, turn.intent_confidence, turn.transcript
            ));
        }
    }
    if let Some(escalates) = e.escalates {
        if turn.escalation.is_some() != escalates {
            failures.push(format!(
                "turn {n}: {} (heard \"{}\")",
                if escalates {
                    "expected an escalation, got none"
                } else {
                    "unexpected escalation"
                },
                turn.transcript
            ));
        }
    }
    if let Some(reason) = &e.reason {
        let got = reason_name(turn);
        if got.as_deref() != Some(reason.as_str()) {
            failures.push(format!(
                "turn {n}: escalation reason is {}, expected {reason}",
                got.unwrap_or_else(|| "none".into())
            ));
        }
    }
    for needle in &e.reply_contains {
        if !turn.reply.to_lowercase().contains(&needle.to_lowercase()) {
            failures.push(format!(
                "turn {n}: reply \"{}\" does not contain \"{needle}\"",
                turn.reply
            ));
        }
    }
    for (slot, value) in &e.slots {
        match turn.slots.get(slot) {
            Some(v) if v == value => {}
            other => failures.push(format!(
                "turn {n}: slot {slot} is {}, expected {value}",
                other.map_or("unset".to_string(), |v| format!("\"{v}\""))
            )),
        }
    }
    if let Some(ends) = e.ends_call {
        if turn.ends_call != ends {
            failures.push(format!(
                "turn {n}: the bot {} the call (heard \"{}\")",
                if ends { "did not end" } else { "ended" },
                turn.transcript
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
description = "x"
[[turn]]
say = "Where is my order?"
[turn.expect]
intent = "order_status"

[[turn]]
wav = "audio/x.wav"
"#;

    #[test]
    fn parses_and_anchors_wav_paths() {
        let s = Scenario::from_text(Path::new("tests/scenarios/a.toml"), GOOD).expect("valid");
        assert_eq!(s.turns.len(), 2);
        assert_eq!(
            s.turns[1].wav.as_deref(),
            Some(Path::new("tests/scenarios/audio/x.wav"))
        );
        assert!(s.caller.telephone);
    }

    #[test]
    fn turn_with_both_sources_is_rejected_with_line() {
        let text = "[[turn]]\nsay = \"hi\"\nwav = \"a.wav\"\n";
        let err = Scenario::from_text(Path::new("s.toml"), text).unwrap_err();
        assert!(err.reason.contains("not several"), "{err}");
        // The turn's `[[turn]]` header.
        assert_eq!(err.line, Some(1));
    }

    #[test]
    fn a_silent_turn_parses_and_rejects_what_silence_cannot_show() {
        let text = "[[turn]]\nsilence_s = 20\n[turn.expect]\nno_input_prompts = 2\nreason = \"no_input\"\n";
        let s = Scenario::from_text(Path::new("s.toml"), text).expect("valid");
        assert!(s.turns[0].is_silence());
        let both = "[[turn]]\nsay = \"hi\"\nsilence_s = 3\n";
        let err = Scenario::from_text(Path::new("s.toml"), both).unwrap_err();
        assert!(err.reason.contains("not several"), "{err}");
        let intent = "[[turn]]\nsilence_s = 3\n[turn.expect]\nintent = \"greeting\"\n";
        let err = Scenario::from_text(Path::new("s.toml"), intent).unwrap_err();
        assert!(err.reason.contains("no transcript"), "{err}");
        let long = "[[turn]]\nsilence_s = 1000\n";
        let err = Scenario::from_text(Path::new("s.toml"), long).unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        let spoken = "[[turn]]\nsay = \"hi\"\n[turn.expect]\nno_input_prompts = 1\n";
        let err = Scenario::from_text(Path::new("s.toml"), spoken).unwrap_err();
        assert!(err.reason.contains("only a silent turn"), "{err}");
    }

    #[test]
    fn silences_are_checked_against_the_no_input_turns_and_spoken_turns_against_the_rest() {
        let text = "[[turn]]\nsay = \"where is my parcel\"\n[[turn]]\nsilence_s = 20\n[turn.expect]\nno_input_prompts = 2\nreason = \"no_input\"\n";
        let s = Scenario::from_text(Path::new("s.toml"), text).expect("valid");
        let silent = |reply: &str, escalation: Option<crate::dialog::Escalation>| TurnReport {
            input: TurnInput::NoInput,
            transcript: String::new(),
            reply: reply.into(),
            escalation,
            ..heard("", "none", None)
        };
        let handover = crate::dialog::Escalation {
            reason: crate::dialog::EscalationReason::NoInput,
            detail: String::new(),
            skill: "general".into(),
            turn: 3,
        };
        let good = call(vec![
            heard("where is my parcel", "order_status", None),
            silent("Are you still there?", None),
            silent("Putting you through.", Some(handover.clone())),
        ]);
        assert!(check(&s, &good).is_empty(), "{:?}", check(&s, &good));
        let one = call(vec![
            heard("where is my parcel", "order_status", None),
            silent("Putting you through.", Some(handover)),
        ]);
        let failures = check(&s, &one);
        assert!(
            failures.iter().any(|f| f.contains("spoke up 1 time")),
            "{failures:?}"
        );
        // A prompt for silence where the scenario has the caller speak is a failure too.
        let early = call(vec![
            silent("Are you still there?", None),
            heard("where is my parcel", "order_status", None),
        ]);
        let failures = check(&s, &early);
        assert!(
            failures.iter().any(|f| f.contains("before it")),
            "{failures:?}"
        );
    }

    #[test]
    fn unknown_reason_is_rejected() {
        let text = "[[turn]]\nsay = \"hi\"\n[turn.expect]\nreason = \"angry\"\n";
        let err = Scenario::from_text(Path::new("s.toml"), text).unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.reason.contains("explicit_request"));
    }

    #[test]
    fn unknown_expectation_key_is_rejected() {
        let text = "[[turn]]\nsay = \"hi\"\n[turn.expect]\nintnet = \"x\"\n";
        let err = Scenario::from_text(Path::new("s.toml"), text).unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
    }

    fn heard(
        text: &str,
        intent: &str,
        escalation: Option<crate::dialog::Escalation>,
    ) -> TurnReport {
        TurnReport {
            input: Default::default(),
            index: 1,
            start: std::time::Duration::ZERO,
            end: std::time::Duration::from_secs(1),
            end_reason: None,
            transcript: text.into(),
            asr_confidence: 0.9,
            normalized: text.to_lowercase(),
            intent: intent.into(),
            intent_confidence: 0.9,
            intent_evidence: vec![],
            slots: BTreeMap::from([("order_number".to_string(), "12345".to_string())]),
            reply: "Thanks. I have noted order number 1 2 3 4 5.".into(),
            escalation,
            ends_call: false,
            emotion: None,
            timings: Default::default(),
            fault: None,
            turn_end: None,
        }
    }

    fn call(turns: Vec<TurnReport>) -> CallReport {
        CallReport {
            flow: "support".into(),
            greeting: "Hello".into(),
            turns,
            outcome: crate::report::CallOutcome::CallerHungUp,
            escalation: None,
            caller_audio: std::time::Duration::from_secs(5),
            unprocessed_after_end: std::time::Duration::ZERO,
            noise_ignored: 0,
            after_handover: Vec::new(),
        }
    }

    #[test]
    fn check_passes_when_everything_holds() {
        let text = "[[turn]]\nsay = \"x\"\n[turn.expect]\ntranscript_contains = [\"Order\"]\nintent = \"order_status\"\nescalates = false\nreply_contains = [\"1 2 3 4 5\"]\nslots = { order_number = \"12345\" }\n";
        let s = Scenario::from_text(Path::new("s.toml"), text).expect("valid");
        let failures = check(
            &s,
            &call(vec![heard("Where is my order?", "order_status", None)]),
        );
        assert!(failures.is_empty(), "{failures:?}");
    }

    #[test]
    fn check_names_each_broken_expectation() {
        let text = "[[turn]]\nsay = \"x\"\n[turn.expect]\ntranscript_contains = [\"password\"]\nintent = \"password_reset\"\nescalates = true\nreason = \"explicit_request\"\nslots = { order_number = \"999\" }\n\n[[turn]]\nsay = \"y\"\n";
        let s = Scenario::from_text(Path::new("s.toml"), text).expect("valid");
        let failures = check(
            &s,
            &call(vec![heard("Where is my order?", "order_status", None)]),
        );
        let joined = failures.join("\n");
        assert_eq!(failures.len(), 6, "{joined}");
        assert!(joined.contains("expected 2 caller turns, the bot handled 1"));
        assert!(joined.contains("does not contain \"password\""));
        assert!(joined.contains("intent is order_status"));
        assert!(joined.contains("expected an escalation"));
        assert!(joined.contains("reason is none, expected explicit_request"));
        assert!(joined.contains("slot order_number is \"12345\", expected 999"));
    }

    #[test]
    fn empty_scenario_is_rejected() {
        let err = Scenario::from_text(Path::new("s.toml"), "description = \"x\"\nturn = []\n")
            .unwrap_err();
        assert!(err.reason.contains("at least one"), "{err}");
    }
}
