//! The hibari neural voice ("heart", US English, 24 kHz) behind [`SpeechSynthesizer`].
//!
//! # Why this shape
//!
//! hibari-tts 0.2.1 (Apache-2.0; distilled from Kokoro-82M) is three stages: text to phonemes
//! ([`super::g2p`]), phoneme ids to spectra (an 8 MB int8 ONNX model run through ONNX Runtime,
//! [`crate::speech::onnx`]), spectra to samples ([`super::dsp`]). This module glues them the way
//! hibari's own `tts.py` does, so the model sees exactly the inputs it was made for:
//!
//! - **Units.** Text is cut into sentences ([`split_sentences`]: end punctuation followed by
//!   whitespace and a non-lowercase character, except after a title such as "Dr." or a
//!   single-letter initial), one model call each. A sentence is the streaming unit: the
//!   caller can play the first sentence while the next is synthesised, so time to first audio
//!   is one sentence's cost ([`HibariVoice::split`] + [`HibariVoice::synthesize_unit`]). A
//!   sentence whose phonemes exceed 400 characters is re-split at `, ; : —` into chunks of at
//!   most 400 (as `Hibari.phonemize` does); those chunks are synthesised one after the other
//!   inside the same unit.
//! - **Sessions.** `Session::run` needs `&mut`, so the voice keeps a small pool of sessions
//!   (`sessions`, default 1), each behind a `Mutex`; a call takes a free one, or waits for
//!   one. Each session runs on `threads` intra-op threads (default 1: the gateway runs
//!   synthesis on its own pool next to the speech recogniser). The model's outputs are copied
//!   out so the session is released before the DSP runs.
//! - **Determinism.** hibari's noise branch is random; here it is seeded from the phoneme ids
//!   and the speed ([`super::dsp::Noise::Seeded`]), so the same text always gives the same
//!   samples (the TTS cache and tests rely on it).
//! - **Level.** The output is hibari's, unnormalised: speech at about -26 dBFS RMS, peaks
//!   around -3..-10 dBFS. Level normalisation (and resampling to 8 kHz for telephony) is the
//!   caller's job, as for every synthesiser behind the trait.
//! - **Speed.** `speed` divides the predicted durations (1.0 = the teacher's pace); it is
//!   clamped to 0.5..2.0, the range hibari documents.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use ort::session::Session;
use ort::value::Tensor;
use serde::{Deserialize, Serialize};

use super::dsp::{self, Noise, Spectra, Vocoder};
use super::g2p::G2p;
use crate::audio::wav::MonoAudio;
use crate::speech::onnx;
use crate::speech::tts::{Speech, SpeechSynthesizer, TtsError};
use crate::speech::voice::VoiceStyle;

/// Name used in [`TtsError`]s.
const PROGRAM: &str = "hibari";
/// Phoneme strings longer than this are re-split at clause punctuation (hibari's MAX_PHONEMES).
pub const MAX_PHONEMES: usize = 400;
/// The speed range hibari documents.
const SPEED_RANGE: (f32, f32) = (0.5, 2.0);

/// Settings of the hibari voice (`[tts.hibari]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HibariConfig {
    /// The provisioned files (`python3 models/provision.py` fills `models/hibari/`).
    pub dir: PathBuf,
    /// The acoustic model, relative to `dir` (or absolute): another voice is another file.
    pub model: PathBuf,
    /// ONNX Runtime's shared library (`$ORT_DYLIB_PATH` overrides it).
    pub onnx_library: PathBuf,
    /// Intra-op threads per session.
    pub threads: usize,
    /// Speaking rate, 1.0 = normal; clamped to 0.5..2.0.
    pub speed: f32,
    /// Acoustic-model sessions, i.e. how many units can be synthesised at the same time.
    pub sessions: usize,
}

impl Default for HibariConfig {
    fn default() -> Self {
        HibariConfig {
            dir: PathBuf::from("models/hibari"),
            model: PathBuf::from("hibari.onnx"),
            onnx_library: PathBuf::from("models/onnxruntime/libonnxruntime.so"),
            threads: 1,
            speed: 1.0,
            sessions: 1,
        }
    }
}

/// The loaded voice: G2P, a pool of model sessions and the output stage. `Send + Sync`.
pub struct HibariVoice {
    g2p: G2p,
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    vocoder: Vocoder,
    titles: HashSet<String>,
    speed: f32,
}

impl std::fmt::Debug for HibariVoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HibariVoice")
            .field("sessions", &self.sessions.len())
            .field("speed", &self.speed)
            .finish_non_exhaustive()
    }
}

fn failed(reason: impl std::fmt::Display) -> TtsError {
    TtsError::Failed {
        program: PROGRAM.into(),
        reason: reason.to_string(),
    }
}

fn bad_output(reason: impl std::fmt::Display) -> TtsError {
    TtsError::BadOutput {
        program: PROGRAM.into(),
        reason: reason.to_string(),
    }
}

/// The model's outputs for one chunk, copied out of the session.
struct ModelOutputs {
    lh: Vec<f32>,
    theta: Vec<f32>,
    ln: Vec<f32>,
    lr: Vec<f32>,
    phi: Vec<f32>,
    f0: Vec<f32>,
}

impl ModelOutputs {
    fn spectra(&self) -> Spectra<'_> {
        Spectra {
            lh: &self.lh,
            theta: &self.theta,
            ln: &self.ln,
            lr: &self.lr,
            phi: &self.phi,
            f0: &self.f0,
        }
    }
}

impl HibariVoice {
    /// Loads the G2P tables, the OOV net and `sessions` copies of the acoustic model.
    pub fn load(config: &HibariConfig) -> Result<HibariVoice, TtsError> {
        let started = Instant::now();
        let titles = load_titles(&config.dir.join("normalize.json"))?;
        let g2p = G2p::load(&config.dir, &config.onnx_library).map_err(failed)?;
        let model = config.dir.join(&config.model);
        let sessions = (0..config.sessions.max(1))
            .map(|_| {
                onnx::session(&config.onnx_library, &model, config.threads)
                    .map(Mutex::new)
                    .map_err(failed)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let speed = if config.speed.is_finite() {
            config.speed.clamp(SPEED_RANGE.0, SPEED_RANGE.1)
        } else {
            1.0
        };
        tracing::info!(
            model = %model.display(),
            sessions = sessions.len(),
            threads = config.threads.max(1),
            ms = started.elapsed().as_millis() as u64,
            "hibari voice loaded"
        );
        Ok(HibariVoice {
            g2p,
            sessions,
            next: AtomicUsize::new(0),
            vocoder: Vocoder::new(),
            titles,
            speed,
        })
    }

    /// The streaming units of `text`: its sentences, as hibari's `split_sentences` cuts them.
    pub fn split(&self, text: &str) -> Vec<String> {
        split_sentences(text, &self.titles)
    }

    /// One unit (normally a sentence from [`Self::split`]) as 24 kHz mono samples; empty when
    /// the text has nothing to say.
    pub fn synthesize_unit(&self, text: &str) -> Result<Vec<f32>, TtsError> {
        self.synthesize_unit_at(text, self.speed)
    }

    /// [`Self::synthesize_unit`] at `speed` (clamped to hibari's range).
    fn synthesize_unit_at(&self, text: &str, speed: f32) -> Result<Vec<f32>, TtsError> {
        let speed = if speed.is_finite() {
            speed.clamp(SPEED_RANGE.0, SPEED_RANGE.1)
        } else {
            self.speed
        };
        let phonemes = self.g2p.phonemize(text).map_err(failed)?;
        let mut audio = Vec::new();
        for chunk in split_phonemes(&phonemes) {
            let ids = self.g2p.ids(&chunk);
            audio.extend(self.synthesize_ids(&ids, speed)?);
        }
        Ok(audio)
    }

    /// Model ids (with the 0 pads) to samples; fewer than 3 ids is silence, as in hibari.
    fn synthesize_ids(&self, ids: &[i64], speed: f32) -> Result<Vec<f32>, TtsError> {
        if ids.len() < 3 {
            return Ok(Vec::new());
        }
        let out = self.run_model(ids, speed)?;
        let seed = noise_seed(ids, speed);
        self.vocoder
            .synthesize(&out.spectra(), Noise::Seeded(seed))
            .map_err(bad_output)
    }

    /// A free session, or the next one in turn if all are busy.
    fn session(&self) -> MutexGuard<'_, Session> {
        for s in &self.sessions {
            if let Ok(guard) = s.try_lock() {
                return guard;
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        // A panic elsewhere while holding the lock leaves the session itself usable.
        self.sessions[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn run_model(&self, ids: &[i64], speed: f32) -> Result<ModelOutputs, TtsError> {
        let ids_t = Tensor::from_array(([1usize, ids.len()], ids.to_vec())).map_err(failed)?;
        let speed_t = Tensor::from_array(([1usize], vec![speed])).map_err(failed)?;
        let mut session = self.session();
        let outputs = session
            .run(ort::inputs!["ids" => ids_t, "speed" => speed_t])
            .map_err(failed)?;
        let take = |name: &str| -> Result<Vec<f32>, TtsError> {
            let value = outputs
                .get(name)
                .ok_or_else(|| bad_output(format!("the model has no output `{name}`")))?;
            let (_, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| bad_output(format!("output `{name}`: {e}")))?;
            Ok(data.to_vec())
        };
        Ok(ModelOutputs {
            lh: take("lh")?,
            theta: take("theta")?,
            ln: take("ln")?,
            lr: take("lr")?,
            phi: take("phi")?,
            f0: take("f0")?,
        })
    }
}

impl SpeechSynthesizer for HibariVoice {
    fn engine_for(&self, _style: &VoiceStyle) -> &'static str {
        "neural"
    }

    /// hibari's own units: its sentence split (titles from normalize.json).
    fn units(&self, text: &str) -> Vec<String> {
        self.split(text)
    }

    /// `style.speed` multiplies `[tts.neural] speed` (the product within 0.5..=2.0).
    fn synthesize_in(&self, text: &str, style: &VoiceStyle) -> Result<Speech, TtsError> {
        let started = Instant::now();
        let speed = self.speed * style.speed;
        let mut samples = Vec::new();
        for unit in self.split(text) {
            samples.extend(self.synthesize_unit_at(&unit, speed)?);
        }
        Ok(Speech {
            audio: MonoAudio {
                samples,
                rate: dsp::SAMPLE_RATE,
            },
            elapsed: started.elapsed(),
        })
    }
}

/// The titles after which a period does not end a sentence (`normalize.json`'s `titles` keys).
fn load_titles(path: &Path) -> Result<HashSet<String>, TtsError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        failed(format!(
            "cannot read {}: {e} (run `python3 models/provision.py`)",
            path.display()
        ))
    })?;
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| failed(format!("cannot parse {}: {e}", path.display())))?;
    let titles = doc
        .get("titles")
        .and_then(|t| t.as_object())
        .ok_or_else(|| failed(format!("{}: no `titles` table", path.display())))?;
    Ok(titles.keys().cloned().collect())
}

/// Seed of the noise for one chunk: FNV-1a over the ids and the speed's bits.
fn noise_seed(ids: &[i64], speed: f32) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    let bytes = ids
        .iter()
        .flat_map(|id| id.to_le_bytes())
        .chain(speed.to_bits().to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Sentences of `text`, exactly as hibari's `Hibari.split_sentences`: paragraphs at newlines;
/// inside one, a cut after `.` `!` `?` `…` (plus closing quotes/brackets, which are dropped)
/// and whitespace before a non-space character, unless that character is lowercase or the
/// period follows a title (`titles`, e.g. "Dr") or a single capital letter (an initial).
pub fn split_sentences(text: &str, titles: &HashSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for para in text.trim().split('\n') {
        let para = para.trim();
        let mut cut = 0;
        for (start, end) in sentence_ends(para) {
            let next = para[end..].chars().next();
            if next.is_some_and(|c| ends_sentence(para, start, c, titles)) {
                out.push(&para[cut..start]);
                cut = end;
            }
        }
        out.push(&para[cut..]);
    }
    out.into_iter()
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Matches of `(?<=[.!?…])["”’)\]]*\s+(?=\S)` in `para`, as (start, end) byte offsets.
fn sentence_ends(para: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut chars = para.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if !matches!(c, '.' | '!' | '?' | '…') {
            continue;
        }
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        // Closing quotes/brackets, then at least one whitespace, then a non-space character.
        let mut probe = chars.clone();
        while probe
            .peek()
            .is_some_and(|&(_, c)| matches!(c, '"' | '”' | '’' | ')' | ']'))
        {
            probe.next();
        }
        let mut spaces = 0;
        while probe.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            probe.next();
            spaces += 1;
        }
        if spaces == 0 {
            continue;
        }
        if let Some(&(end, _)) = probe.peek() {
            found.push((start, end));
            chars = probe;
        }
    }
    found
}

/// hibari's `_ends_sentence`: false before a lowercase word and after a title or an initial.
fn ends_sentence(para: &str, end: usize, next: char, titles: &HashSet<String>) -> bool {
    if next.is_lowercase() {
        return false;
    }
    let before = &para[..end];
    if !before.ends_with('.') {
        return true;
    }
    let word_start = before.rfind(' ').map_or(0, |i| i + 1);
    let word = before[word_start..before.len() - 1].trim_start_matches(['(', '"', '“', '\'', '‘']);
    let mut chars = word.chars();
    let initial = matches!((chars.next(), chars.next()), (Some(c), None) if c.is_uppercase());
    !(titles.contains(word) || initial)
}

/// hibari's re-split of a long phoneme string: pieces after `, ; : —` (and whitespace) are
/// joined with spaces into chunks of at most [`MAX_PHONEMES`] characters. Empty input gives
/// no chunks; a short string is one chunk.
pub fn split_phonemes(phonemes: &str) -> Vec<String> {
    if phonemes.is_empty() {
        return Vec::new();
    }
    if phonemes.chars().count() <= MAX_PHONEMES {
        return vec![phonemes.to_string()];
    }
    let mut chunks = Vec::new();
    let mut cur = String::new();
    let mut cur_len = 0;
    for part in clause_parts(phonemes) {
        let len = part.chars().count();
        if cur_len > 0 && cur_len + len + 1 > MAX_PHONEMES {
            chunks.push(std::mem::take(&mut cur));
            cur.push_str(part);
            cur_len = len;
        } else {
            if cur_len > 0 {
                cur.push(' ');
                cur_len += 1;
            }
            cur.push_str(part);
            cur_len += len;
        }
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    chunks
}

/// `re.split(r"(?<=[,;:—])\s+", s)`: cut at whitespace runs that follow clause punctuation.
fn clause_parts(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut prev: Option<char> = None;
    let mut iter = s.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        if c.is_whitespace() && prev.is_some_and(|p| matches!(p, ',' | ';' | ':' | '—')) {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = iter.peek() {
                if !d.is_whitespace() {
                    break;
                }
                end = j + d.len_utf8();
                iter.next();
            }
            parts.push(&s[start..i]);
            start = end;
            prev = None;
            continue;
        }
        prev = Some(c);
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;
    use std::time::Duration;

    fn titles() -> HashSet<String> {
        ["Mr", "Mrs", "Ms", "Dr", "Prof", "St"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn split_sentences_table() {
        let t = titles();
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   \n\n ", &[]),
            ("Hello there.", &["Hello there."]),
            (
                "Thank you for calling. How can I help you today?",
                &["Thank you for calling.", "How can I help you today?"],
            ),
            (
                "Wait! Really? Yes… OK.",
                &["Wait!", "Really?", "Yes…", "OK."],
            ),
            // Titles and initials do not end a sentence; a lowercase word does not start one.
            (
                "Dr. Smith is in. Mr. J. K. Rowling too.",
                &["Dr. Smith is in.", "Mr. J. K. Rowling too."],
            ),
            (
                "It costs 5 p.m. sharp. no cut here.",
                &["It costs 5 p.m. sharp. no cut here."],
            ),
            ("(Dr. Who) left.", &["(Dr. Who) left."]),
            ("Call (\"Dr. No\") now.", &["Call (\"Dr. No\") now."]),
            // Closing quotes after the punctuation are dropped with the whitespace.
            (
                "He said \"Hi.\" Then left.",
                &["He said \"Hi.", "Then left."],
            ),
            ("She said “Go!” Then ran.", &["She said “Go!", "Then ran."]),
            // No whitespace: no cut. Trailing whitespace: no cut.
            ("a.b.c. Done", &["a.b.c.", "Done"]),
            ("Version 2.5 is out.", &["Version 2.5 is out."]),
            (
                "First line\nSecond line.\n\n  Third. Fourth",
                &["First line", "Second line.", "Third.", "Fourth"],
            ),
            ("Numbers. 42 is next.", &["Numbers.", "42 is next."]),
            ("Why?!  Because.", &["Why?!", "Because."]),
        ];
        for (text, want) in cases {
            let got = split_sentences(text, &t);
            assert_eq!(
                got,
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn split_phonemes_table() {
        assert!(split_phonemes("").is_empty());
        assert_eq!(split_phonemes("həlˈO."), ["həlˈO."]);
        let exactly = "a".repeat(MAX_PHONEMES);
        assert_eq!(split_phonemes(&exactly), std::slice::from_ref(&exactly));
        // Over the limit: cut after , ; : — and re-joined greedily up to 400 characters.
        let clause = format!("{},", "ə".repeat(150)); // 151 characters
        let long = [clause.as_str(); 4].join(" ");
        let got = split_phonemes(&long);
        assert_eq!(
            got,
            [format!("{clause} {clause}"), format!("{clause} {clause}")]
        );
        assert!(got.iter().all(|c| c.chars().count() <= MAX_PHONEMES));
        // Other separators, several spaces, and a part that alone exceeds the limit.
        let big = "b".repeat(450);
        let got = split_phonemes(&format!("x;  {big}: y— z, w"));
        assert_eq!(
            got,
            ["x;".to_string(), format!("{big}:"), "y— z, w".to_string()]
        );
        assert_eq!(clause_parts("a, b;c : d"), ["a,", "b;c :", "d"]);
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: HibariConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, HibariConfig::default());
        assert_eq!(c.dir, PathBuf::from("models/hibari"));
        assert_eq!(c.model, PathBuf::from("hibari.onnx"));
        assert_eq!(
            c.onnx_library,
            PathBuf::from("models/onnxruntime/libonnxruntime.so")
        );
        assert_eq!((c.threads, c.sessions, c.speed), (1, 1, 1.0));
        assert!(serde_json::from_str::<HibariConfig>(r#"{"voice": "x"}"#).is_err());
    }

    #[test]
    fn noise_seed_depends_on_ids_and_speed() {
        assert_eq!(noise_seed(&[0, 5, 0], 1.0), noise_seed(&[0, 5, 0], 1.0));
        assert_ne!(noise_seed(&[0, 5, 0], 1.0), noise_seed(&[0, 6, 0], 1.0));
        assert_ne!(noise_seed(&[0, 5, 0], 1.0), noise_seed(&[0, 5, 0], 1.1));
    }

    #[test]
    fn missing_files_name_the_provisioning_command() {
        let config = HibariConfig {
            dir: PathBuf::from("/nonexistent/hibari"),
            ..HibariConfig::default()
        };
        let err = HibariVoice::load(&config).unwrap_err().to_string();
        assert!(err.contains("python3 models/provision.py"), "{err}");
    }

    // ---- with the provisioned model ----------------------------------------------------

    fn model_config() -> HibariConfig {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let config = HibariConfig {
            dir: root.join("hibari"),
            onnx_library: root.join("onnxruntime/libonnxruntime.so"),
            ..HibariConfig::default()
        };
        for f in [config.dir.join("hibari.onnx"), config.onnx_library.clone()] {
            assert!(
                f.is_file(),
                "{} is missing: run `python3 models/provision.py` first",
                f.display()
            );
        }
        config
    }

    fn voice() -> &'static HibariVoice {
        static VOICE: OnceLock<HibariVoice> = OnceLock::new();
        VOICE.get_or_init(|| HibariVoice::load(&model_config()).unwrap())
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
    }

    #[test]
    fn synthesizes_a_sentence() {
        let v = voice();
        let speech = v
            .synthesize("Thank you for calling. How can I help you today?")
            .unwrap();
        assert_eq!(speech.audio.rate, 24_000);
        let secs = speech.audio.samples.len() as f32 / 24_000.0;
        // Python hibari: 1.70 s + about 1.8 s.
        assert!((2.5..5.0).contains(&secs), "duration {secs} s");
        assert_eq!(speech.audio.samples.len() % dsp::HOP, 0);
        let level = rms(&speech.audio.samples);
        let peak = speech
            .audio
            .samples
            .iter()
            .fold(0.0f32, |a, b| a.max(b.abs()));
        assert!(level > 0.01 && peak < 1.0, "rms {level}, peak {peak}");
        // Same text, same samples.
        assert_eq!(
            v.synthesize("Thank you for calling.")
                .unwrap()
                .audio
                .samples,
            v.synthesize_unit("Thank you for calling.").unwrap()
        );
        assert_eq!(
            v.synthesize_unit("Thank you for calling.").unwrap(),
            v.synthesize_unit("Thank you for calling.").unwrap()
        );
        // Nothing to say: no samples, no error.
        assert!(v.synthesize("  ").unwrap().audio.samples.is_empty());
    }

    #[test]
    fn speed_changes_duration() {
        let v = voice();
        let ids = v.g2p.ids(
            &v.g2p
                .phonemize("Could you please confirm your date of birth?")
                .unwrap(),
        );
        let normal = v.synthesize_ids(&ids, 1.0).unwrap().len();
        let fast = v.synthesize_ids(&ids, 2.0).unwrap().len();
        assert!((fast as f32) < normal as f32 * 0.7, "{fast} vs {normal}");
    }

    #[test]
    fn a_style_speed_multiplies_the_configured_speed() {
        let v = voice();
        let text = "Your parcel is on its way.";
        let normal = v.synthesize(text).unwrap().audio.samples.len();
        let brisk = VoiceStyle {
            speed: 1.5,
            ..VoiceStyle::default()
        };
        let fast = v.synthesize_in(text, &brisk).unwrap().audio.samples.len();
        assert!((fast as f32) < normal as f32 * 0.8, "{fast} vs {normal}");
        // Beyond hibari's range it is clamped, never an error.
        let wild = VoiceStyle {
            speed: 50.0,
            ..VoiceStyle::default()
        };
        assert!(v.synthesize_in(text, &wild).is_ok());
    }

    #[test]
    fn model_outputs_match_python_onnxruntime() {
        // testdata/make_reference.py: hibari's ids for "Thank you for calling." through
        // Python onnxruntime 1.32.0, one thread.
        let reference: serde_json::Value =
            serde_json::from_str(include_str!("testdata/hibari_reference.json")).unwrap();
        let ids: Vec<i64> = reference["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let v = voice();
        assert_eq!(
            v.g2p
                .ids(&v.g2p.phonemize("Thank you for calling.").unwrap()),
            ids
        );
        let out = v.run_model(&ids, 1.0).unwrap();
        assert_eq!(out.f0.len() as u64, reference["frames"].as_u64().unwrap());
        let mut bit_exact = true;
        for (name, data) in [
            ("lh", &out.lh),
            ("theta", &out.theta),
            ("ln", &out.ln),
            ("lr", &out.lr),
            ("phi", &out.phi),
            ("f0", &out.f0),
        ] {
            let want = &reference["outputs"][name];
            let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mut h: u64 = 0xCBF2_9CE4_8422_2325;
            for b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01B3);
            }
            bit_exact &= format!("{h:016x}") == want["fnv1a64"].as_str().unwrap();
            // Whatever the CPU's int8 kernels, the outputs must agree closely.
            let sum: f64 = data.iter().map(|&x| f64::from(x)).sum();
            let sumsq: f64 = data.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            let (ws, wq) = (
                want["sum"].as_f64().unwrap(),
                want["sumsq"].as_f64().unwrap(),
            );
            // On CPUs with other int8 kernels (AVX512-VNNI, AMX) ONNX Runtime's quantised
            // products round differently: each value may move by a part in 1,000, so the sum
            // of N values may move by 1e-3 * sum |x| <= 1e-3 * sqrt(N * sumsq) (Cauchy-Schwarz).
            // Measured on such a CPU: lh's sum by 166 (bound 1,390), theta's by 2 (bound 254),
            // with every sum of squares within 1e-3.
            let n = data.len() as f64;
            let tolerance = (1e-3 * (wq.sqrt() + 1.0)).max(1e-3 * (n * wq).sqrt());
            assert!((sum - ws).abs() <= tolerance, "{name}: sum {sum} vs {ws}");
            assert!(
                (sumsq - wq).abs() <= 1e-3 * wq,
                "{name}: sumsq {sumsq} vs {wq}"
            );
        }
        println!("model outputs bit-identical to Python onnxruntime: {bit_exact}");
    }

    /// Load time, time to first audio and real-time factor on one thread (printed, not
    /// asserted). Run alone for stable numbers:
    /// `cargo test --release --lib speech::neural::hibari::tests::measure -- --nocapture`.
    #[test]
    fn measure() {
        let config = model_config();
        let started = Instant::now();
        onnx::environment(&config.onnx_library).unwrap();
        let runtime = started.elapsed();
        let started = Instant::now();
        let g2p = G2p::load(&config.dir, &config.onnx_library).unwrap();
        let g2p_load = started.elapsed();
        drop(g2p);
        let started = Instant::now();
        let v = HibariVoice::load(&config).unwrap();
        let load = started.elapsed();
        let started = Instant::now();
        let session = onnx::session(&config.onnx_library, &config.dir.join(&config.model), 1);
        let session_load = started.elapsed();
        drop(session);
        println!(
            "ORT library {:.0} ms (0 if another test loaded it first); HibariVoice::load {:.0} ms \
             (G2P alone {:.0} ms, one model session alone {:.0} ms)",
            ms(runtime),
            ms(load),
            ms(g2p_load),
            ms(session_load)
        );
        let replies = [
            "I'm transferring you to a colleague who is an expert in billing.",
            "Your order 4471 was shipped on Monday and should arrive within two days.",
            "Our opening hours are Monday to Friday, nine a.m. to six p.m.",
            "Thank you for calling. How can I help you today?",
            "Could you please confirm your date of birth and the postcode on your account?",
        ];
        v.synthesize("Warm up.").unwrap();
        let (mut total_audio, mut total_time) = (0.0, 0.0);
        for text in replies {
            let t = Instant::now();
            let units = v.split(text);
            let first = v.synthesize_unit(&units[0]).unwrap();
            let ttfa = t.elapsed();
            let speech = v.synthesize(text).unwrap();
            let audio = speech.audio.samples.len() as f64 / 24_000.0;
            total_audio += audio;
            total_time += speech.elapsed.as_secs_f64();
            println!(
                "{:>6.1} ms to first audio ({:.2} s unit), {:>6.1} ms for {:.2} s (RTF {:.3}, rms {:.3}): {text}",
                ms(ttfa),
                first.len() as f64 / 24_000.0,
                ms(speech.elapsed),
                audio,
                speech.elapsed.as_secs_f64() / audio,
                rms(&speech.audio.samples),
            );
        }
        println!(
            "overall RTF {:.3} ({:.1} s of audio)",
            total_time / total_audio,
            total_audio
        );
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }
}
