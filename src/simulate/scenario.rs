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
//! `slots` (a table of slot = value).

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
use crate::report::{CallReport, TurnReport};
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
}

/// One caller turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    /// Text to speak with espeak-ng.
    pub say: Option<String>,
    /// A recording, relative to the scenario file.
    pub wav: Option<PathBuf>,
    #[serde(default)]
    pub expect: Expect,
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
            match (&turn.say, &turn.wav) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::invalid(
                        path,
                        text,
                        &field,
                        "give either `say` or `wav`, not both",
                    ))
                }
                (None, None) => {
                    return Err(ConfigError::invalid(
                        path,
                        text,
                        &field,
                        "needs `say` (text) or `wav` (a recording)",
                    ))
                }
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

/// Compares heard turns with the scenario's expectations.
pub fn check(scenario: &Scenario, report: &CallReport) -> Vec<String> {
    let mut failures = Vec::new();
    let heard: Vec<&TurnReport> = report.turns.iter().collect();
    // After an escalation or a goodbye the bot hears no more turns; expectations beyond that
    // point can only be met if they expect nothing from the bot.
    if heard.len() != scenario.turns.len() {
        let transcripts: Vec<String> = heard
            .iter()
            .map(|t| format!("\"{}\"", t.transcript))
            .collect();
        failures.push(format!(
            "expected {} caller turns, the bot handled {}: [{}]",
            scenario.turns.len(),
            heard.len(),
            transcripts.join(", ")
        ));
    }
    for (i, (expected, turn)) in scenario.turns.iter().zip(&heard).enumerate() {
        let n = i + 1;
        let e = &expected.expect;
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
            let got = turn
                .escalation
                .as_ref()
                .and_then(|x| serde_json::to_value(x.reason).ok())
                .and_then(|v| v.as_str().map(str::to_string));
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
    }
    failures
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
        assert!(err.reason.contains("not both"), "{err}");
        // The turn's `[[turn]]` header.
        assert_eq!(err.line, Some(1));
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
