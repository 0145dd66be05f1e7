//! The recognition evaluation set: what is said, by which voice, over which line.
//!
//! # Where the utterances come from
//!
//! - **Caller turns** of the intent evaluation (`tests/eval/utterances.toml`, tuning part, and
//!   `tests/eval/heldout.toml`, held out: written by someone who had not seen the intents),
//!   without the rows that spell recognition slips on purpose (group `asr`). They keep their
//!   intent and escalation labels, so the dialog can be scored on what was recognised.
//! - **Spoken numbers**: order, account and reference numbers of 4 to 6 digits, said digit by
//!   digit with pauses, sometimes with "double", drawn from a seeded generator (one seed per
//!   split, so the held-out numbers are not the tuning ones).
//! - **Real human speech** from packages (`scripts/fetch-eval-speech.py` makes the clips and
//!   their `clips.tsv`), when a directory is given.
//!
//! Synthetic utterances are spoken by several espeak-ng voices (accents, pitch, pace) and by
//! the neural voice at two paces, dealt round robin; each utterance is then sent over one of
//! the [`CONDITIONS`], dealt so that voices and conditions do not move together.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use super::channel::{transmit, Condition, CONDITIONS};
use crate::audio::resample::resample_all;
use crate::audio::wav::read_wav;
use crate::audio::SPEECH_RATE;
use crate::speech::tts::{EspeakSynthesizer, SpeechSynthesizer, TtsConfig};
use crate::speech::voice::{Voice, VoiceStyle};

/// Which part of the set an item belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// May be looked at while tuning.
    Tune,
    /// Never tuned on.
    Heldout,
}

/// What kind of speech an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Synthetic,
    Human,
}

/// Dialog labels of a caller turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pub intent: String,
    pub escalation: String,
}

/// One utterance, ready to recognise.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub reference: String,
    pub split: Split,
    pub kind: Kind,
    /// The voice (synthetic) or speaker (human).
    pub voice: String,
    pub condition: &'static str,
    /// 16 kHz audio after the line.
    pub audio: Vec<f32>,
    /// The digit string said, for spoken numbers.
    pub digits: Option<String>,
    pub labels: Option<Labels>,
}

/// Why the set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("synthesis failed for {id}: {reason}")]
    Speech { id: String, reason: String },
    #[error("line simulation failed for {id}: {reason}")]
    Line { id: String, reason: String },
}

#[derive(Deserialize)]
struct TurnFile {
    utterance: Vec<TurnRow>,
}

#[derive(Deserialize)]
struct TurnRow {
    text: String,
    intent: String,
    escalation: String,
    group: String,
}

/// One synthetic voice.
#[derive(Debug, Clone)]
enum Speaker {
    Espeak {
        voice: &'static str,
        wpm: u32,
        pitch: u32,
    },
    Neural {
        speed: f32,
    },
}

impl Speaker {
    fn name(&self) -> String {
        match self {
            Speaker::Espeak { voice, wpm, pitch } => format!("espeak {voice} {wpm}wpm p{pitch}"),
            Speaker::Neural { speed } => format!("neural x{speed}"),
        }
    }
}

/// The voices, dealt round robin.
const SPEAKERS: &[Speaker] = &[
    Speaker::Espeak {
        voice: "en-us",
        wpm: 165,
        pitch: 50,
    },
    Speaker::Neural { speed: 1.0 },
    Speaker::Espeak {
        voice: "en-gb",
        wpm: 145,
        pitch: 40,
    },
    Speaker::Espeak {
        voice: "en-gb-scotland",
        wpm: 170,
        pitch: 60,
    },
    Speaker::Espeak {
        voice: "en-us+f3",
        wpm: 155,
        pitch: 70,
    },
    Speaker::Neural { speed: 1.2 },
    Speaker::Espeak {
        voice: "en-gb-x-rp",
        wpm: 185,
        pitch: 35,
    },
    Speaker::Espeak {
        voice: "en-029",
        wpm: 150,
        pitch: 55,
    },
    Speaker::Espeak {
        voice: "en-gb-x-gbclan+m3",
        wpm: 175,
        pitch: 45,
    },
    Speaker::Espeak {
        voice: "en-gb-x-gbcwmd+f2",
        wpm: 140,
        pitch: 65,
    },
];

/// Numbers per split.
const NUMBERS_PER_SPLIT: usize = 45;

/// What to build.
pub struct SetSpec<'a> {
    /// The repository root (for `tests/eval/`).
    pub root: &'a Path,
    /// The gateway's voice settings (the neural voice's files).
    pub tts: &'a TtsConfig,
    /// Human clips (`clips.tsv` and WAVs), if any.
    pub human: Option<&'a Path>,
    /// At most this many synthetic items per split (0: all).
    pub limit: usize,
}

/// Builds the set.
pub fn build(spec: &SetSpec<'_>) -> Result<Vec<Item>, SetError> {
    let voice = Voice::load(spec.tts);
    let neural = voice.engine() == "neural";
    if !neural {
        tracing::warn!("the neural voice is missing; its share of the set is spoken by espeak-ng");
    }
    let mut items = Vec::new();
    for (split, file, seed) in [
        (Split::Tune, "utterances.toml", 1u64),
        (Split::Heldout, "heldout.toml", 2u64),
    ] {
        let mut texts = caller_turns(&spec.root.join("tests/eval").join(file))?;
        texts.extend(numbers(seed, NUMBERS_PER_SPLIT));
        if spec.limit > 0 {
            texts.truncate(spec.limit);
        }
        for (i, t) in texts.into_iter().enumerate() {
            let id = format!("{}-{i:03}", split_name(split));
            let speaker = &SPEAKERS[i % SPEAKERS.len()];
            let condition = &CONDITIONS[(i + i / SPEAKERS.len()) % CONDITIONS.len()];
            let (audio, rate) =
                speak(&voice, neural, speaker, &t.spoken, spec.tts).map_err(|reason| {
                    SetError::Speech {
                        id: id.clone(),
                        reason,
                    }
                })?;
            let line =
                transmit(&audio, rate, condition, seed * 100_000 + i as u64).map_err(|e| {
                    SetError::Line {
                        id: id.clone(),
                        reason: e.to_string(),
                    }
                })?;
            items.push(Item {
                id,
                reference: t.reference,
                split,
                kind: Kind::Synthetic,
                voice: speaker.name(),
                condition: condition.name,
                audio: line,
                digits: t.digits,
                labels: t.labels,
            });
        }
    }
    if let Some(dir) = spec.human {
        // Real voices over a plain G.711 line, at the level they were recorded at.
        let line = CONDITIONS
            .iter()
            .find(|c| c.name == "g711u")
            .unwrap_or(&CONDITIONS[0]);
        items.extend(human_clips(dir, line)?);
    }
    Ok(items)
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Tune => "tune",
        Split::Heldout => "heldout",
    }
}

/// A text to say: what the voice is given, what counts as right.
struct Text {
    spoken: String,
    reference: String,
    digits: Option<String>,
    labels: Option<Labels>,
}

fn caller_turns(path: &Path) -> Result<Vec<Text>, SetError> {
    let bad = |reason: String| SetError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: TurnFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    Ok(file
        .utterance
        .into_iter()
        .filter(|r| r.group != "asr")
        .map(|r| Text {
            spoken: r.text.clone(),
            reference: r.text,
            digits: None,
            labels: Some(Labels {
                intent: r.intent,
                escalation: r.escalation,
            }),
        })
        .collect())
}

const DIGIT_WORDS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// Spoken numbers: `count` sentences from `seed`.
fn numbers(seed: u64, count: usize) -> Vec<Text> {
    const FRAMES: &[&str] = &[
        "My order number is {}.",
        "The order number is {}.",
        "It's {}.",
        "Yes, my account number is {}.",
        "The reference on the letter is {}.",
        "I think it was {}.",
        "Order {}, please.",
        "My customer number, {}.",
        "The invoice number is {}.",
        "Sure, it's {}.",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let len = rng.random_range(4..=6);
            let digits: Vec<usize> = (0..len)
                .map(|k| {
                    // Now and then a doubled digit, so "double" gets said.
                    if k > 0 && rng.random::<f32>() < 0.15 {
                        usize::MAX
                    } else {
                        rng.random_range(0..10)
                    }
                })
                .collect();
            let digits: Vec<usize> = digits
                .iter()
                .scan(0usize, |last, &d| {
                    let d = if d == usize::MAX { *last } else { d };
                    *last = d;
                    Some(d)
                })
                .collect();
            let mut words: Vec<String> = Vec::new();
            let mut k = 0;
            while k < digits.len() {
                let w = DIGIT_WORDS[digits[k]];
                if k + 1 < digits.len() && digits[k + 1] == digits[k] && i % 2 == 0 {
                    words.push(format!("double {w}"));
                    k += 2;
                } else {
                    words.push(w.to_string());
                    k += 1;
                }
            }
            // Commas: the pauses callers make between digits.
            let said = words.join(", ");
            let frame = FRAMES[i % FRAMES.len()];
            let sentence = frame.replace("{}", &said);
            Text {
                spoken: sentence.clone(),
                reference: sentence,
                digits: Some(digits.iter().map(|d| char::from(b'0' + *d as u8)).collect()),
                labels: None,
            }
        })
        .collect()
}

fn speak(
    voice: &Voice,
    neural: bool,
    speaker: &Speaker,
    text: &str,
    tts: &TtsConfig,
) -> Result<(Vec<f32>, u32), String> {
    let espeak = |v: &str, wpm: u32, pitch: u32| {
        let synth = EspeakSynthesizer::new(TtsConfig {
            voice: v.to_string(),
            rate_wpm: wpm,
            pitch,
            peak_dbfs: -6.0,
            ..tts.clone()
        });
        synth
            .synthesize(text)
            .map(|s| (s.audio.samples, s.audio.rate))
            .map_err(|e| e.to_string())
    };
    match speaker {
        Speaker::Espeak { voice, wpm, pitch } => espeak(voice, *wpm, *pitch),
        Speaker::Neural { speed } if neural => {
            let style = VoiceStyle {
                speed: *speed,
                ..VoiceStyle::default()
            };
            voice
                .synthesize_in(text, &style)
                .map(|s| (s.audio.samples, s.audio.rate))
                .map_err(|e| e.to_string())
        }
        Speaker::Neural { .. } => espeak("en-us", 160, 50),
    }
}

/// The human clips listed in `dir/clips.tsv` (id, split, speaker, reference), over `line`.
fn human_clips(dir: &Path, line: &'static Condition) -> Result<Vec<Item>, SetError> {
    let list = dir.join("clips.tsv");
    let bad = |path: &Path, reason: String| SetError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(&list).map_err(|e| bad(&list, e.to_string()))?;
    let mut items = Vec::new();
    for (n, row) in text.lines().enumerate() {
        let fields: Vec<&str> = row.split('\t').collect();
        if n == 0 && fields.first() == Some(&"id") {
            continue; // header
        }
        let [id, split, speaker, reference] = fields[..] else {
            return Err(bad(
                &list,
                format!("line {}: expected 4 tab-separated fields", n + 1),
            ));
        };
        let split = match split {
            "tune" => Split::Tune,
            "heldout" => Split::Heldout,
            other => {
                return Err(bad(
                    &list,
                    format!(
                        "line {}: split {other:?} is neither tune nor heldout",
                        n + 1
                    ),
                ))
            }
        };
        let path = dir.join(format!("{id}.wav"));
        let wav = read_wav(&path).map_err(|e| bad(&path, e.to_string()))?;
        let audio = transmit(&wav.audio.samples, wav.audio.rate, line, n as u64)
            .map_err(|e| bad(&path, e.to_string()))?;
        items.push(Item {
            id: format!("human-{id}"),
            reference: reference.to_string(),
            split,
            kind: Kind::Human,
            voice: speaker.to_string(),
            condition: line.name,
            audio,
            digits: None,
            labels: None,
        });
    }
    Ok(items)
}

/// 16 kHz audio of a WAV file (for ad-hoc runs).
pub fn wav_16k(path: &Path) -> Result<Vec<f32>, SetError> {
    let bad = |reason: String| SetError::File {
        path: path.to_path_buf(),
        reason,
    };
    let wav = read_wav(path).map_err(|e| bad(e.to_string()))?;
    resample_all(&wav.audio.samples, wav.audio.rate, SPEECH_RATE).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asr_eval::score::digits;

    #[test]
    fn numbers_say_their_digits() {
        let texts = numbers(1, 40);
        assert_eq!(texts.len(), 40);
        for t in &texts {
            let d = t.digits.as_deref().unwrap();
            assert!((4..=6).contains(&d.len()), "{d}");
            assert_eq!(digits(&t.reference), d, "{}", t.reference);
        }
        assert!(texts.iter().any(|t| t.spoken.contains("double")));
        // The held-out seed gives other numbers.
        let other = numbers(2, 40);
        assert_ne!(texts[0].digits, other[0].digits);
    }

    #[test]
    fn caller_turns_skip_spelled_slips() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let turns = caller_turns(&root.join("tests/eval/utterances.toml")).unwrap();
        assert!(turns.len() > 100);
        assert!(turns.iter().all(|t| t.labels.is_some()));
        let held = caller_turns(&root.join("tests/eval/heldout.toml")).unwrap();
        assert!(turns.len() + held.len() + 2 * NUMBERS_PER_SPLIT >= 300);
    }
}
