//! End-to-end spoken evaluation of the bot's decisions: what the whole gateway decides when a
//! labelled caller utterance is *spoken* down a telephone line, and what it then does with the
//! silence that follows.
//!
//! Why: `tests/intent_eval.rs` scores the dialog on the text of each utterance. On a call there
//! is much more between the caller's words and the decision: the line (G.711 μ-law at 8 kHz,
//! hiss), the endpointer (which may split an utterance into two turns, or drop it as noise),
//! the recogniser and its vocabulary correction, the escalation policy over the call; and
//! after the caller has spoken, whether the bot leaves them waiting on the line. This bench
//! measures all of it from the outside, through the real binary (`voicebot simulate --json`
//! with its embedded configuration and default flow), so the same harness can measure an
//! older build (`CALL_EVAL_BIN`) and the two sets of figures compare.
//!
//! Run: `cargo bench --bench call_eval` (needs `espeak-ng` and the provisioned models; the
//! binary is the release build this command makes). Each row of the set is spoken by each
//! voice with espeak-ng, sent through [`LINE`] (`asr_eval::channel::transmit`: μ-law at 8 kHz,
//! white line noise at -65 dBFS) and brought back to 16 kHz; a call's WAV is 0.8 s of line
//! noise, the utterance, then `CALL_EVAL_SILENCE_S` seconds of the same noise (a caller who
//! says nothing more). The WAVs are cached under `target/call-eval/wav/`, keyed by a hash of
//! the text, the voice and every setting that shapes the audio. One `simulate` process runs
//! every call; its per-call JSON reports are then scored (the rules are printed with the
//! figures, see [`RULES`]).
//!
//! Settings by environment:
//! - `CALL_EVAL_SET`: the labelled set (`[[utterance]] text, intent, escalation, group`), default
//!   `tests/eval/independent.toml`;
//! - `CALL_EVAL_LIMIT`: only the first N rows;
//! - `CALL_EVAL_VOICES`: comma-separated espeak-ng voices as `VOICE[:WPM[:PITCH]]` (default
//!   [`DEFAULT_VOICES`]);
//! - `CALL_EVAL_SILENCE_S`: seconds of line noise after the utterance (default 60: the default
//!   flow's no-input handling, three silences of `no_input_s` (7 s) each after a prompt of up
//!   to 8 s, takes about 45 s after the bot's last answer to hand over or end the call, and a
//!   call still in the middle of it when the recording ends would count as stranded);
//! - `CALL_EVAL_BIN`: the gateway binary (default `target/release/voicebot`);
//! - `CALL_EVAL_JSON`: also write the figures and every call's score there;
//! - `CALL_EVAL_KEEP_AUDIO=1`: keep the bot's audio (`*.bot.wav`, about 1.4 MB a call) in the
//!   run's directory.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use voicebot_gateway::asr_eval::channel::{transmit, Condition};
use voicebot_gateway::audio::wav::{write_wav, MonoAudio};
use voicebot_gateway::media::codec::Codec;
use voicebot_gateway::speech::tts::{EspeakSynthesizer, SpeechSynthesizer, TtsConfig};

/// The telephone line every utterance goes through.
const LINE: Condition = Condition {
    name: "g711u-noise65",
    codec: Codec::Pcmu,
    narrowband: true,
    noise_dbfs: Some(-65.0),
    loss: 0.0,
    gain_db: 0.0,
};
/// Line noise before the caller speaks.
const LEAD_IN_S: f32 = 0.8;
/// Peak level of the caller's voice before the line.
const PEAK_DBFS: f32 = -6.0;
/// A sample louder than this (before the line) is speech, for the utterance's span.
const VOICED_LEVEL: f32 = 0.01;
/// A caller turn starting this long after the utterance's last voiced sample was heard in the
/// silence: a phantom turn, not a response to the utterance.
const PHANTOM_AFTER_MS: u64 = 1500;
/// Three different callers: an American man, a British woman, a fast British man.
const DEFAULT_VOICES: &str = "en-us:160:45,en-gb+f3:150:70,en-gb-x-rp:195:40";
/// Bumped when the audio recipe changes, so cached WAVs of the old recipe are not reused.
const AUDIO_RECIPE: u32 = 1;
/// The escalation labels the set may use.
const TRIGGERS: [&str; 3] = ["explicit_request", "critical_keyword", "negative_tone"];
/// Escalation reasons that do not answer anything the caller said.
const NOT_CALLER_REASONS: [&str; 1] = ["no_input"];
/// Intents the bot handles itself: a row with one of them and no escalation label is contained
/// when the bot does not hand over and understands it.
const ROUTINE_INTENTS: [&str; 8] = [
    "order_status",
    "password_reset",
    "opening_hours",
    "greeting",
    "thanks",
    "goodbye",
    "affirm",
    "deny",
];
/// How each figure is counted, printed with the figures.
const RULES: &str = "\
Rules (per row and voice, one call each):
- caller turns: the turns the caller's speech started (not those a silence started: re-prompts,
  the no_input hand-over), except any escalated with reason no_input; a caller turn starting more
  than 1.5 s after the utterance's last voiced sample is a phantom (heard in the silence) and is
  left out of the decision figures, but counted.
- escalated: a caller turn escalated (any reason but no_input); the reason is the first such turn's.
- recall of a trigger: rows labelled with it that escalated (any reason); 'right reason': escalated
  with that reason. Precision: rows escalated with that reason that are labelled with it.
- containment: rows labelled escalation none with a routine intent, not escalated and the intent of
  one of its caller turns equal to the label.
- open: the call's audio ran out (utterance + silence) with the bot still holding the call
  (outcome neither escalated, no_input included, nor completed).
- stranded: open, and the bot's last words (its last non-empty reply, else the greeting) asked the
  caller for something (a question, or a sentence starting with 'Please': questions, clarifications
  and re-prompts), and the call ended on it: the caller was left on a question nobody followed up.
- loop: the bot said the same reply 3 or more times in the call.";

/// What to run, from the environment.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    set: PathBuf,
    limit: Option<usize>,
    voices: Vec<Speaker>,
    silence_s: f32,
    bin: PathBuf,
    #[serde(skip)]
    json: Option<PathBuf>,
    #[serde(skip)]
    keep_audio: bool,
    /// `target/call-eval`.
    #[serde(skip)]
    work: PathBuf,
    /// The repository root (the binary finds its models from there).
    #[serde(skip)]
    root: PathBuf,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let in_root = |p: PathBuf| if p.is_absolute() { p } else { root.join(p) };
        let target = in_root(env_or("CARGO_TARGET_DIR", "target").into());
        let set = in_root(env_or("CALL_EVAL_SET", "tests/eval/independent.toml").into());
        let limit = match env_opt("CALL_EVAL_LIMIT") {
            None => None,
            Some(v) => Some(
                v.parse::<usize>()
                    .with_context(|| format!("CALL_EVAL_LIMIT={v}: not a number of rows"))?,
            ),
        };
        let voices = env_or("CALL_EVAL_VOICES", DEFAULT_VOICES)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Speaker::parse)
            .collect::<Result<Vec<_>>>()?;
        if voices.is_empty() {
            bail!("CALL_EVAL_VOICES names no voice");
        }
        let silence = env_or("CALL_EVAL_SILENCE_S", "60");
        let silence_s: f32 = silence
            .parse()
            .ok()
            .filter(|s: &f32| s.is_finite() && (0.0..=600.0).contains(s))
            .with_context(|| format!("CALL_EVAL_SILENCE_S={silence}: seconds from 0 to 600"))?;
        let bin = match env_opt("CALL_EVAL_BIN") {
            Some(b) => in_root(b.into()),
            None => target.join("release/voicebot"),
        };
        Ok(Settings {
            set,
            limit,
            voices,
            silence_s,
            bin,
            json: env_opt("CALL_EVAL_JSON").map(|p| in_root(p.into())),
            keep_audio: env_opt("CALL_EVAL_KEEP_AUDIO").is_some_and(|v| v == "1"),
            work: target.join("call-eval"),
            root,
        })
    }
}

fn env_opt(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_or(name: &str, default: &str) -> String {
    env_opt(name).unwrap_or_else(|| default.to_string())
}

/// One espeak-ng caller.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Speaker {
    voice: String,
    wpm: u32,
    pitch: u32,
}

impl Speaker {
    /// `VOICE[:WPM[:PITCH]]`, e.g. `en-gb+f3:150:70`.
    fn parse(spec: &str) -> Result<Speaker> {
        let mut parts = spec.split(':');
        let voice = parts.next().unwrap_or_default().trim();
        if voice.is_empty() {
            bail!("voice {spec:?}: expected VOICE[:WPM[:PITCH]]");
        }
        let number = |part: Option<&str>, default: u32, what: &str| -> Result<u32> {
            part.map_or(Ok(default), |p| {
                p.trim()
                    .parse()
                    .with_context(|| format!("voice {spec:?}: {what} {p:?} is not a number"))
            })
        };
        let wpm = number(parts.next(), 160, "words per minute")?;
        let pitch = number(parts.next(), 50, "pitch")?;
        if parts.next().is_some() {
            bail!("voice {spec:?}: expected VOICE[:WPM[:PITCH]]");
        }
        Ok(Speaker {
            voice: voice.to_string(),
            wpm,
            pitch,
        })
    }

    fn label(&self) -> String {
        format!("{} {}wpm p{}", self.voice, self.wpm, self.pitch)
    }
}

/// One labelled caller utterance.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Row {
    text: String,
    intent: String,
    escalation: String,
    #[serde(default)]
    group: String,
}

impl Row {
    fn escalates(&self) -> bool {
        self.escalation != "none"
    }
}

#[derive(Deserialize)]
struct SetFile {
    utterance: Vec<Row>,
}

fn read_set(settings: &Settings) -> Result<Vec<Row>> {
    let path = &settings.set;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the set", path.display()))?;
    let file: SetFile =
        toml::from_str(&text).with_context(|| format!("{}: not a set file", path.display()))?;
    let mut rows = file.utterance;
    for (i, row) in rows.iter().enumerate() {
        if row.escalates() && !TRIGGERS.contains(&row.escalation.as_str()) {
            bail!(
                "{}: row {} ({:?}): escalation {:?} is none of none, {}",
                path.display(),
                i + 1,
                row.text,
                row.escalation,
                TRIGGERS.join(", ")
            );
        }
    }
    if let Some(n) = settings.limit {
        rows.truncate(n);
    }
    if rows.is_empty() {
        bail!("{}: no utterance to evaluate", path.display());
    }
    Ok(rows)
}

/// Where the utterance lies in a call's audio, kept beside each cached WAV.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Span {
    speech_start_ms: u64,
    speech_end_ms: u64,
    audio_ms: u64,
}

/// One call to run: a row said by a voice.
#[derive(Debug, Clone)]
struct CallAudio {
    /// The input file's stem, which `simulate` names the report after.
    stem: String,
    row: usize,
    speaker: usize,
    wav: PathBuf,
    span: Span,
}

/// The cache key of a call's audio: everything that shapes it.
fn cache_key(text: &str, speaker: &Speaker, silence_s: f32) -> String {
    let recipe = format!(
        "recipe {AUDIO_RECIPE}\ntext {text}\nvoice {} {} {}\npeak {PEAK_DBFS}\nline {:?}\nlead {LEAD_IN_S}\nsilence {silence_s}",
        speaker.voice, speaker.wpm, speaker.pitch, LINE
    );
    let digest = Sha256::digest(recipe.as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The first and last sample louder than [`VOICED_LEVEL`].
fn voiced_span(samples: &[f32]) -> (usize, usize) {
    let loud = |s: &f32| s.abs() > VOICED_LEVEL;
    let start = samples.iter().position(loud).unwrap_or(0);
    let end = samples
        .iter()
        .rposition(loud)
        .map_or(samples.len(), |i| i + 1);
    (start, end)
}

fn ms(samples: usize, rate: u32) -> u64 {
    (samples as u64 * 1000) / u64::from(rate.max(1))
}

/// Speaks `text` and sends it down the line: lead-in noise, the utterance, the long silence.
fn synthesize_call(
    text: &str,
    speaker: &Speaker,
    silence_s: f32,
    seed: u64,
) -> Result<(MonoAudio, Span)> {
    let synth = EspeakSynthesizer::new(TtsConfig {
        voice: speaker.voice.clone(),
        rate_wpm: speaker.wpm,
        pitch: speaker.pitch,
        peak_dbfs: PEAK_DBFS,
        ..TtsConfig::default()
    });
    let speech = synth
        .synthesize(text)
        .with_context(|| format!("espeak-ng {}: {text:?}", speaker.label()))?;
    let rate = speech.audio.rate;
    let (start, end) = voiced_span(&speech.audio.samples);
    let lead = (LEAD_IN_S * rate as f32) as usize;
    let tail = (silence_s * rate as f32) as usize;
    let mut padded = vec![0.0f32; lead];
    padded.extend_from_slice(&speech.audio.samples);
    padded.resize(padded.len() + tail, 0.0);
    let samples = transmit(&padded, rate, &LINE, seed)
        .with_context(|| format!("line simulation of {text:?}"))?;
    let audio = MonoAudio {
        samples,
        rate: voicebot_gateway::audio::SPEECH_RATE,
    };
    let span = Span {
        speech_start_ms: ms(lead + start, rate),
        speech_end_ms: ms(lead + end, rate),
        audio_ms: ms(audio.samples.len(), audio.rate),
    };
    Ok((audio, span))
}

/// The cached WAV and span of one call, made when missing.
fn cached_call(
    cache: &Path,
    text: &str,
    speaker: &Speaker,
    silence_s: f32,
) -> Result<(PathBuf, Span, bool)> {
    let key = cache_key(text, speaker, silence_s);
    let wav = cache.join(format!("{key}.wav"));
    let meta = cache.join(format!("{key}.json"));
    if wav.is_file() {
        if let Some(span) = std::fs::read_to_string(&meta)
            .ok()
            .and_then(|t| serde_json::from_str::<Span>(&t).ok())
        {
            return Ok((wav, span, false));
        }
    }
    let seed = u64::from_str_radix(&key[..16], 16).unwrap_or(0);
    let (audio, span) = synthesize_call(text, speaker, silence_s, seed)?;
    write_wav(&wav, &audio).with_context(|| format!("{}: cannot write", wav.display()))?;
    std::fs::write(&meta, serde_json::to_string(&span)?)
        .with_context(|| format!("{}: cannot write", meta.display()))?;
    Ok((wav, span, true))
}

/// One call's audio: row `row` said by voice `speaker`; true when it was made now.
fn call_audio(
    settings: &Settings,
    rows: &[Row],
    row: usize,
    speaker: usize,
) -> Result<(CallAudio, bool)> {
    let cache = settings.work.join("wav");
    let (wav, span, fresh) = cached_call(
        &cache,
        &rows[row].text,
        &settings.voices[speaker],
        settings.silence_s,
    )?;
    let call = CallAudio {
        stem: format!("r{:04}-v{speaker}", row + 1),
        row,
        speaker,
        wav,
        span,
    };
    Ok((call, fresh))
}

/// Every call's audio (cached, or made on all cores), in row then voice order, and how many
/// were made now.
fn prepare_calls(settings: &Settings, rows: &[Row]) -> Result<(Vec<CallAudio>, usize)> {
    let cache = settings.work.join("wav");
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("{}: cannot create", cache.display()))?;
    let jobs: Vec<(usize, usize)> = (0..rows.len())
        .flat_map(|r| (0..settings.voices.len()).map(move |v| (r, v)))
        .collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut done: Vec<(usize, Result<(CallAudio, bool)>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let jobs = &jobs;
                scope.spawn(move || {
                    jobs.iter()
                        .enumerate()
                        .skip(w)
                        .step_by(workers)
                        .map(|(i, &(row, speaker))| (i, call_audio(settings, rows, row, speaker)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![(
                        usize::MAX,
                        Err(anyhow::anyhow!("a synthesis worker panicked")),
                    )]
                })
            })
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    let mut calls = Vec::with_capacity(jobs.len());
    let mut made = 0;
    for (_, result) in done {
        let (call, fresh) = result?;
        made += usize::from(fresh);
        calls.push(call);
    }
    Ok((calls, made))
}

/// A fresh run directory, where `simulate` runs: `in/` (links to the cached WAVs, named by row
/// and voice), `out/`, and `models` (a link to the repository's provisioned models). It has no
/// `sip-config/`, so the binary answers with the flow, intents and prompts embedded in it, not
/// with the working tree's files (which may be newer than an older binary understands).
fn stage_run(settings: &Settings, calls: &[CallAudio]) -> Result<PathBuf> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let run = settings
        .work
        .join("runs")
        .join(format!("{stamp}-{}", std::process::id()));
    let input = run.join("in");
    std::fs::create_dir_all(&input)
        .with_context(|| format!("{}: cannot create", input.display()))?;
    std::fs::create_dir_all(run.join("out"))
        .with_context(|| format!("{}: cannot create", run.display()))?;
    let models = settings.root.join("models");
    std::os::unix::fs::symlink(&models, run.join("models"))
        .with_context(|| format!("{}: cannot link the models", run.display()))?;
    for call in calls {
        let link = input.join(format!("{}.wav", call.stem));
        let target = call
            .wav
            .canonicalize()
            .with_context(|| format!("{}: missing", call.wav.display()))?;
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("{}: cannot link", link.display()))?;
    }
    Ok(run)
}

/// Runs `voicebot simulate --json` over the run's inputs; its stdout and stderr go to files in
/// the run directory. Progress is printed every minute.
fn run_simulate(settings: &Settings, run: &Path, calls: usize) -> Result<(ExitStatus, Duration)> {
    let log = |name: &str| -> Result<File> {
        let path = run.join(name);
        File::create(&path).with_context(|| format!("{}: cannot create", path.display()))
    };
    let started = Instant::now();
    let mut child = Command::new(&settings.bin)
        .arg("simulate")
        .arg("--json")
        .arg("--out")
        .arg(run.join("out"))
        .arg(run.join("in"))
        .current_dir(run)
        .stdin(Stdio::null())
        .stdout(log("simulate.stdout")?)
        .stderr(log("simulate.stderr")?)
        .spawn()
        .with_context(|| format!("cannot run {}", settings.bin.display()))?;
    let mut last_note = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("waiting for simulate")? {
            return Ok((status, started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(500));
        if last_note.elapsed() >= Duration::from_secs(60) {
            last_note = Instant::now();
            let done = std::fs::read_dir(run.join("out")).map_or(0, |d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            });
            eprintln!(
                "call_eval: {done}/{calls} calls after {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
}

/// The parts of `simulate`'s per-call JSON this bench reads (lenient, so older and newer
/// binaries' reports both read).
#[derive(Debug, Deserialize)]
struct FileReport {
    #[serde(default)]
    report: Option<CallJson>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CallJson {
    #[serde(default)]
    greeting: String,
    #[serde(default)]
    turns: Vec<TurnJson>,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    escalation: Option<EscalationJson>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct TurnJson {
    #[serde(default)]
    index: usize,
    /// What started the turn (`speech`, `dtmf`, `no_input`); absent in older reports, whose
    /// turns are all the caller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<String>,
    #[serde(default)]
    start_ms: u64,
    #[serde(default)]
    end_ms: u64,
    #[serde(default)]
    transcript: String,
    #[serde(default)]
    asr_confidence: f32,
    #[serde(default)]
    intent: String,
    #[serde(default)]
    intent_confidence: f32,
    #[serde(default)]
    reply: String,
    #[serde(default)]
    escalation: Option<EscalationJson>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct EscalationJson {
    reason: String,
    #[serde(default)]
    detail: String,
}

impl TurnJson {
    /// A turn that answers something the caller said.
    fn is_caller(&self) -> bool {
        self.input.as_deref().is_none_or(|i| i == "speech")
            && !self
                .escalation
                .as_ref()
                .is_some_and(|e| NOT_CALLER_REASONS.contains(&e.reason.as_str()))
    }

    /// A turn the caller's silence started (a re-prompt, or the no-input hand-over).
    fn is_no_input(&self) -> bool {
        self.input.as_deref() == Some("no_input")
    }
}

/// One call's report, or why there is none.
fn read_report(
    out: &Path,
    stem: &str,
    summary: &HashMap<String, String>,
) -> Result<CallJson, String> {
    let path = out.join(format!("{stem}.json"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return Err(summary
                .get(stem)
                .cloned()
                .unwrap_or_else(|| format!("{}: {e}", path.display())))
        }
    };
    let file: FileReport =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    match (file.report, file.error) {
        (Some(report), _) => Ok(report),
        (None, Some(e)) => Err(e),
        (None, None) => Err(format!("{}: no report", path.display())),
    }
}

/// Errors of the batch by input stem, from `summary.json` (calls that have no report file).
fn batch_errors(out: &Path) -> HashMap<String, String> {
    #[derive(Deserialize)]
    struct Entry {
        file: PathBuf,
        #[serde(default)]
        error: Option<String>,
    }
    let entries: Vec<Entry> = std::fs::read_to_string(out.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    entries
        .into_iter()
        .filter_map(|e| {
            let stem = e.file.file_stem()?.to_string_lossy().into_owned();
            Some((stem, e.error?))
        })
        .collect()
}

/// What one call (a row said by a voice) came to.
#[derive(Debug, Clone, Serialize)]
struct CallScore {
    row: usize,
    voice: String,
    text: String,
    group: String,
    label_intent: String,
    label_escalation: String,
    /// Caller turns that answer the utterance.
    heard: Vec<TurnJson>,
    /// Caller turns heard in the silence.
    phantom: Vec<TurnJson>,
    escalated: bool,
    reason: Option<String>,
    detail: Option<String>,
    intent_right: bool,
    outcome: String,
    /// The bot's last words.
    last_bot: String,
    open: bool,
    stranded: bool,
    /// A reply said 3 or more times.
    looped: Option<String>,
    /// The call was escalated for the caller's silence.
    no_input: bool,
    /// Turns the caller's silence started (re-prompts and the no-input decision).
    no_input_turns: usize,
    error: Option<String>,
}

impl CallScore {
    fn ok(&self) -> bool {
        self.error.is_none()
    }

    fn decision_right(&self) -> bool {
        self.escalated == (self.label_escalation != "none")
    }

    fn reason_right(&self) -> bool {
        match self.label_escalation.as_str() {
            "none" => !self.escalated,
            label => self.reason.as_deref() == Some(label),
        }
    }

    fn routine(&self) -> bool {
        self.label_escalation == "none" && ROUTINE_INTENTS.contains(&self.label_intent.as_str())
    }

    fn contained(&self) -> bool {
        !self.escalated && self.intent_right
    }

    /// What went wrong, in words (empty: nothing).
    fn problems(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.error.is_some() {
            return vec!["no report"];
        }
        if self.heard.is_empty() {
            out.push("nothing heard");
        }
        match (self.label_escalation != "none", self.escalated) {
            (true, false) => out.push("escalation missed"),
            (false, true) => out.push("escalated wrongly"),
            (true, true) if !self.reason_right() => out.push("wrong reason"),
            _ => {}
        }
        if self.routine() && !self.escalated && !self.intent_right {
            out.push("routine not understood");
        }
        if !self.phantom.is_empty() {
            out.push("phantom turn");
        }
        if self.looped.is_some() {
            out.push("loop");
        }
        out
    }
}

/// `text` asks the caller for something: a question, or a sentence starting with "please"
/// ("Could you say it in other words? For example: ..." and "Please say them one by one." do;
/// "Thank you for calling. Goodbye!" does not).
fn asks_caller(text: &str) -> bool {
    text.contains('?')
        || text
            .split(['.', '!', ':'])
            .any(|sentence| sentence.trim().to_lowercase().starts_with("please"))
}

/// A reply the bot said 3 or more times.
fn looped_reply(turns: &[TurnJson]) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in turns {
        let reply = t.reply.trim();
        if !reply.is_empty() {
            *counts.entry(reply).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .find(|(_, n)| *n >= 3)
        .map(|(r, _)| r.to_string())
}

fn score_call(
    row: &Row,
    call: &CallAudio,
    voice: &str,
    report: Result<CallJson, String>,
) -> CallScore {
    let mut score = CallScore {
        row: call.row + 1,
        voice: voice.to_string(),
        text: row.text.clone(),
        group: row.group.clone(),
        label_intent: row.intent.clone(),
        label_escalation: row.escalation.clone(),
        heard: Vec::new(),
        phantom: Vec::new(),
        escalated: false,
        reason: None,
        detail: None,
        intent_right: false,
        outcome: String::new(),
        last_bot: String::new(),
        open: false,
        stranded: false,
        looped: None,
        no_input: false,
        no_input_turns: 0,
        error: None,
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            score.error = Some(e);
            return score;
        }
    };
    let phantom_from = call.span.speech_end_ms + PHANTOM_AFTER_MS;
    let (phantom, heard): (Vec<TurnJson>, Vec<TurnJson>) = report
        .turns
        .iter()
        .filter(|t| t.is_caller())
        .cloned()
        .partition(|t| t.start_ms > phantom_from);
    if let Some(e) = heard.iter().find_map(|t| t.escalation.as_ref()) {
        score.escalated = true;
        score.reason = Some(e.reason.clone());
        score.detail = Some(e.detail.clone());
    }
    score.intent_right = heard.iter().any(|t| t.intent == row.intent);
    let not_caller = |e: &Option<EscalationJson>| {
        e.as_ref()
            .is_some_and(|e| NOT_CALLER_REASONS.contains(&e.reason.as_str()))
    };
    score.no_input =
        not_caller(&report.escalation) || report.turns.iter().any(|t| not_caller(&t.escalation));
    score.no_input_turns = report.turns.iter().filter(|t| t.is_no_input()).count();
    score.last_bot = report
        .turns
        .iter()
        .rev()
        .map(|t| t.reply.trim())
        .find(|r| !r.is_empty())
        .unwrap_or(report.greeting.trim())
        .to_string();
    score.open = report.outcome != "escalated" && report.outcome != "completed";
    score.stranded = score.open && asks_caller(&score.last_bot);
    score.looped = looped_reply(&report.turns);
    score.outcome = report.outcome;
    score.heard = heard;
    score.phantom = phantom;
    score
}

/// A share, printed as `83.3 % (25/30)`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Ratio {
    num: usize,
    den: usize,
}

impl Ratio {
    fn of<'a, T: 'a>(items: impl IntoIterator<Item = &'a T>, hit: impl Fn(&T) -> bool) -> Ratio {
        items.into_iter().fold(Ratio::default(), |r, x| Ratio {
            num: r.num + usize::from(hit(x)),
            den: r.den + 1,
        })
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 0 {
            write!(f, "-")
        } else {
            write!(
                f,
                "{:.1} % ({}/{})",
                100.0 * self.num as f64 / self.den as f64,
                self.num,
                self.den
            )
        }
    }
}

/// Recall and precision of one trigger.
#[derive(Debug, Clone, Serialize)]
struct TriggerFigures {
    trigger: &'static str,
    /// Labelled with it, escalated (any reason).
    recall: Ratio,
    /// Labelled with it, escalated with it.
    recall_right_reason: Ratio,
    /// Escalated with it, labelled with it.
    precision: Ratio,
}

/// The figures of a slice of the calls (a group, a voice).
#[derive(Debug, Clone, Serialize)]
struct Slice {
    name: String,
    calls: usize,
    decision_right: Ratio,
    reason_right: Ratio,
    intent_right: Ratio,
    containment: Ratio,
    stranded: usize,
}

fn slice(name: &str, calls: &[&CallScore]) -> Slice {
    Slice {
        name: name.to_string(),
        calls: calls.len(),
        decision_right: Ratio::of(calls.iter().copied(), CallScore::decision_right),
        reason_right: Ratio::of(calls.iter().copied(), CallScore::reason_right),
        intent_right: Ratio::of(
            calls.iter().copied().filter(|c| c.label_intent != "none"),
            |c| c.intent_right,
        ),
        containment: Ratio::of(
            calls.iter().copied().filter(|c| c.routine()),
            CallScore::contained,
        ),
        stranded: calls.iter().filter(|c| c.stranded).count(),
    }
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
struct Figures {
    calls: usize,
    /// Calls without a report (left out of every other figure).
    failed: usize,
    escalation_precision: Ratio,
    escalation_recall: Ratio,
    /// Escalated or not as labelled.
    decision_right: Ratio,
    /// Escalated calls labelled with a trigger: escalated with that reason.
    reason_right_of_escalated: Ratio,
    triggers: Vec<TriggerFigures>,
    /// Rows with an intent label other than none: one of its caller turns has it.
    intent_right: Ratio,
    containment: Ratio,
    open: Ratio,
    stranded: Ratio,
    loops: usize,
    no_input_escalations: usize,
    /// Turns started by the caller's silence, over all calls.
    no_input_turns: usize,
    /// Calls whose utterance came out as 2 or more caller turns.
    split: usize,
    /// Calls in which no caller turn was heard.
    nothing_heard: usize,
    phantom_turns: usize,
    /// Label -> decided reason ("none" when not escalated) -> calls.
    confusion: BTreeMap<String, BTreeMap<String, usize>>,
    outcomes: BTreeMap<String, usize>,
    groups: Vec<Slice>,
    voices: Vec<Slice>,
}

fn figures(scores: &[CallScore]) -> Figures {
    let ok: Vec<&CallScore> = scores.iter().filter(|c| c.ok()).collect();
    let all = || ok.iter().copied();
    let triggers = TRIGGERS
        .iter()
        .map(|&t| TriggerFigures {
            trigger: t,
            recall: Ratio::of(all().filter(|c| c.label_escalation == t), |c| c.escalated),
            recall_right_reason: Ratio::of(all().filter(|c| c.label_escalation == t), |c| {
                c.reason.as_deref() == Some(t)
            }),
            precision: Ratio::of(all().filter(|c| c.reason.as_deref() == Some(t)), |c| {
                c.label_escalation == t
            }),
        })
        .collect();
    let mut confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for c in all() {
        let decided = c.reason.clone().unwrap_or_else(|| "none".into());
        *confusion
            .entry(c.label_escalation.clone())
            .or_default()
            .entry(decided)
            .or_default() += 1;
        *outcomes.entry(c.outcome.clone()).or_default() += 1;
    }
    let mut by_group: BTreeMap<&str, Vec<&CallScore>> = BTreeMap::new();
    let mut by_voice: BTreeMap<&str, Vec<&CallScore>> = BTreeMap::new();
    for c in all() {
        by_group.entry(&c.group).or_default().push(c);
        by_voice.entry(&c.voice).or_default().push(c);
    }
    Figures {
        calls: scores.len(),
        failed: scores.len() - ok.len(),
        escalation_precision: Ratio::of(all().filter(|c| c.escalated), |c| {
            c.label_escalation != "none"
        }),
        escalation_recall: Ratio::of(all().filter(|c| c.label_escalation != "none"), |c| {
            c.escalated
        }),
        decision_right: Ratio::of(all(), CallScore::decision_right),
        reason_right_of_escalated: Ratio::of(
            all().filter(|c| c.escalated && c.label_escalation != "none"),
            CallScore::reason_right,
        ),
        triggers,
        intent_right: Ratio::of(all().filter(|c| c.label_intent != "none"), |c| {
            c.intent_right
        }),
        containment: Ratio::of(all().filter(|c| c.routine()), CallScore::contained),
        open: Ratio::of(all(), |c| c.open),
        stranded: Ratio::of(all(), |c| c.stranded),
        loops: all().filter(|c| c.looped.is_some()).count(),
        no_input_escalations: all().filter(|c| c.no_input).count(),
        no_input_turns: all().map(|c| c.no_input_turns).sum(),
        split: all().filter(|c| c.heard.len() > 1).count(),
        nothing_heard: all().filter(|c| c.heard.is_empty()).count(),
        phantom_turns: all().map(|c| c.phantom.len()).sum(),
        confusion,
        outcomes,
        groups: by_group.iter().map(|(g, c)| slice(g, c)).collect(),
        voices: by_voice.iter().map(|(v, c)| slice(v, c)).collect(),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    t
}

fn render_figures(f: &Figures) -> String {
    let mut main = table(&["figure", "measured"]);
    let rows: Vec<(&str, String)> = vec![
        (
            "calls (failed: no report)",
            format!("{} ({})", f.calls, f.failed),
        ),
        ("escalation precision", f.escalation_precision.to_string()),
        ("escalation recall", f.escalation_recall.to_string()),
        ("escalation decision right", f.decision_right.to_string()),
        (
            "right reason (escalated, labelled)",
            f.reason_right_of_escalated.to_string(),
        ),
        ("intent right (label not none)", f.intent_right.to_string()),
        (
            "routine handled right (containment)",
            f.containment.to_string(),
        ),
        ("open at the end of the audio", f.open.to_string()),
        ("stranded", f.stranded.to_string()),
        ("loops (a reply 3+ times)", f.loops.to_string()),
        ("no_input escalations", f.no_input_escalations.to_string()),
        (
            "turns started by silence (re-prompts)",
            f.no_input_turns.to_string(),
        ),
        ("utterance split into 2+ turns", f.split.to_string()),
        ("nothing heard", f.nothing_heard.to_string()),
        (
            "phantom turns (in the silence)",
            f.phantom_turns.to_string(),
        ),
    ];
    for (k, v) in rows {
        main.add_row(vec![k.to_string(), v]);
    }
    let mut triggers = table(&[
        "trigger",
        "recall (any reason)",
        "recall (right reason)",
        "precision",
    ]);
    for t in &f.triggers {
        triggers.add_row(vec![
            t.trigger.to_string(),
            t.recall.to_string(),
            t.recall_right_reason.to_string(),
            t.precision.to_string(),
        ]);
    }
    let decided: Vec<&String> = {
        let mut d: Vec<&String> = f.confusion.values().flat_map(|m| m.keys()).collect();
        d.sort();
        d.dedup();
        d
    };
    let mut header = vec!["label \\ decided"];
    header.extend(decided.iter().map(|s| s.as_str()));
    let mut confusion = table(&header);
    for (label, row) in &f.confusion {
        let mut line = vec![label.clone()];
        line.extend(
            decided
                .iter()
                .map(|d| row.get(*d).map_or("".into(), |n| n.to_string())),
        );
        confusion.add_row(line);
    }
    let slices = |title: &str, list: &[Slice]| {
        let mut t = table(&[
            title,
            "calls",
            "decision right",
            "reason right",
            "intent right",
            "containment",
            "stranded",
        ]);
        for s in list {
            t.add_row(vec![
                s.name.clone(),
                s.calls.to_string(),
                s.decision_right.to_string(),
                s.reason_right.to_string(),
                s.intent_right.to_string(),
                s.containment.to_string(),
                s.stranded.to_string(),
            ]);
        }
        t
    };
    let outcomes: Vec<String> = f.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(
        "{main}\n\nPer trigger\n{triggers}\n\nEscalation: label (rows) against the reason decided (columns)\n{confusion}\n\n\
         Outcomes: {}\n\nPer group\n{}\n\nPer voice\n{}\n",
        outcomes.join(", "),
        slices("group", &f.groups),
        slices("voice", &f.voices)
    )
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}...", text.chars().take(max).collect::<String>())
    }
}

fn render_turn(t: &TurnJson) -> String {
    let escalation = t
        .escalation
        .as_ref()
        .map_or("no escalation".to_string(), |e| {
            format!("ESCALATE {}: {}", e.reason, e.detail)
        });
    format!(
        "[{}] {:.1}-{:.1} s \"{}\" (asr {:.2}) -> {} ({:.2}), {escalation}",
        t.index,
        t.start_ms as f64 / 1000.0,
        t.end_ms as f64 / 1000.0,
        t.transcript,
        t.asr_confidence,
        t.intent,
        t.intent_confidence
    )
}

/// Every decision miss in full; stranded calls one line each.
fn render_misses(scores: &[CallScore]) -> String {
    let mut out = String::new();
    let misses: Vec<(&CallScore, Vec<&str>)> = scores
        .iter()
        .map(|c| (c, c.problems()))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    out.push_str(&format!("Misses ({} calls)\n", misses.len()));
    for (c, problems) in &misses {
        out.push_str(&format!(
            "- row {} [{}] {} | label {} / {} | {}\n    said:  \"{}\"\n",
            c.row,
            c.group,
            c.voice,
            c.label_intent,
            c.label_escalation,
            problems.join(", ").to_uppercase(),
            c.text
        ));
        if let Some(e) = &c.error {
            out.push_str(&format!("    error: {e}\n"));
            continue;
        }
        for t in &c.heard {
            out.push_str(&format!("    heard: {}\n", render_turn(t)));
        }
        for t in &c.phantom {
            out.push_str(&format!("    in the silence: {}\n", render_turn(t)));
        }
        if let Some(r) = &c.looped {
            out.push_str(&format!("    said 3+ times: \"{}\"\n", clip(r, 90)));
        }
        out.push_str(&format!(
            "    outcome {}; bot's last words: \"{}\"\n",
            c.outcome,
            clip(&c.last_bot, 90)
        ));
    }
    let stranded: Vec<&CallScore> = scores.iter().filter(|c| c.stranded).collect();
    out.push_str(&format!("\nStranded calls ({})\n", stranded.len()));
    for c in stranded {
        let heard: Vec<String> = c
            .heard
            .iter()
            .map(|t| format!("{} ({:.2})", t.intent, t.intent_confidence))
            .collect();
        out.push_str(&format!(
            "- row {} [{}] {} | heard as {} | last: \"{}\"\n",
            c.row,
            c.group,
            c.voice,
            if heard.is_empty() {
                "-".into()
            } else {
                heard.join(" + ")
            },
            clip(&c.last_bot, 70)
        ));
    }
    out
}

/// Removes the bot's audio from the run (large, and the reports say what was said).
fn drop_bot_audio(out: &Path) -> Result<()> {
    for entry in
        std::fs::read_dir(out).with_context(|| format!("{}: cannot list", out.display()))?
    {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(".bot.wav") {
            std::fs::remove_file(&path)
                .with_context(|| format!("{}: cannot remove", path.display()))?;
        }
    }
    Ok(())
}

/// The JSON written to `CALL_EVAL_JSON`.
#[derive(Serialize)]
struct JsonReport<'a> {
    settings: &'a Settings,
    line: &'static str,
    rows: usize,
    wall_s: f64,
    simulate_s: f64,
    calls_per_s: f64,
    figures: &'a Figures,
    calls: &'a [CallScore],
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    match evaluate() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("call_eval: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The last `n` lines of a text file, for an error message.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn evaluate() -> Result<()> {
    let settings = Settings::from_env()?;
    if !settings.bin.is_file() {
        bail!(
            "{}: no such binary (build it: cargo build --release, or set CALL_EVAL_BIN)",
            settings.bin.display()
        );
    }
    let started = Instant::now();
    let rows = read_set(&settings)?;
    let voices: Vec<String> = settings.voices.iter().map(Speaker::label).collect();
    println!(
        "call_eval: {} rows of {} x {} voices ({}), line {}, {} s of silence after each utterance; binary {}",
        rows.len(),
        settings.set.display(),
        voices.len(),
        voices.join("; "),
        LINE.name,
        settings.silence_s,
        settings.bin.display()
    );
    let (calls, made) = prepare_calls(&settings, &rows)?;
    println!(
        "audio: {} calls, {made} synthesised, {} from the cache ({:.1} s)",
        calls.len(),
        calls.len() - made,
        started.elapsed().as_secs_f64()
    );
    let run = stage_run(&settings, &calls)?;
    let (status, simulate_wall) = run_simulate(&settings, &run, calls.len())?;
    let out = run.join("out");
    let errors = batch_errors(&out);
    if !status.success() && errors.is_empty() {
        let stderr = run.join("simulate.stderr");
        bail!(
            "{} simulate failed ({status}):\n{}\n(all of it in {})",
            settings.bin.display(),
            tail(&stderr, 5),
            stderr.display()
        );
    }
    let scores: Vec<CallScore> = calls
        .iter()
        .map(|c| {
            let report = read_report(&out, &c.stem, &errors);
            score_call(&rows[c.row], c, &voices[c.speaker], report)
        })
        .collect();
    if !settings.keep_audio {
        drop_bot_audio(&out)?;
    }
    let figures = figures(&scores);
    let wall = started.elapsed();
    let audio_s: f64 = calls.iter().map(|c| c.span.audio_ms as f64 / 1000.0).sum();
    let calls_per_s = calls.len() as f64 / simulate_wall.as_secs_f64().max(1e-9);
    println!("\n{RULES}\n");
    print!("{}", render_figures(&figures));
    println!("\n{}", render_misses(&scores));
    println!(
        "wall time {:.1} s (simulate {:.1} s): {calls_per_s:.2} calls/s, {:.1} s of call audio per second; reports in {}",
        wall.as_secs_f64(),
        simulate_wall.as_secs_f64(),
        audio_s / simulate_wall.as_secs_f64().max(1e-9),
        out.display()
    );
    if let Some(path) = &settings.json {
        let report = JsonReport {
            settings: &settings,
            line: LINE.name,
            rows: rows.len(),
            wall_s: wall.as_secs_f64(),
            simulate_s: simulate_wall.as_secs_f64(),
            calls_per_s,
            figures: &figures,
            calls: &scores,
        };
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("{}: cannot write", path.display()))?;
        println!("figures and calls written to {}", path.display());
    }
    Ok(())
}
