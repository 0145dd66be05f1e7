//! Text to speech behind a trait; the embedded default runs the `espeak-ng` program.
//!
//! espeak-ng is GPL-3.0, so the gateway never links `libespeak-ng`: it starts the `espeak-ng`
//! program as a separate process per synthesis (text on stdin, WAV on stdout), which keeps the
//! gateway's own MIT/Apache licence intact. A neural voice can replace it behind
//! [`SpeechSynthesizer`] without touching the pipeline.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::voice::VoiceStyle;
use crate::audio::wav::MonoAudio;

/// Synthesised speech and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Speech {
    /// The audio at the engine's native rate.
    pub audio: MonoAudio,
    /// Wall time spent synthesising.
    pub elapsed: Duration,
}

/// Why synthesis failed.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("cannot run `{program}`: {reason} (install it: apt-get install espeak-ng)")]
    Spawn { program: String, reason: String },
    #[error("`{program}` failed: {reason}")]
    Failed { program: String, reason: String },
    #[error("`{program}` produced no usable audio: {reason}")]
    BadOutput { program: String, reason: String },
}

/// Anything that turns text into speech.
pub trait SpeechSynthesizer: Send + Sync {
    /// Synthesises `text` in `style` (a flow's engine, pace and level; an engine ignores the
    /// choice of engine). Blocking; run it on the inference pool.
    fn synthesize_in(&self, text: &str, style: &VoiceStyle) -> Result<Speech, TtsError>;

    /// Which engine speaks in `style` ("neural", "espeak-ng"), for logs and the admin API;
    /// "custom" for a synthesizer that is neither (a test's).
    fn engine_for(&self, _style: &VoiceStyle) -> &'static str {
        "custom"
    }

    /// Synthesises `text` in the gateway's configured voice.
    fn synthesize(&self, text: &str) -> Result<Speech, TtsError> {
        self.synthesize_in(text, &VoiceStyle::default())
    }

    /// The pieces `text` is best synthesised in, in order: playout starts as soon as the first
    /// is ready, and a barge-in spares the rest. Sentences unless the voice knows better.
    fn units(&self, text: &str) -> Vec<String> {
        split_sentences(text)
    }
}

/// `text` cut after each `.`, `!`, `?` or `…` (and closing quotes or brackets) that is followed
/// by a space and a word that does not start in lower case, except after a title such as
/// "Dr." or a single capital ("J. Smith"). Empty pieces are dropped; nothing is lost.
pub fn split_sentences(text: &str) -> Vec<String> {
    const TITLES: &[&str] = &[
        "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "mt", "no", "vs", "etc", "e.g", "i.e",
    ];
    let mut units = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (i, &(at, c)) in chars.iter().enumerate() {
        if !matches!(c, '.' | '!' | '?' | '…') {
            continue;
        }
        // Closing quotes or brackets stay with the sentence.
        let mut j = i + 1;
        while chars
            .get(j)
            .is_some_and(|&(_, c)| matches!(c, '"' | '\'' | '”' | '’' | ')' | ']'))
        {
            j += 1;
        }
        let Some(&(space_at, space)) = chars.get(j) else {
            continue;
        };
        if !space.is_whitespace() {
            continue;
        }
        let next = chars[j..].iter().find(|(_, c)| !c.is_whitespace());
        if next.is_none_or(|&(_, c)| c.is_lowercase()) {
            continue;
        }
        if c == '.' {
            let word = text[start..at]
                .rsplit(char::is_whitespace)
                .next()
                .unwrap_or("")
                .trim_start_matches(['(', '"', '“', '\'']);
            let single_capital = word.chars().count() == 1 && word.chars().all(char::is_uppercase);
            if single_capital || TITLES.contains(&word.to_lowercase().as_str()) {
                continue;
            }
        }
        let piece = text[start..space_at].trim();
        if !piece.is_empty() {
            units.push(piece.to_string());
        }
        start = space_at;
    }
    let piece = text[start..].trim();
    if !piece.is_empty() {
        units.push(piece.to_string());
    }
    units
}

/// Voice settings (`[tts]` in the gateway configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtsConfig {
    /// Which engine speaks: the neural voice (default; espeak-ng when its files are missing)
    /// or espeak-ng.
    pub engine: super::voice::TtsEngine,
    /// The neural voice's files and settings (`[tts.neural]`).
    pub neural: super::neural::hibari::HibariConfig,
    /// The espeak-ng program to run.
    pub program: PathBuf,
    /// espeak-ng voice name (`espeak-ng --voices=en` lists them).
    pub voice: String,
    /// Speaking rate in words per minute.
    pub rate_wpm: u32,
    /// Pitch, 0-99.
    pub pitch: u32,
    /// Peak level the output is normalised to, in dBFS (G.711 clips above 0).
    pub peak_dbfs: f32,
}

impl Default for TtsConfig {
    fn default() -> Self {
        TtsConfig {
            engine: super::voice::TtsEngine::default(),
            neural: super::neural::hibari::HibariConfig::default(),
            program: PathBuf::from("espeak-ng"),
            voice: "en-us".into(),
            rate_wpm: 160,
            pitch: 45,
            peak_dbfs: -3.0,
        }
    }
}

/// espeak-ng run as a separate process.
#[derive(Debug, Clone)]
pub struct EspeakSynthesizer {
    config: TtsConfig,
}

impl EspeakSynthesizer {
    /// A synthesiser with these settings.
    pub fn new(config: TtsConfig) -> Self {
        EspeakSynthesizer { config }
    }

    fn program(&self) -> String {
        self.config.program.display().to_string()
    }
}

impl SpeechSynthesizer for EspeakSynthesizer {
    fn engine_for(&self, _style: &VoiceStyle) -> &'static str {
        "espeak-ng"
    }

    /// `style.speed` scales `rate_wpm` (within espeak-ng's 80..=450 words per minute).
    fn synthesize_in(&self, text: &str, style: &VoiceStyle) -> Result<Speech, TtsError> {
        let started = Instant::now();
        let program = self.program();
        let rate = (self.config.rate_wpm as f32 * style.speed).round();
        let rate = if rate.is_finite() {
            rate.clamp(80.0, 450.0) as u32
        } else {
            self.config.rate_wpm
        };
        let mut child = Command::new(&self.config.program)
            .arg("-v")
            .arg(&self.config.voice)
            .arg("-s")
            .arg(rate.to_string())
            .arg("-p")
            .arg(self.config.pitch.min(99).to_string())
            .arg("--stdout")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| TtsError::Spawn {
                program: program.clone(),
                reason: e.to_string(),
            })?;
        // Text goes through stdin so nothing in it can be taken for an option.
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| TtsError::Failed {
                    program: program.clone(),
                    reason: format!("writing text: {e}"),
                })?;
        }
        let mut wav = Vec::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout.read_to_end(&mut wav).map_err(|e| TtsError::Failed {
                program: program.clone(),
                reason: format!("reading audio: {e}"),
            })?;
        }
        let output = child.wait_with_output().map_err(|e| TtsError::Failed {
            program: program.clone(),
            reason: e.to_string(),
        })?;
        if !output.status.success() {
            return Err(TtsError::Failed {
                program,
                reason: format!(
                    "{}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        let mut audio = decode_streamed_wav(&wav).map_err(|reason| TtsError::BadOutput {
            program: program.clone(),
            reason,
        })?;
        normalize_peak(&mut audio.samples, self.config.peak_dbfs);
        Ok(Speech {
            audio,
            elapsed: started.elapsed(),
        })
    }
}

/// Decodes a 16-bit WAV written to a pipe. Such a writer cannot seek back to fill in the sizes,
/// so the header carries placeholder lengths: samples are read until the bytes end.
pub fn decode_streamed_wav(bytes: &[u8]) -> Result<MonoAudio, String> {
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let spec = reader.spec();
    if spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
        return Err(format!(
            "expected 16-bit PCM, got {}-bit {:?}",
            spec.bits_per_sample, spec.sample_format
        ));
    }
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<f32> = reader
        .into_samples::<i16>()
        .map_while(Result::ok)
        .map(|s| f32::from(s) / 32768.0)
        .collect();
    Ok(MonoAudio {
        samples: crate::audio::wav::mix_to_mono(&interleaved, channels),
        rate: spec.sample_rate,
    })
}

/// Scales `samples` so the peak sits at `peak_dbfs` (quiet engines become audible, loud ones
/// stop clipping); silence stays silence.
pub fn normalize_peak(samples: &mut [f32], peak_dbfs: f32) {
    let peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    if peak < 1e-4 {
        return;
    }
    let target = 10f32.powf(peak_dbfs.min(0.0) / 20.0);
    let gain = target / peak;
    for s in samples {
        *s *= gain;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_where_a_voice_would_pause_and_nowhere_else() {
        let cases: &[(&str, &[&str])] = &[
            ("Hello.", &["Hello."]),
            (
                "Hello, and thank you for calling. How can I help you today? Press 0!",
                &[
                    "Hello, and thank you for calling.",
                    "How can I help you today?",
                    "Press 0!",
                ],
            ),
            (
                "Dr. Smith will call. Thanks.",
                &["Dr. Smith will call.", "Thanks."],
            ),
            ("Ask J. Smith. He knows.", &["Ask J. Smith.", "He knows."]),
            (
                "It costs 4.50 dollars. ok then",
                &["It costs 4.50 dollars. ok then"],
            ),
            (
                "He said \"stop.\" Then left.",
                &["He said \"stop.\"", "Then left."],
            ),
            ("Wait... What?", &["Wait...", "What?"]),
            ("  ", &[]),
            ("no stop at the end", &["no stop at the end"]),
        ];
        for (text, want) in cases {
            assert_eq!(split_sentences(text), *want, "{text}");
        }
    }

    #[test]
    fn streamed_header_with_placeholder_sizes_is_read() {
        // RIFF header as espeak-ng writes it to a pipe: sizes 0x7ffff024 / 0x7ffff000.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"RIFF");
        bytes.extend_from_slice(&0x7fff_f024u32.to_le_bytes());
        bytes.extend_from_slice(b"WAVEfmt ");
        bytes.extend_from_slice(&16u32.to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
        bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
        bytes.extend_from_slice(&22050u32.to_le_bytes());
        bytes.extend_from_slice(&44100u32.to_le_bytes());
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(&16u16.to_le_bytes());
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&0x7fff_f000u32.to_le_bytes());
        for s in [0i16, 16384, -16384, 0] {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        let audio = decode_streamed_wav(&bytes).expect("decodes");
        assert_eq!(audio.rate, 22050);
        assert_eq!(audio.samples, vec![0.0, 0.5, -0.5, 0.0]);
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(decode_streamed_wav(b"not audio").is_err());
    }

    #[test]
    fn peak_normalisation() {
        let mut s = vec![0.0, 0.05, -0.1];
        normalize_peak(&mut s, -6.0);
        assert!((s[2].abs() - 0.501).abs() < 0.01, "{s:?}");
        let mut silent = vec![0.0; 4];
        normalize_peak(&mut silent, -3.0);
        assert_eq!(silent, vec![0.0; 4]);
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let tts = EspeakSynthesizer::new(TtsConfig {
            program: PathBuf::from("/nonexistent/espeak-ng"),
            ..TtsConfig::default()
        });
        let err = tts.synthesize("hello").unwrap_err();
        assert!(
            err.to_string().contains("apt-get install espeak-ng"),
            "{err}"
        );
    }

    #[test]
    fn espeak_speaks() {
        // espeak-ng is a test prerequisite installed by scripts/test.sh.
        let tts = EspeakSynthesizer::new(TtsConfig::default());
        let speech = tts
            .synthesize("Hello, how can I help you today?")
            .expect("espeak-ng runs");
        assert_eq!(speech.audio.rate, 22050);
        let secs = speech.audio.samples.len() as f32 / 22050.0;
        assert!((1.0..5.0).contains(&secs), "{secs} s");
        let peak = speech
            .audio
            .samples
            .iter()
            .fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((peak - 10f32.powf(-3.0 / 20.0)).abs() < 0.01);
    }
}
