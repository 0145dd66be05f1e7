//! whisper.cpp (through `whisper-rs`) behind [`SpeechRecognizer`]: the optional engine.
//!
//! The model is loaded once and shared; whisper.cpp keeps per-inference buffers in a "state",
//! so the recogniser keeps a small stack of idle states and each concurrent transcription takes
//! one (the number of states therefore equals the peak concurrency, bounded by the inference
//! pool). Inference is blocking CPU work: callers run it on the inference pool, never on the
//! async runtime.
//!
//! Speed: the encoder normally runs over a 30 s window whatever the utterance length. With
//! `adaptive_audio_ctx` the encoder window is cut to the utterance plus a margin (about ten times
//! faster on short turns). A model trained on 30 s windows is less sure of itself on short ones,
//! so the short window is a fast path only: a transcript that loops, or whose confidence is below
//! `full_window_below`, is decoded again with the full window, and that result is kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

use super::{
    words_from_pieces, AsrConfig, AsrError, Expectation, Pass, Reusable, SpeechRecognizer,
    Transcript, Word,
};
use crate::audio::SPEECH_RATE;

/// whisper.cpp's minimum input; shorter utterances are padded with silence.
const MIN_SAMPLES: usize = SPEECH_RATE as usize * 11 / 10;
/// Encoder frames per second of audio (one frame per 20 ms).
const CTX_PER_SECOND: usize = 50;
/// Full encoder window (30 s).
const FULL_CTX: usize = 1500;

/// whisper.cpp recogniser: one shared model, one state per concurrent transcription.
pub struct WhisperRecognizer {
    ctx: Arc<WhisperContext>,
    idle_states: Reusable<WhisperState>,
    config: AsrConfig,
    model: PathBuf,
    threads: usize,
    eot: i32,
}

impl WhisperRecognizer {
    /// Loads the model named in `config`.
    pub fn load(config: &AsrConfig) -> Result<Self, AsrError> {
        whisper_rs::install_logging_hooks();
        let model = config.model_path();
        let path = &model;
        if !path.is_file() {
            return Err(AsrError::ModelMissing { path: path.clone() });
        }
        let params = WhisperContextParameters {
            flash_attn: config.flash_attn,
            ..WhisperContextParameters::default()
        };
        let ctx =
            WhisperContext::new_with_params(path, params).map_err(|e| AsrError::ModelLoad {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let eot = ctx.token_eot();
        let threads = config.resolved_threads();
        tracing::info!(engine = "whisper", model = %path.display(), threads, adaptive = config.adaptive_audio_ctx, "speech model loaded");
        Ok(WhisperRecognizer {
            ctx: Arc::new(ctx),
            idle_states: Reusable::new(Vec::new()),
            config: config.clone(),
            model,
            threads,
            eot,
        })
    }

    /// Model path.
    pub fn model_path(&self) -> &Path {
        &self.model
    }

    fn run(
        &self,
        state: &mut WhisperState,
        samples: &[f32],
        audio_ctx: usize,
    ) -> Result<Decoded, AsrError> {
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(self.threads as i32);
        params.set_language(Some(&self.config.language));
        params.set_translate(false);
        params.set_no_context(true);
        params.set_single_segment(true);
        params.set_no_timestamps(true);
        params.set_suppress_blank(true);
        params.set_suppress_nst(true);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        params.set_temperature(0.0);
        if !self.config.initial_prompt.is_empty() {
            params.set_initial_prompt(&self.config.initial_prompt);
        }
        // About 5 tokens a second is plausible speech; the cap also stops a runaway loop (the
        // full window once ran to 13.6 s on one clip without it).
        let seconds = samples.len() / SPEECH_RATE as usize + 1;
        params.set_max_tokens((seconds * 6 + 8) as i32);
        if audio_ctx < FULL_CTX {
            params.set_audio_ctx(audio_ctx as i32);
        }
        state
            .full(params, samples)
            .map_err(|e| AsrError::Inference(e.to_string()))?;
        let mut text = String::new();
        let mut pieces: Vec<(String, f32)> = Vec::new();
        let mut no_speech = 0.0f32;
        for segment in state.as_iter() {
            no_speech = no_speech.max(segment.no_speech_probability());
            text.push_str(
                &segment
                    .to_str_lossy()
                    .map_err(|e| AsrError::Inference(e.to_string()))?,
            );
            for i in 0..segment.n_tokens() {
                let Some(token) = segment.get_token(i) else {
                    continue;
                };
                if token.token_id() >= self.eot {
                    continue; // special and timestamp tokens
                }
                let p = token.token_probability().clamp(1e-6, 1.0);
                let piece = token
                    .to_str_lossy()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                pieces.push((piece, p.ln()));
            }
        }
        let sum: f64 = pieces.iter().map(|(_, l)| f64::from(*l)).sum();
        Ok(Decoded {
            text: text.trim().to_string(),
            confidence: Transcript::mean_probability(sum, pieces.len()),
            no_speech_prob: no_speech,
            words: words_from_pieces(pieces.iter().map(|(t, l)| (t.as_str(), *l))),
        })
    }
}

struct Decoded {
    text: String,
    confidence: f32,
    no_speech_prob: f32,
    words: Vec<Word>,
}

impl SpeechRecognizer for WhisperRecognizer {
    /// A partial pass uses the short window alone (never the full-window retry). whisper has
    /// no contextual bias here: the expectation is ignored.
    fn decode_expecting(
        &self,
        samples: &[f32],
        pass: Pass,
        _expect: Expectation,
    ) -> Result<Transcript, AsrError> {
        let started = Instant::now();
        let mut padded;
        let input = if samples.len() < MIN_SAMPLES {
            padded = samples.to_vec();
            padded.resize(MIN_SAMPLES, 0.0);
            &padded[..]
        } else {
            samples
        };
        let mut retried = false;
        let make = || {
            self.ctx
                .create_state()
                .map_err(|e| AsrError::Inference(format!("cannot create state: {e}")))
        };
        let result = self.idle_states.with(make, |state| {
            if self.config.adaptive_audio_ctx {
                let ctx = adaptive_ctx(input.len());
                if ctx < FULL_CTX {
                    let first = self.run(state, input, ctx)?;
                    let degenerate = looks_degenerate(&first.text, input.len());
                    let trusted = first.confidence >= self.config.full_window_below;
                    if pass == Pass::Partial || (!degenerate && trusted) {
                        return Ok(first);
                    }
                    tracing::debug!(
                        text = %first.text,
                        confidence = first.confidence,
                        degenerate,
                        "short encoder window not trusted; decoding again with the full window"
                    );
                    retried = true;
                }
            }
            self.run(state, input, FULL_CTX)
        })?;
        let decoded = result?;
        Ok(Transcript {
            text: decoded.text,
            confidence: decoded.confidence,
            no_speech_prob: decoded.no_speech_prob,
            elapsed: started.elapsed(),
            retried_full_window: retried,
            words: decoded.words,
        })
    }

    fn describe(&self) -> String {
        let name = self.model.file_name().map_or_else(
            || self.model.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        format!("whisper {name}")
    }
}

/// Encoder window for an utterance of `samples`: its length plus one second, rounded up to a
/// multiple of 64 frames, never above the full window.
pub fn adaptive_ctx(samples: usize) -> usize {
    let frames = samples * CTX_PER_SECOND / SPEECH_RATE as usize + CTX_PER_SECOND;
    frames.div_ceil(64).saturating_mul(64).min(FULL_CTX)
}

/// A transcript that repeats a word or phrase many times, or is far too long for the audio, is
/// the typical failure of a short encoder window.
pub fn looks_degenerate(text: &str, samples: usize) -> bool {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let seconds = samples as f32 / SPEECH_RATE as f32;
    if words.len() as f32 > 6.0 * seconds + 6.0 {
        return true;
    }
    // A short n-gram (1-2 words) three times in a row, or a phrase of 3+ words twice.
    for n in 1..=words.len() / 2 {
        let times = if n < 3 { 3 } else { 2 };
        if words.len() < n * times {
            continue;
        }
        for start in 0..=words.len() - n * times {
            let a = &words[start..start + n];
            let repeated = (1..times).all(|k| a == &words[start + k * n..start + (k + 1) * n]);
            if repeated {
                // "no no no" and digit strings like "1 1 1" can be genuine.
                let numeric = a.iter().all(|w| w.chars().all(|c| c.is_ascii_digit()));
                if !(n == 1 && (numeric || a[0] == "no")) {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_ctx_tracks_length() {
        // 2 s of audio -> 100 frames + 50 margin -> rounded to 192.
        assert_eq!(adaptive_ctx(32_000), 192);
        assert_eq!(adaptive_ctx(0), 64);
        assert_eq!(adaptive_ctx(16_000 * 40), FULL_CTX);
    }

    #[test]
    fn degenerate_transcripts_are_spotted() {
        assert!(looks_degenerate(
            "where is my order my order my order my order",
            32_000
        ));
        assert!(looks_degenerate("the the the the", 32_000));
        assert!(looks_degenerate(
            "where with my order. Where with my order.",
            32_000
        ));
        assert!(!looks_degenerate("my order, my order number is 5", 32_000));
        assert!(!looks_degenerate("Where is my order?", 32_000));
        assert!(!looks_degenerate("no, no, no, that's wrong", 32_000));
        assert!(!looks_degenerate("my number is 1 1 1 2", 32_000));
        let long = "word ".repeat(40);
        assert!(looks_degenerate(&long, 32_000));
    }

    #[test]
    fn missing_model_says_how_to_make_it() {
        let config = AsrConfig::whisper("/nonexistent/ggml.bin");
        let err = WhisperRecognizer::load(&config).err().expect("must fail");
        assert!(err.to_string().contains("models/provision.py"), "{err}");
    }
}
