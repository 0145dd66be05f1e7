//! `voicebot bench-asr`: per-utterance speech recognition latency and real-time factor, with the
//! full 30 s encoder window and with the adaptive window, so speed work has a baseline.
//!
//! Utterances are typical support-call phrases spoken by espeak-ng through a telephone band, or
//! WAV files given on the command line. Each is transcribed once to warm up, then `repeat` times.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::audio::resample::resample_all;
use crate::audio::wav::read_wav;
use crate::audio::SPEECH_RATE;
use crate::speech::asr::{AsrConfig, SpeechRecognizer, WhisperRecognizer};
use crate::speech::tts::{EspeakSynthesizer, SpeechSynthesizer, TtsConfig};

/// Phrases used when no WAV files are given.
pub const PHRASES: &[&str] = &[
    "Where is my order?",
    "I forgot my password.",
    "What are your opening hours?",
    "I want to speak to a person.",
    "My order number is one two three four five.",
    "I would like to cancel my subscription.",
    "Are you open on Saturday?",
    "I can't log into my account.",
];

/// One utterance's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub label: String,
    pub audio_ms: u64,
    pub full_ms: Vec<u64>,
    pub adaptive_ms: Vec<u64>,
    pub full_text: String,
    pub adaptive_text: String,
    pub adaptive_retried: bool,
}

/// Loads bench audio: the given WAVs, or the built-in phrases.
pub fn bench_audio(wavs: &[PathBuf]) -> Result<Vec<(String, Vec<f32>)>, String> {
    if wavs.is_empty() {
        let tts = EspeakSynthesizer::new(TtsConfig {
            rate_wpm: 150,
            peak_dbfs: -6.0,
            ..TtsConfig::default()
        });
        PHRASES
            .iter()
            .map(|p| {
                let speech = tts.synthesize(p).map_err(|e| e.to_string())?;
                let narrow = resample_all(&speech.audio.samples, speech.audio.rate, 8000)
                    .map_err(|e| e.to_string())?;
                let wide = resample_all(&narrow, 8000, SPEECH_RATE).map_err(|e| e.to_string())?;
                Ok((p.to_string(), wide))
            })
            .collect()
    } else {
        wavs.iter()
            .map(|w| {
                let wav = read_wav(w).map_err(|e| e.to_string())?;
                let samples = resample_all(&wav.audio.samples, wav.audio.rate, SPEECH_RATE)
                    .map_err(|e| e.to_string())?;
                Ok((w.display().to_string(), samples))
            })
            .collect()
    }
}

/// Runs the benchmark.
pub fn run(
    config: &AsrConfig,
    audio: &[(String, Vec<f32>)],
    repeat: usize,
) -> Result<Vec<BenchRow>, String> {
    let full = WhisperRecognizer::load(&AsrConfig {
        adaptive_audio_ctx: false,
        ..config.clone()
    })
    .map_err(|e| e.to_string())?;
    let adaptive = WhisperRecognizer::load(&AsrConfig {
        adaptive_audio_ctx: true,
        ..config.clone()
    })
    .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (label, samples) in audio {
        let mut row = BenchRow {
            label: label.clone(),
            audio_ms: (samples.len() as u64 * 1000) / u64::from(SPEECH_RATE),
            full_ms: Vec::new(),
            adaptive_ms: Vec::new(),
            full_text: String::new(),
            adaptive_text: String::new(),
            adaptive_retried: false,
        };
        for (engine, times, text) in [
            (&full, &mut row.full_ms, &mut row.full_text),
            (&adaptive, &mut row.adaptive_ms, &mut row.adaptive_text),
        ] {
            let warm = engine.transcribe(samples).map_err(|e| e.to_string())?;
            *text = warm.text;
            for _ in 0..repeat.max(1) {
                let t = engine.transcribe(samples).map_err(|e| e.to_string())?;
                row.adaptive_retried |= t.retried_full_window;
                times.push(t.elapsed.as_millis() as u64);
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

fn median(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied().unwrap_or(0)
}

/// The printed report.
pub fn render(rows: &[BenchRow], threads: usize) -> String {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "utterance",
        "audio s",
        "full ms (median)",
        "full RTF",
        "adaptive ms (median)",
        "adaptive RTF",
        "adaptive transcript",
    ]);
    let (mut full_sum, mut adaptive_sum, mut audio_sum) = (0u64, 0u64, 0u64);
    for r in rows {
        let (f, a) = (median(&r.full_ms), median(&r.adaptive_ms));
        full_sum += f;
        adaptive_sum += a;
        audio_sum += r.audio_ms;
        let audio = r.audio_ms.max(1) as f64;
        table.add_row(vec![
            r.label.clone(),
            format!("{:.2}", r.audio_ms as f64 / 1000.0),
            f.to_string(),
            format!("{:.3}", f as f64 / audio),
            a.to_string(),
            format!("{:.3}", a as f64 / audio),
            format!(
                "{}{}",
                r.adaptive_text,
                if r.adaptive_retried {
                    " (retried full)"
                } else {
                    ""
                }
            ),
        ]);
    }
    let n = rows.len().max(1) as u64;
    format!(
        "{table}\nthreads {threads}; mean per utterance: full window {} ms (RTF {:.3}), adaptive window {} ms (RTF {:.3}), speed-up {:.1}x\n",
        full_sum / n,
        full_sum as f64 / audio_sum.max(1) as f64,
        adaptive_sum / n,
        adaptive_sum as f64 / audio_sum.max(1) as f64,
        full_sum as f64 / adaptive_sum.max(1) as f64
    )
}

/// Total of medians, for callers that want one number.
pub fn mean_latency(rows: &[BenchRow]) -> (Duration, Duration) {
    let n = rows.len().max(1) as u64;
    let f: u64 = rows.iter().map(|r| median(&r.full_ms)).sum();
    let a: u64 = rows.iter().map(|r| median(&r.adaptive_ms)).sum();
    (Duration::from_millis(f / n), Duration::from_millis(a / n))
}
