//! Moonshine (Moonshine AI, MIT) through ONNX Runtime: the default speech recogniser.
//!
//! # Why Moonshine
//!
//! whisper encodes a fixed 30 s window whatever the utterance, so a two-second "I want to talk
//! to someone" costs as much as thirty seconds of speech, and its short-window shortcut needs
//! a full-window retry when it misbehaves. Moonshine's encoder takes exactly the audio it is
//! given, so a turn costs in proportion to its length (tens of milliseconds), which is also
//! what makes re-decoding the growing utterance for partial hypotheses affordable. Measured on
//! telephone speech it is also the more accurate of the two (see the README's figures).
//!
//! # The model files
//!
//! A model directory (`python3 models/provision.py` makes `models/moonshine/tiny-en` and
//! `base-en`) holds `tokenizer.bin`, an encoder and a decoder, as ONNX (`.onnx`) or ONNX
//! Runtime (`.ort`) files:
//! - `encoder_model`: `input_values` [1, samples] (16 kHz, and `attention_mask` when the model
//!   declares it) to `last_hidden_state` [1, frames, width];
//! - either `decoder_model_merged` (one graph; `use_cache_branch` says whether the past is
//!   used) or `decoder_model` + `decoder_with_past_model` (the two branches as two graphs):
//!   `input_ids`, `encoder_hidden_states`, `past_key_values.N.{decoder,encoder}.{key,value}` to
//!   `logits` and `present.N.*`.
//!
//! The input and output names are read from the sessions, so tiny (which also takes attention
//! masks) and base (which does not) load through the same code.
//!
//! # Decoding
//!
//! Greedy, with the key/value cache: the first step computes the cross-attention keys and
//! values from the encoder output; they are kept and passed back at every later step. The end
//! of text is not allowed as the first token (base otherwise returns nothing for some clips),
//! the length is capped from the audio's duration (Moonshine's own rule, 6.5 tokens a second,
//! plus a margin), and a token loop (an n-gram three times in a row at the end) stops decoding.
//!
//! # Contextual bias
//!
//! When the dialog expects a number said digit by digit ([`Expectation::Digits`]: the bot
//! asked for an order number), the tokens of digit words ("▁five", "▁Five", "▁oh",
//! "▁double", ...) and of numerals get [`DIGIT_BIAS`] added to their scores at every step
//! (shallow fusion with a tiny "digits are likely here" language model). On a bad line the
//! acoustics of "five" and "time", "seven" and "heaven", "zero" and "Nero" are close, and the
//! model's own language sense picks the ordinary word; the bias tips such near-ties towards
//! the digit, while words the model is sure of ("my order number is") keep their lead. The
//! reported probabilities are those of the biased distribution.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, ValueType};

use super::tokenizer::{self, Tokenizer};
use super::{
    words_from_pieces, AsrConfig, AsrError, Expectation, Pass, Reusable, SpeechRecognizer,
    Transcript,
};
use crate::audio::SPEECH_RATE;
use crate::speech::onnx;

/// Where the provisioned models live.
const MODELS_DIR: &str = "models/moonshine";
/// The model used when `[asr] model` is empty.
pub const DEFAULT_MODEL: &str = "base";
/// Tokens per second of audio Moonshine allows (its own runtime's cap), plus a margin.
const TOKENS_PER_SECOND: f32 = 6.5;
const TOKEN_MARGIN: usize = 8;

/// The most tokens decoded for `samples` of audio at the speech rate.
fn token_budget(samples: usize) -> usize {
    let seconds = samples as f32 / SPEECH_RATE as f32;
    (seconds * TOKENS_PER_SECOND).ceil() as usize + TOKEN_MARGIN
}

/// Partial passes decode at most this many tokens: enough for the live views.
const PARTIAL_MAX_TOKENS: usize = 48;
/// Added to the score (a logit) of a digit word's tokens when digits are expected; chosen on
/// the tuning part of `voicebot bench-asr`'s spoken numbers (see the README's figures).
const DIGIT_BIAS: f32 = 3.0;
/// Words a caller says a number with: their tokens are biased when digits are expected.
const DIGIT_WORDS: &[&str] = &[
    "zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "double",
    "triple",
];
/// The encoder needs some audio to produce a frame; shorter input is padded with silence.
const MIN_SAMPLES: usize = SPEECH_RATE as usize / 2;

/// The directory of a model named in `[asr] model`: "tiny"/"base" (or their "-en" names) are
/// the provisioned ones, anything else is a path; empty is [`DEFAULT_MODEL`].
pub fn model_dir(model: &Path) -> PathBuf {
    let name = model.to_string_lossy();
    let name = if name.is_empty() {
        DEFAULT_MODEL
    } else {
        name.as_ref()
    };
    match name {
        "tiny" | "tiny-en" | "base" | "base-en" => {
            Path::new(MODELS_DIR).join(format!("{}-en", name.trim_end_matches("-en")))
        }
        _ => PathBuf::from(name),
    }
}

/// How the decoder is split into graphs.
enum DecoderLayout {
    /// One graph with `use_cache_branch`.
    Merged,
    /// A first-step graph and a with-past graph.
    Split,
}

/// What the loaded graphs expect, read from their declared inputs.
struct Signature {
    layout: DecoderLayout,
    /// The encoder takes `attention_mask`.
    encoder_mask: bool,
    /// The decoder takes `encoder_attention_mask` (over the input samples).
    decoder_encoder_mask: bool,
    /// `past_key_values.*` input names of the with-past graph, in declared order, with each
    /// one's (heads, head width).
    past: Vec<(String, i64, i64)>,
    /// Whether the with-past graph reads `encoder_hidden_states` (a split one need not: its
    /// cross-attention comes from the cache).
    past_reads_hidden: bool,
}

/// One set of sessions: a concurrent recognition takes one (`Session::run` needs `&mut`).
struct Sessions {
    encoder: Session,
    decoder: Session,
    /// The with-past graph of a split decoder.
    decoder_past: Option<Session>,
}

/// The Moonshine recogniser: one tokenizer, a stack of idle session sets.
pub struct MoonshineRecognizer {
    dir: PathBuf,
    library: PathBuf,
    threads: usize,
    tokenizer: Tokenizer,
    signature: Signature,
    idle: Reusable<Sessions>,
    /// What is added to each token's score, per expectation (see [`Bias`]).
    bias: Bias,
}

/// Per-token bonuses added to the decoder's scores at every step, one table (indexed by token
/// id) per expectation, made once at load; None where nothing is biased.
struct Bias {
    /// The hot words (`[asr] hot_words`, by `hot_word_bias`).
    anything: Option<Vec<f32>>,
    /// The hot words, and the digit words and numerals by [`DIGIT_BIAS`].
    digits: Option<Vec<f32>>,
}

impl Bias {
    fn new(tokenizer: &Tokenizer, config: &AsrConfig) -> Self {
        let hot = if config.hot_word_bias > 0.0 {
            hot_tokens(tokenizer, &config.hot_words)
        } else {
            Vec::new()
        };
        let digits = digit_tokens(tokenizer);
        let n = tokenizer.len();
        let hot_bias = config.hot_word_bias;
        Bias {
            anything: bonus_table(n, &[(&hot, hot_bias)]),
            digits: bonus_table(n, &[(&hot, hot_bias), (&digits, DIGIT_BIAS)]),
        }
    }

    fn table(&self, expect: Expectation) -> Option<&[f32]> {
        match expect {
            Expectation::Anything => self.anything.as_deref(),
            Expectation::Digits => self.digits.as_deref(),
        }
    }
}

impl std::fmt::Debug for MoonshineRecognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoonshineRecognizer")
            .field("dir", &self.dir)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl MoonshineRecognizer {
    /// Loads the model directory named by `config` and runs one warm-up pass.
    pub fn load(config: &AsrConfig) -> Result<Self, AsrError> {
        Self::load_with_sessions(config, 1)
    }

    /// Loads the model with `count` sessions open and warmed, so that as many recognitions
    /// can run at once (one per inference worker) without one of them opening a session in
    /// the middle of a call: opening and warming base takes about 2 s, tiny about 0.4 s.
    pub fn load_with_sessions(config: &AsrConfig, count: usize) -> Result<Self, AsrError> {
        let dir = config.model_path();
        if !dir.is_dir() {
            return Err(AsrError::ModelMissing { path: dir });
        }
        let load_err = |reason: String| AsrError::ModelLoad {
            path: dir.clone(),
            reason,
        };
        let tokenizer =
            Tokenizer::load(&dir.join("tokenizer.bin")).map_err(|e| load_err(e.to_string()))?;
        let threads = config.resolved_threads();
        let started = Instant::now();
        let bias = Bias::new(&tokenizer, config);
        let recognizer = MoonshineRecognizer {
            library: config.onnx_library.clone(),
            threads,
            tokenizer,
            signature: Signature {
                layout: DecoderLayout::Merged,
                encoder_mask: false,
                decoder_encoder_mask: false,
                past: Vec::new(),
                past_reads_hidden: true,
            },
            idle: Reusable::new(Vec::new()),
            bias,
            dir: dir.clone(),
        };
        let sessions = recognizer.open_sessions()?;
        let signature = read_signature(&sessions).map_err(load_err)?;
        let mut recognizer = MoonshineRecognizer {
            signature,
            ..recognizer
        };
        // The first run of a session is slow (allocations, kernel selection): pay it now,
        // for every session.
        let warm = vec![0.0f32; SPEECH_RATE as usize];
        let max_tokens = token_budget(warm.len());
        let mut idle = vec![sessions];
        for _ in 1..count.max(1) {
            idle.push(recognizer.open_sessions()?);
        }
        for s in &mut idle {
            recognizer.run(s, &warm, max_tokens, None)?;
        }
        recognizer.idle = Reusable::new(idle);
        tracing::info!(
            engine = "moonshine",
            model = %dir.display(),
            threads,
            sessions = count.max(1),
            ms = started.elapsed().as_millis() as u64,
            "speech model loaded"
        );
        Ok(recognizer)
    }

    /// The model directory.
    pub fn model_dir(&self) -> &Path {
        &self.dir
    }

    fn open_sessions(&self) -> Result<Sessions, AsrError> {
        // The encoder is a few large matrix products: it gains from `threads`. A decoder step
        // is many small ones, where a second thread costs more in synchronisation than it
        // saves (measured: about twice as fast on one thread), so decoders get one.
        let open = |stem: &str| -> Result<Option<Session>, AsrError> {
            let Some(path) = model_file(&self.dir, stem) else {
                return Ok(None);
            };
            let threads = if stem == "encoder_model" {
                self.threads
            } else {
                1
            };
            onnx::session(&self.library, &path, threads)
                .map(Some)
                .map_err(|e| AsrError::ModelLoad {
                    path: path.clone(),
                    reason: e.to_string(),
                })
        };
        let missing = |what: &str| AsrError::ModelLoad {
            path: self.dir.clone(),
            reason: format!("no {what} (.onnx or .ort) in the model directory"),
        };
        let encoder = open("encoder_model")?.ok_or_else(|| missing("encoder_model"))?;
        if let Some(decoder) = open("decoder_model_merged")? {
            return Ok(Sessions {
                encoder,
                decoder,
                decoder_past: None,
            });
        }
        let decoder = open("decoder_model")?.ok_or_else(|| missing("decoder_model_merged"))?;
        let past =
            open("decoder_with_past_model")?.ok_or_else(|| missing("decoder_with_past_model"))?;
        Ok(Sessions {
            encoder,
            decoder,
            decoder_past: Some(past),
        })
    }

    /// Encoder then greedy decoding: the chosen tokens and each one's natural-log probability.
    fn run(
        &self,
        s: &mut Sessions,
        samples: &[f32],
        max_tokens: usize,
        bonus: Option<&[f32]>,
    ) -> Result<(Vec<i64>, Vec<f32>), AsrError> {
        let n = samples.len();
        let started = Instant::now();
        let hidden = self.encode(&mut s.encoder, samples)?;
        let encoded = started.elapsed();
        let mask = if self.signature.decoder_encoder_mask {
            Some(tensor_i64(vec![1, n], vec![1; n])?)
        } else {
            None
        };
        let mut tokens = Vec::new();
        let mut logprobs = Vec::new();
        let mut last = tokenizer::START;
        // Step 0 computes both caches; later steps reuse the cross-attention one.
        let mut self_kv: Vec<DynValue> = Vec::new();
        let mut cross_kv: Vec<DynValue> = Vec::new();
        for step in 0..max_tokens {
            let use_past = step > 0;
            let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::new();
            inputs.push((
                "input_ids".into(),
                tensor_i64(vec![1, 1], vec![last])?.into(),
            ));
            if !use_past || self.signature.past_reads_hidden {
                inputs.push(("encoder_hidden_states".into(), hidden.view().into()));
            }
            if let Some(mask) = &mask {
                inputs.push(("encoder_attention_mask".into(), mask.view().into()));
            }
            let merged = matches!(self.signature.layout, DecoderLayout::Merged);
            if merged {
                inputs.push((
                    "use_cache_branch".into(),
                    Tensor::from_array(([1usize], vec![use_past]))
                        .map_err(inference)?
                        .into(),
                ));
            }
            if use_past || merged {
                let mut self_it = std::mem::take(&mut self_kv).into_iter();
                let mut cross_it = cross_kv.iter();
                for (name, heads, width) in &self.signature.past {
                    let value: SessionInputValue<'_> = if !use_past {
                        empty_kv(*heads, *width)?.into()
                    } else if name.contains(".decoder.") {
                        self_it
                            .next()
                            .ok_or_else(|| inference("decoder cache shorter than the model's"))?
                            .into()
                    } else {
                        cross_it
                            .next()
                            .ok_or_else(|| inference("encoder cache shorter than the model's"))?
                            .view()
                            .into()
                    };
                    inputs.push((Cow::Owned(name.clone()), value));
                }
            }
            let session = match (&mut s.decoder_past, use_past) {
                (Some(past), true) => past,
                _ => &mut s.decoder,
            };
            let mut outputs = session.run(inputs).map_err(inference)?;
            let (next, logprob) = {
                let logits = outputs
                    .get("logits")
                    .ok_or_else(|| inference("the decoder has no `logits` output"))?;
                let (shape, data) = logits.try_extract_tensor::<f32>().map_err(inference)?;
                // The last position's scores (one input token, so the only one). The model's
                // vocabulary may be wider than the token table: those ids decode to nothing.
                let vocab = shape
                    .last()
                    .and_then(|&v| usize::try_from(v).ok())
                    .filter(|&v| v > 0 && v <= data.len())
                    .ok_or_else(|| inference(format!("logits of shape {shape:?}")))?;
                let row = &data[data.len() - vocab..];
                pick(row, bonus, step == 0)
            };
            // Keep the caches in the with-past graph's input order.
            let mut new_self = Vec::new();
            for (name, _, _) in &self.signature.past {
                let out = name.replacen("past_key_values", "present", 1);
                let is_decoder = name.contains(".decoder.");
                if is_decoder || step == 0 {
                    let value = outputs
                        .remove(out.as_str())
                        .ok_or_else(|| inference(format!("the decoder has no `{out}` output")))?;
                    if is_decoder {
                        new_self.push(value);
                    } else {
                        cross_kv.push(value);
                    }
                }
            }
            drop(outputs);
            self_kv = new_self;
            if next == tokenizer::END {
                break;
            }
            tokens.push(next);
            logprobs.push(logprob);
            last = next;
            if let Some(keep) = loop_start(&tokens) {
                tokens.truncate(keep);
                logprobs.truncate(keep);
                break;
            }
        }
        tracing::trace!(
            samples = n,
            encoder_us = encoded.as_micros() as u64,
            decoder_us = (started.elapsed() - encoded).as_micros() as u64,
            tokens = tokens.len(),
            "moonshine pass"
        );
        Ok((tokens, logprobs))
    }

    fn encode(&self, encoder: &mut Session, samples: &[f32]) -> Result<DynValue, AsrError> {
        let n = samples.len();
        let audio = Tensor::from_array(([1usize, n], samples.to_vec())).map_err(inference)?;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            vec![("input_values".into(), audio.into())];
        if self.signature.encoder_mask {
            inputs.push((
                "attention_mask".into(),
                tensor_i64(vec![1, n], vec![1; n])?.into(),
            ));
        }
        let mut outputs = encoder.run(inputs).map_err(inference)?;
        outputs
            .remove("last_hidden_state")
            .ok_or_else(|| inference("the encoder has no `last_hidden_state` output"))
    }
}

impl SpeechRecognizer for MoonshineRecognizer {
    fn decode_expecting(
        &self,
        samples: &[f32],
        pass: Pass,
        expect: Expectation,
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
        let mut max_tokens = token_budget(input.len());
        if pass == Pass::Partial {
            max_tokens = max_tokens.min(PARTIAL_MAX_TOKENS);
        }
        let bonus = self.bias.table(expect);
        let (tokens, logprobs) = self.idle.with(
            || self.open_sessions(),
            |sessions| self.run(sessions, input, max_tokens, bonus),
        )??;
        let pieces = self.tokenizer.pieces(&tokens);
        let words = words_from_pieces(
            pieces
                .iter()
                .map(String::as_str)
                .zip(logprobs.iter().copied()),
        );
        let sum: f64 = logprobs.iter().map(|&l| f64::from(l)).sum();
        Ok(Transcript {
            text: self.tokenizer.decode(&tokens),
            confidence: Transcript::mean_probability(sum, logprobs.len()),
            elapsed: started.elapsed(),
            words,
            ..Transcript::default()
        })
    }

    fn describe(&self) -> String {
        let name = self.dir.file_name().map_or_else(
            || self.dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        format!("moonshine {name}")
    }
}

/// A table of `len` per-token bonuses: each set's ids get its bonus (ids beyond `len` are
/// ignored); None when no token gets one.
fn bonus_table(len: usize, sets: &[(&[usize], f32)]) -> Option<Vec<f32>> {
    let mut table = vec![0.0f32; len];
    let mut any = false;
    for &(ids, bonus) in sets.iter().filter(|(_, b)| *b != 0.0) {
        for &id in ids {
            if let Some(b) = table.get_mut(id) {
                *b += bonus;
                any = true;
            }
        }
    }
    any.then_some(table)
}

/// The ids of the tokens that spell a digit word with its word start ("▁five", "▁Five"), or
/// a numeral.
fn digit_tokens(tokenizer: &Tokenizer) -> Vec<usize> {
    (0..tokenizer.len())
        .filter(|&id| {
            let Ok(text) = std::str::from_utf8(tokenizer.bytes(id as i64)) else {
                return false;
            };
            let numeral = text.len() == 1 && text.as_bytes()[0].is_ascii_digit();
            let word = text
                .strip_prefix('\u{2581}')
                .is_some_and(|w| DIGIT_WORDS.contains(&w.to_ascii_lowercase().as_str()));
            numeral || word
        })
        .collect()
}

/// The ids of the tokens that spell one of `words` with its word start, lower case or
/// capitalised ("▁agent", "▁Agent"). A word the vocabulary has no such token for is left out
/// (biasing its first piece, "▁super" for "supervisor", would push "super" everywhere), and
/// said so in the log.
fn hot_tokens(tokenizer: &Tokenizer, words: &[String]) -> Vec<usize> {
    let wanted: std::collections::HashSet<String> = words
        .iter()
        .flat_map(|w| {
            let lower = w.to_lowercase();
            let mut chars = lower.chars();
            let capital = chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default();
            [format!("\u{2581}{lower}"), format!("\u{2581}{capital}")]
        })
        .collect();
    let ids: Vec<usize> = (0..tokenizer.len())
        .filter(|&id| {
            std::str::from_utf8(tokenizer.bytes(id as i64)).is_ok_and(|t| wanted.contains(t))
        })
        .collect();
    let found: std::collections::HashSet<String> = ids
        .iter()
        .filter_map(|&id| std::str::from_utf8(tokenizer.bytes(id as i64)).ok())
        .map(|t| t.trim_start_matches('\u{2581}').to_lowercase())
        .collect();
    let left_out: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .filter(|w| !found.contains(&w.to_lowercase()))
        .collect();
    if !left_out.is_empty() {
        tracing::info!(
            words = ?left_out,
            "hot words that are not one token of the speech model's vocabulary are not biased"
        );
    }
    ids
}

/// `stem.onnx`, else `stem.ort`, in `dir`.
fn model_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    ["onnx", "ort"]
        .iter()
        .map(|ext| dir.join(format!("{stem}.{ext}")))
        .find(|p| p.is_file())
}

fn read_signature(s: &Sessions) -> Result<Signature, String> {
    let has = |session: &Session, name: &str| session.inputs().iter().any(|i| i.name() == name);
    let with_past = s.decoder_past.as_ref().unwrap_or(&s.decoder);
    let mut past = Vec::new();
    for input in with_past.inputs() {
        if !input.name().starts_with("past_key_values.") {
            continue;
        }
        let ValueType::Tensor { shape, .. } = input.dtype() else {
            return Err(format!("input {} is not a tensor", input.name()));
        };
        let dims: &[i64] = shape;
        match dims {
            [_, heads, _, width] if *heads > 0 && *width > 0 => {
                past.push((input.name().to_string(), *heads, *width));
            }
            _ => {
                return Err(format!(
                    "input {} has shape {dims:?}, not [batch, heads, length, width]",
                    input.name()
                ))
            }
        }
    }
    if past.is_empty() {
        return Err("the decoder takes no past_key_values: not a Moonshine decoder".into());
    }
    if !has(&s.encoder, "input_values") {
        return Err("the encoder takes no `input_values`: not a Moonshine encoder".into());
    }
    let layout = if s.decoder_past.is_some() {
        DecoderLayout::Split
    } else if has(&s.decoder, "use_cache_branch") {
        DecoderLayout::Merged
    } else {
        return Err("decoder_model_merged takes no `use_cache_branch`".into());
    };
    Ok(Signature {
        layout,
        encoder_mask: has(&s.encoder, "attention_mask"),
        decoder_encoder_mask: has(&s.decoder, "encoder_attention_mask"),
        past_reads_hidden: has(with_past, "encoder_hidden_states"),
        past,
    })
}

fn inference(e: impl ToString) -> AsrError {
    AsrError::Inference(e.to_string())
}

fn tensor_i64(shape: Vec<usize>, data: Vec<i64>) -> Result<DynValue, AsrError> {
    Tensor::from_array((shape, data))
        .map(|t| t.into_dyn())
        .map_err(inference)
}

/// An empty cache entry [1, heads, 0, width] for the first step of a merged decoder.
fn empty_kv(heads: i64, width: i64) -> Result<DynValue, AsrError> {
    let heads = usize::try_from(heads).map_err(inference)?;
    let width = usize::try_from(width).map_err(inference)?;
    Tensor::from_array(([1usize, heads, 0, width], Vec::<f32>::new()))
        .map(|t| t.into_dyn())
        .map_err(inference)
}

/// The most likely token and its log probability, with `bonus` (per token id; tokens beyond
/// it get none) added to the scores; `first` forbids the end of text.
fn pick(logits: &[f32], bonus: Option<&[f32]>, first: bool) -> (i64, f32) {
    let score = |i: usize, s: f32| s + bonus.and_then(|b| b.get(i)).copied().unwrap_or(0.0);
    let mut best = 0usize;
    let mut best_score = f32::NEG_INFINITY;
    let mut max = f32::NEG_INFINITY;
    for (i, &s) in logits.iter().enumerate() {
        let s = score(i, s);
        max = max.max(s);
        if first && i as i64 == tokenizer::END {
            continue;
        }
        if s > best_score {
            best = i;
            best_score = s;
        }
    }
    let sum: f32 = logits
        .iter()
        .enumerate()
        .map(|(i, &s)| (score(i, s) - max).exp())
        .sum();
    let logprob = best_score - max - sum.ln();
    (best as i64, logprob)
}

/// Where a token loop starts: when the sequence ends with the same n-gram repeated (a single
/// token 8 times, a pair 4 times, a longer n-gram up to 8 tokens 3 times), the length that
/// keeps its first occurrence. Real speech repeats short things ("no no no", "one one one"),
/// hence the higher counts for short n-grams.
fn loop_start(tokens: &[i64]) -> Option<usize> {
    for n in 1..=8usize {
        let times = match n {
            1 => 8,
            2 => 4,
            _ => 3,
        };
        let span = n * times;
        if tokens.len() < span {
            continue;
        }
        let tail = &tokens[tokens.len() - span..];
        let (a, rest) = tail.split_at(n);
        if rest.chunks(n).all(|c| c == a) {
            return Some(tokens.len() - span + n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_map_to_provisioned_dirs() {
        assert_eq!(
            model_dir(Path::new("")),
            Path::new("models/moonshine/base-en")
        );
        assert_eq!(
            model_dir(Path::new("tiny")),
            Path::new("models/moonshine/tiny-en")
        );
        assert_eq!(
            model_dir(Path::new("base-en")),
            Path::new("models/moonshine/base-en")
        );
        assert_eq!(model_dir(Path::new("/opt/m")), Path::new("/opt/m"));
    }

    #[test]
    fn pick_forbids_end_of_text_first() {
        let mut logits = vec![0.0f32; 10];
        logits[tokenizer::END as usize] = 5.0;
        logits[7] = 1.0;
        assert_eq!(pick(&logits, None, true).0, 7);
        assert_eq!(pick(&logits, None, false).0, tokenizer::END);
        let (_, lp) = pick(&logits, None, false);
        assert!(lp < 0.0 && lp > -0.1, "{lp}");
    }

    #[test]
    fn digits_expected_bias_digit_words_and_numerals_only() {
        let words: Vec<&[u8]> = vec![
            "▁five".as_bytes(),
            "▁Five".as_bytes(),
            "▁time".as_bytes(),
            "▁double".as_bytes(),
            "five".as_bytes(), // inside a word ("fivefold"): not a digit word
            "▁fives".as_bytes(),
            "▁Oh".as_bytes(),
        ];
        let t = Tokenizer::parse(&tokenizer::table(&words)).expect("table");
        let ids = digit_tokens(&t);
        let numerals: Vec<usize> = (b'0'..=b'9').map(|b| 3 + usize::from(b)).collect();
        let mut expected = numerals.clone();
        expected.extend([259, 260, 262, 265]);
        expected.sort_unstable();
        assert_eq!(ids, expected);
        // "time" leads "five" by 2.5 (about 12 to 1): the bias turns the near-tie over, but
        // not a word the model is sure of.
        let mut scores = vec![0.0f32; t.len()];
        scores[261] = 4.5; // ▁time
        scores[259] = 2.0; // ▁five
        let bonus = bonus_table(t.len(), &[(&ids, DIGIT_BIAS)]).expect("digits");
        assert!(bonus_table(t.len(), &[(&ids, 0.0), (&[], 2.0)]).is_none());
        assert_eq!(pick(&scores, None, false).0, 261);
        assert_eq!(pick(&scores, Some(&bonus), false).0, 259);
        scores[261] = 9.0;
        assert_eq!(pick(&scores, Some(&bonus), false).0, 261);
    }

    #[test]
    fn hot_words_bias_their_whole_word_tokens_only() {
        let words: Vec<&[u8]> = vec![
            "▁agent".as_bytes(),
            "▁Agent".as_bytes(),
            "agent".as_bytes(),
            "▁super".as_bytes(),
            "▁agents".as_bytes(),
        ];
        let t = Tokenizer::parse(&tokenizer::table(&words)).expect("table");
        let hot = hot_tokens(&t, &["Agent".to_string(), "supervisor".to_string()]);
        assert_eq!(hot, [259, 260], "supervisor has no single token: left out");
        assert!(hot_tokens(&t, &[]).is_empty());
    }

    #[test]
    fn loops_are_cut_to_one_occurrence() {
        assert_eq!(loop_start(&[5, 6, 7, 8, 6, 7, 8, 6, 7, 8]), Some(4));
        assert_eq!(loop_start(&[5, 7, 8, 7, 8, 7, 8, 7, 8]), Some(3));
        assert_eq!(loop_start(&[5, 6, 7, 8]), None);
        // Short runs are real speech ("one one one", "no no no").
        assert_eq!(loop_start(&[4, 9, 9, 9]), None);
        assert_eq!(loop_start(&[4, 7, 8, 7, 8]), None);
        assert_eq!(loop_start(&[4, 9, 9, 9, 9, 9, 9, 9, 9]), Some(2));
    }

    #[test]
    fn missing_model_says_how_to_make_it() {
        let config = AsrConfig {
            model: PathBuf::from("/nonexistent/moonshine"),
            ..AsrConfig::default()
        };
        let err = MoonshineRecognizer::load(&config).expect_err("must fail");
        assert!(err.to_string().contains("models/provision.py"), "{err}");
    }
}
