//! Speech recognition: one interface, two engines, and what every engine shares.
//!
//! # Why this shape
//!
//! A caller's turn is recognised twice over: while the caller is still talking (partial
//! hypotheses for the live views and, later, the turn-end logic), and once at the end of the
//! turn (the final transcript the dialog acts on). [`SpeechRecognizer`] is therefore a
//! decoder of "the audio so far" with two modes ([`Pass::Partial`] is allowed to be cheaper),
//! and [`stream::RecognitionStream`] is the sans-IO part that decides, as audio is pushed,
//! when a partial pass is due and whether the call's compute budget allows it. Engines keep
//! no per-call state, so one loaded model serves every call from the inference pool.
//!
//! Engines:
//! - [`moonshine`] (default): Moonshine (Moonshine AI, MIT) through ONNX Runtime. It encodes
//!   only the audio it is given, so its cost grows with the utterance (tens of milliseconds for
//!   a typical turn) instead of whisper's fixed 30 s window.
//! - [`whisper`]: whisper.cpp through `whisper-rs`, kept for comparison and for languages
//!   Moonshine's English models do not cover.
//!
//! Every engine returns word-level confidences ([`Word`]), which [`vocabulary`] uses to
//! correct doubtful words towards the flow's own vocabulary.

pub mod moonshine;
pub mod stream;
pub mod telephone;
pub mod tokenizer;
pub mod vocabulary;
pub mod whisper;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use moonshine::MoonshineRecognizer;
pub use telephone::Conditioning;
pub use whisper::WhisperRecognizer;

/// One recognised word with the engine's confidence in it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Word {
    /// The word as written in the transcript (punctuation kept).
    pub text: String,
    /// Geometric mean of its tokens' probabilities, in [0, 1].
    pub confidence: f32,
}

/// A recognised utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Transcript {
    /// The text as recognised (trimmed).
    pub text: String,
    /// Geometric mean of the text tokens' probabilities, in [0, 1]; 0 for no text.
    pub confidence: f32,
    /// The engine's probability that the audio holds no speech (whisper only; 0 otherwise).
    pub no_speech_prob: f32,
    /// Wall time spent in recognition.
    #[serde(serialize_with = "crate::serde_util::ser_ms")]
    pub elapsed: Duration,
    /// Whether whisper's full 30 s encoder window had to be used after a short-window attempt.
    pub retried_full_window: bool,
    /// The words with their confidences, in order (empty when the engine gives none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<Word>,
}

impl Transcript {
    /// Geometric mean of per-token probabilities from the sum of their natural logs.
    pub fn mean_probability(logprob_sum: f64, tokens: usize) -> f32 {
        if tokens == 0 {
            0.0
        } else {
            (logprob_sum / tokens as f64).exp() as f32
        }
    }
}

/// Why recognition failed.
#[derive(Debug, thiserror::Error)]
pub enum AsrError {
    #[error("speech model {path}: file not found (run `python3 models/provision.py` to make it)")]
    ModelMissing { path: PathBuf },
    #[error("speech model {path}: cannot load: {reason}")]
    ModelLoad { path: PathBuf, reason: String },
    #[error("speech recognition failed: {0}")]
    Inference(String),
}

/// Which kind of pass a decode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// A hypothesis on the audio so far while the caller talks: may be cheaper (no retries,
    /// fewer tokens), and is replaced by the final pass.
    Partial,
    /// The end of the turn: the transcript the dialog acts on.
    Final,
}

/// What the dialog expects the caller to say next. An engine that can lean its decoding
/// towards it does so (Moonshine: [`moonshine`]'s contextual bias); the others ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expectation {
    /// Any speech (no bias).
    #[default]
    Anything,
    /// A number said digit by digit: the bot asked for an order, account or reference number.
    /// Digit words ("five", "oh", "double") win over the words they sound like on a bad line
    /// ("time", "Nero", "age"), which otherwise drown the number.
    Digits,
}

/// Anything that turns 16 kHz mono audio into text.
pub trait SpeechRecognizer: Send + Sync {
    /// Recognises `samples` (the utterance so far, or all of it), leaning towards what the
    /// dialog expects where the engine can (an engine without contextual bias ignores
    /// `expect`). Blocking: run it on the inference pool.
    fn decode_expecting(
        &self,
        samples: &[f32],
        pass: Pass,
        expect: Expectation,
    ) -> Result<Transcript, AsrError>;

    /// Recognises `samples` expecting anything.
    fn decode(&self, samples: &[f32], pass: Pass) -> Result<Transcript, AsrError> {
        self.decode_expecting(samples, pass, Expectation::Anything)
    }

    /// Transcribes one whole utterance (a [`Pass::Final`] decode).
    fn transcribe(&self, samples: &[f32]) -> Result<Transcript, AsrError> {
        self.decode(samples, Pass::Final)
    }

    /// Transcribes one whole utterance, leaning towards what the dialog expects.
    fn transcribe_expecting(
        &self,
        samples: &[f32],
        expect: Expectation,
    ) -> Result<Transcript, AsrError> {
        self.decode_expecting(samples, Pass::Final, expect)
    }

    /// The engine and model, for logs and reports ("moonshine base-en").
    fn describe(&self) -> String {
        "speech recogniser".into()
    }
}

/// Which engine recognises speech (`[asr] engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Moonshine through ONNX Runtime.
    #[default]
    Moonshine,
    /// whisper.cpp through whisper-rs.
    Whisper,
}

impl Engine {
    /// The engine's name in configuration and logs.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Moonshine => "moonshine",
            Engine::Whisper => "whisper",
        }
    }
}

/// Recognition settings (`[asr]` in the gateway configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsrConfig {
    /// The engine.
    pub engine: Engine,
    /// The model. Moonshine: "tiny" or "base" (the provisioned `models/moonshine/<name>-en/`)
    /// or a directory holding the model files; whisper: the ggml file. Empty: the engine's
    /// default (Moonshine base, whisper tiny.en).
    pub model: PathBuf,
    /// Spoken language (ISO 639-1). Moonshine's shipped models are English only.
    pub language: String,
    /// CPU threads per recognition; 0 means all available cores.
    pub threads: usize,
    /// ONNX Runtime's shared library for Moonshine (`$ORT_DYLIB_PATH` overrides it).
    pub onnx_library: PathBuf,
    /// Audio time between two partial hypotheses while the caller talks; 0 turns partials off.
    pub partial_interval_ms: u64,
    /// Share of one core a talking call may spend on partial hypotheses (over its current
    /// utterance); a partial that would exceed it is skipped.
    pub partial_budget: f32,
    /// Moonshine: the model that decodes partial hypotheses ("tiny", "base", a directory;
    /// empty: `model`). A smaller one keeps partials cheap while the final pass uses the
    /// more accurate model.
    pub partial_model: PathBuf,
    /// whisper: cut the encoder window to the utterance length (falls back when it misbehaves).
    pub adaptive_audio_ctx: bool,
    /// whisper, with the adaptive window: re-decode with the full window below this confidence.
    pub full_window_below: f32,
    /// whisper.cpp flash attention (faster on CPU; whisper.cpp's own default).
    pub flash_attn: bool,
    /// whisper: text that biases recognition towards the domain's words.
    pub initial_prompt: String,
    /// Correct doubtful words towards the flow's vocabulary (intents' key terms, slot words,
    /// product names); words the engine is sure of are never changed.
    pub vocabulary_correction: bool,
    /// English words the correction never replaces: a pronouncing lexicon (JSON object keyed
    /// by word); the neural voice's by default.
    pub dictionary: PathBuf,
    /// How each utterance is prepared before decoding ("level": level-normalised; "none").
    pub conditioning: Conditioning,
    /// Moonshine: words recognition leans towards in every turn (the words callers ask for a
    /// person with, by default). Each one that is a single token of the model's vocabulary
    /// (with its leading space, lower case or capitalised) gets `hot_word_bias` added to its
    /// score at every step; others are left out, with a note in the log at start.
    pub hot_words: Vec<String>,
    /// The bonus of a hot word's token, in logit terms (0 turns hot words off; at most 5).
    pub hot_word_bias: f32,
}

/// The default hot words: what callers ask for a person with, in one word, where a miss
/// costs most (a caller who asked for a person and is not transferred).
pub const DEFAULT_HOT_WORDS: &[&str] = &[
    "agent",
    "representative",
    "operator",
    "human",
    "person",
    "someone",
    "somebody",
    "supervisor",
    "manager",
    "advisor",
    "colleague",
];

impl Default for AsrConfig {
    fn default() -> Self {
        AsrConfig {
            engine: Engine::Moonshine,
            model: PathBuf::new(),
            language: "en".into(),
            threads: 2,
            onnx_library: PathBuf::from("models/onnxruntime/libonnxruntime.so"),
            partial_interval_ms: 500,
            partial_budget: 0.1,
            partial_model: PathBuf::from("tiny"),
            adaptive_audio_ctx: true,
            full_window_below: 0.7,
            flash_attn: true,
            initial_prompt: String::new(),
            vocabulary_correction: true,
            dictionary: PathBuf::from("models/hibari/lexicon_us_gold.json"),
            conditioning: Conditioning::default(),
            hot_words: DEFAULT_HOT_WORDS.iter().map(|w| w.to_string()).collect(),
            hot_word_bias: 2.0,
        }
    }
}

impl AsrConfig {
    /// The whisper settings with `model` as the ggml file.
    pub fn whisper(model: impl Into<PathBuf>) -> Self {
        AsrConfig {
            engine: Engine::Whisper,
            model: model.into(),
            ..AsrConfig::default()
        }
    }

    /// The model path the engine will load (its default when `model` is empty).
    pub fn model_path(&self) -> PathBuf {
        match self.engine {
            Engine::Whisper if self.model.as_os_str().is_empty() => {
                PathBuf::from("models/ggml-tiny.en.bin")
            }
            Engine::Whisper => self.model.clone(),
            Engine::Moonshine => moonshine::model_dir(&self.model),
        }
    }

    /// The Moonshine model directory for partial passes, when partials are on and it is set
    /// (whisper: None).
    pub fn partial_model_dir(&self) -> Option<PathBuf> {
        (self.engine == Engine::Moonshine
            && self.partial_interval_ms > 0
            && !self.partial_model.as_os_str().is_empty())
        .then(|| moonshine::model_dir(&self.partial_model))
    }

    /// Threads per recognition, with 0 resolved to the machine's cores.
    pub fn resolved_threads(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.threads
        }
    }
}

/// Loads the configured engine, behind the configured input conditioning.
pub fn load(config: &AsrConfig) -> Result<Arc<dyn SpeechRecognizer>, AsrError> {
    load_with_sessions(config, 1)
}

/// [`load`] with `sessions` Moonshine sessions of each model open and warmed: one per
/// inference worker, so no recognition opens one in the middle of a call.
pub fn load_with_sessions(
    config: &AsrConfig,
    sessions: usize,
) -> Result<Arc<dyn SpeechRecognizer>, AsrError> {
    let engine: Box<dyn SpeechRecognizer> = match config.engine {
        Engine::Moonshine => Box::new(MoonshineRecognizer::load_with_sessions(config, sessions)?),
        Engine::Whisper => Box::new(WhisperRecognizer::load(config)?),
    };
    let mut partial_engine: Option<Box<dyn SpeechRecognizer>> = None;
    let partial = config.partial_model_dir();
    if let Some(dir) = partial.filter(|d| *d != config.model_path()) {
        let partial_config = AsrConfig {
            model: dir,
            ..config.clone()
        };
        partial_engine = Some(Box::new(MoonshineRecognizer::load_with_sessions(
            &partial_config,
            sessions,
        )?));
    }
    Ok(Arc::new(Conditioned {
        engine,
        partial_engine,
        conditioning: config.conditioning,
    }))
}

/// An engine that hears conditioned input ([`telephone`]), and nothing at all where the
/// audio is too quiet to hold speech; partial passes may go to a smaller model.
struct Conditioned {
    engine: Box<dyn SpeechRecognizer>,
    partial_engine: Option<Box<dyn SpeechRecognizer>>,
    conditioning: Conditioning,
}

impl SpeechRecognizer for Conditioned {
    fn decode_expecting(
        &self,
        samples: &[f32],
        pass: Pass,
        expect: Expectation,
    ) -> Result<Transcript, AsrError> {
        let started = std::time::Instant::now();
        if telephone::is_silent(samples) {
            return Ok(Transcript {
                elapsed: started.elapsed(),
                ..Transcript::default()
            });
        }
        let input = telephone::condition(samples, self.conditioning);
        let engine = match (&self.partial_engine, pass) {
            (Some(partial), Pass::Partial) => partial,
            _ => &self.engine,
        };
        let mut t = engine.decode_expecting(&input, pass, expect)?;
        t.elapsed = started.elapsed();
        Ok(t)
    }

    fn describe(&self) -> String {
        self.engine.describe()
    }
}

/// Per-inference engine state (whisper's decoder state, the ONNX sessions of Moonshine and of
/// Smart Turn: all need exclusive access while they run) kept for reuse: a decode takes an idle
/// one, or makes one when all are busy, and gives it back, so there are as many as the peak
/// concurrency.
pub(crate) struct Reusable<T>(Mutex<Vec<T>>);

impl<T> Reusable<T> {
    pub(crate) fn new(idle: Vec<T>) -> Self {
        Reusable(Mutex::new(idle))
    }

    /// Runs `f` with an idle item, or one from `make`; the item is kept for later whatever
    /// `f` returns.
    pub(crate) fn with<R, E>(
        &self,
        make: impl FnOnce() -> Result<T, E>,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, E> {
        let reused = self.0.lock().ok().and_then(|mut idle| idle.pop());
        let mut item = match reused {
            Some(item) => item,
            None => make()?,
        };
        let result = f(&mut item);
        if let Ok(mut idle) = self.0.lock() {
            idle.push(item);
        }
        Ok(result)
    }
}

/// Words of a transcript with per-token log probabilities: a token whose text starts with a
/// space (or is the first) starts a new word. `pieces` are (text, ln p) in order.
pub fn words_from_pieces<'a>(pieces: impl IntoIterator<Item = (&'a str, f32)>) -> Vec<Word> {
    let mut words: Vec<(String, f64, usize)> = Vec::new();
    // A piece that is only a space (Moonshine's lone "▁" before digits) opens the next word.
    let mut space_before = false;
    for (text, logprob) in pieces {
        let starts_word = space_before || text.starts_with(' ') || words.is_empty();
        let trimmed = text.trim();
        if trimmed.is_empty() {
            space_before |= !text.is_empty();
            continue;
        }
        space_before = false;
        match words.last_mut() {
            Some((word, sum, n)) if !starts_word => {
                word.push_str(trimmed);
                *sum += f64::from(logprob);
                *n += 1;
            }
            _ => words.push((trimmed.to_string(), f64::from(logprob), 1)),
        }
    }
    words
        .into_iter()
        .map(|(text, sum, n)| Word {
            text,
            confidence: Transcript::mean_probability(sum, n),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_join_subword_tokens() {
        let words = words_from_pieces([
            (" Where", -0.01),
            (" is", -0.02),
            (" my", -0.1),
            (" par", -0.5),
            ("cel", -0.7),
            ("?", -0.01),
        ]);
        let texts: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(texts, ["Where", "is", "my", "parcel?"]);
        let parcel = &words[3];
        let expected = ((-0.5f64 - 0.7 - 0.01) / 3.0).exp() as f32;
        assert!((parcel.confidence - expected).abs() < 1e-6);
    }

    #[test]
    fn a_lone_space_piece_separates_words() {
        let words = words_from_pieces([(" is", -0.1), (" ", -0.1), ("2", -0.2), ("4", -0.3)]);
        let texts: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(texts, ["is", "24"]);
    }

    #[test]
    fn first_token_without_space_starts_a_word() {
        let words = words_from_pieces([("Hello", -0.1), (" there", -0.2)]);
        assert_eq!(words.len(), 2);
        assert_eq!(words[0].text, "Hello");
    }

    #[test]
    fn default_models_per_engine() {
        let moonshine = AsrConfig::default();
        assert!(moonshine.model_path().ends_with("moonshine/base-en"));
        let whisper = AsrConfig {
            engine: Engine::Whisper,
            ..AsrConfig::default()
        };
        assert!(whisper.model_path().ends_with("ggml-tiny.en.bin"));
        let tiny = AsrConfig {
            model: "tiny".into(),
            ..AsrConfig::default()
        };
        assert!(tiny.model_path().ends_with("moonshine/tiny-en"));
    }
}
