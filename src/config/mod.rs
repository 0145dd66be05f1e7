//! The gateway's configuration: one TOML file (`sip-config/gateway.toml`), embedded in the
//! binary as the default, validated once at load into a typed [`GatewayConfig`]. Every problem is
//! reported with the file, line and field (see [`crate::config_file`]).

pub mod home;
pub mod http;
pub mod media;
pub mod recording;
pub mod trunks;
pub mod webrtc;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config_file::{self, ConfigError};
use crate::dialog::escalation::EscalationConfig;
use crate::dialog::llm::LlmConfig;
use crate::flows::FlowsConfig;
use crate::handover::HandoverConfig;
use crate::speech::asr::AsrConfig;
use crate::speech::tts::TtsConfig;
use crate::speech::vad::VadConfig;
use media::{MediaConfig, SipConfig};
use recording::RecordingConfig;

/// The default configuration, as shipped in `sip-config/gateway.toml`.
pub const EMBEDDED: &str = include_str!("../../sip-config/gateway.toml");

/// Which intent classifier the flows use (`[intent]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentEngine {
    /// Sentence embeddings (all-MiniLM-L6-v2) combined with the rule classifier.
    Hybrid,
    /// The rule classifier alone (cue phrases and examples).
    Rules,
}

/// `[intent]`: the classifier and its model files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntentConfig {
    pub engine: IntentEngine,
    /// Sentence-embedding model (safetensors), made by `python3 models/provision.py`.
    pub model: PathBuf,
    /// Its tokenizer (Hugging Face `tokenizer.json`).
    pub tokenizer: PathBuf,
    /// `[intent.llm]`: an optional OpenAI-compatible endpoint in front of the engine above,
    /// which stays the fallback.
    pub llm: LlmConfig,
}

impl Default for IntentConfig {
    fn default() -> Self {
        IntentConfig {
            engine: IntentEngine::Hybrid,
            model: PathBuf::from(crate::dialog::embedding::DEFAULT_MODEL_PATH),
            tokenizer: PathBuf::from(crate::dialog::embedding::DEFAULT_TOKENIZER_PATH),
            llm: LlmConfig::default(),
        }
    }
}

/// Inference pool sizing (`[pool]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Worker threads running ASR/TTS jobs.
    pub workers: usize,
    /// Jobs allowed to wait for a worker before submitters are held back.
    pub queue: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: 2,
            queue: 16,
        }
    }
}

/// Admission control (`[admission]`): which new calls the gateway refuses (503 with
/// Retry-After) because it could not answer them in time. See `server::admission`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Calls in progress allowed per CPU core before new ones are refused (measured with
    /// talking callers: `cargo bench --bench turn_latency`); 0: only `[sip] max_calls`.
    pub calls_per_core: usize,
    /// CPU cores counted for `calls_per_core`; 0: the cores this process may use.
    pub cores: usize,
    /// New calls are refused while the 90th percentile of how long the end-of-turn inference
    /// jobs waited for a worker, over the last `window_s`, is above this; 0: off.
    pub max_turn_wait_ms: u64,
    /// The window of `max_turn_wait_ms`, seconds.
    pub window_s: u64,
    /// The Retry-After of the refusal, seconds.
    pub retry_after_s: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            calls_per_core: 6,
            cores: 0,
            max_turn_wait_ms: 250,
            window_s: 10,
            retry_after_s: 30,
        }
    }
}

impl AdmissionConfig {
    /// The quantile of the end-of-turn waits compared with `max_turn_wait_ms` (and exported
    /// as `voicebot_turn_wait_seconds`).
    pub const TURN_WAIT_QUANTILE: f64 = 0.9;

    /// The window the end-of-turn waits are taken over (`window_s`, at least a second).
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_s.max(1))
    }

    /// The first field out of range and why.
    fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.calls_per_core > 1000 {
            return Some(("calls_per_core", "must be between 0 (no limit) and 1000"));
        }
        if self.cores > 1024 {
            return Some(("cores", "must be between 0 (this machine's) and 1024"));
        }
        if self.max_turn_wait_ms > 60_000 {
            return Some(("max_turn_wait_ms", "must be between 0 (off) and 60000"));
        }
        if self.max_turn_wait_ms > 0 && !(1..=600).contains(&self.window_s) {
            return Some(("window_s", "must be between 1 and 600"));
        }
        if self.retry_after_s > 86_400 {
            return Some(("retry_after_s", "must be at most 86400"));
        }
        None
    }
}

/// A section's own problem (`field`, `reason`) with the field named from the top of the file.
fn in_section(
    section: &str,
    problem: Option<(impl AsRef<str>, impl AsRef<str>)>,
) -> Option<(String, String)> {
    problem.map(|(field, reason)| {
        (
            format!("{section}.{}", field.as_ref()),
            reason.as_ref().to_string(),
        )
    })
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub asr: AsrConfig,
    pub vad: VadConfig,
    pub turn: crate::speech::turn_end::TurnConfig,
    pub tts: TtsConfig,
    pub pool: PoolConfig,
    pub admission: AdmissionConfig,
    pub flows: FlowsConfig,
    pub intent: IntentConfig,
    pub escalation: EscalationConfig,
    pub handover: HandoverConfig,
    pub http: http::HttpConfig,
    pub sip: SipConfig,
    pub media: MediaConfig,
    pub recording: RecordingConfig,
    pub webrtc: webrtc::WebRtcConfig,
    /// `[storage]`: embedded (SQLite and files) or a shared PostgreSQL for a cluster.
    pub storage: crate::storage::StorageConfig,
}

impl GatewayConfig {
    /// The embedded default configuration, its relative paths taken from the gateway's home
    /// (see [`home`]).
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::embedded_in(&home::home())
    }

    /// The embedded default configuration with its relative paths under `home`.
    pub fn embedded_in(home: &Path) -> Result<Self, ConfigError> {
        Self::from_text_in(
            Path::new("<embedded>/sip-config/gateway.toml"),
            EMBEDDED,
            Some(home),
        )
    }

    /// Loads and validates a configuration file; relative paths inside it are taken from the
    /// gateway's home, like the embedded defaults' (see [`home`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_in(path, &home::home())
    }

    /// [`GatewayConfig::load`] with the relative paths under `home`.
    pub fn load_in(path: &Path, home: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::whole_file(path, format!("cannot read: {e}")))?;
        Self::from_text_in(path, &text, Some(home))
    }

    /// Parses and validates configuration text; `file` labels errors. Relative paths are kept
    /// as written (relative to the current directory).
    pub fn from_text(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::from_text_in(file, text, None)
    }

    /// [`GatewayConfig::from_text`], with the relative paths under `home` when given.
    pub fn from_text_in(file: &Path, text: &str, home: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config: GatewayConfig = config_file::parse(file, text)?;
        if let Some(home) = home {
            config.resolve_paths(home);
        }
        config.validate(file, text)?;
        Ok(config)
    }

    /// Takes every relative file or directory the configuration names relative to `home`
    /// instead of the current directory: the one place where the configuration's paths are
    /// resolved. Empty paths ("none") and absolute paths stay as they are, and so does a bare
    /// program name (looked up in `PATH`). The Moonshine model names ("tiny", "base") become
    /// the provisioned directories under `home`.
    pub fn resolve_paths(&mut self, home: &Path) {
        use home::{program_under, under};
        let on = |p: &mut PathBuf| *p = under(home, p);
        let asr = &mut self.asr;
        match asr.engine {
            crate::speech::asr::Engine::Moonshine => {
                asr.model = under(home, &crate::speech::asr::moonshine::model_dir(&asr.model));
            }
            crate::speech::asr::Engine::Whisper => asr.model = under(home, &asr.model_path()),
        }
        if !asr.partial_model.as_os_str().is_empty() {
            asr.partial_model = under(
                home,
                &crate::speech::asr::moonshine::model_dir(&asr.partial_model),
            );
        }
        on(&mut asr.onnx_library);
        on(&mut asr.dictionary);
        on(&mut self.turn.model);
        self.tts.program = program_under(home, &self.tts.program);
        // `[tts.neural] model` is a file name inside `dir`.
        on(&mut self.tts.neural.dir);
        on(&mut self.tts.neural.onnx_library);
        on(&mut self.flows.dir);
        self.flows.shared.iter_mut().for_each(on);
        on(&mut self.intent.model);
        on(&mut self.intent.tokenizer);
        let http = &mut self.http;
        for p in [
            &mut http.token_file,
            &mut http.feedback_database,
            &mut http.admin_token_file,
            &mut http.history_database,
        ] {
            on(p);
        }
        let sip = &mut self.sip;
        for p in [
            &mut sip.report_dir,
            &mut sip.journal,
            &mut sip.tls.cert_file,
            &mut sip.tls.key_file,
            &mut sip.tls.client_ca_file,
            &mut sip.tls.ca_file,
        ] {
            on(p);
        }
        on(&mut self.handover.webhook.database);
        on(&mut self.recording.dir);
    }

    fn validate(&self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let bad = |field: &str, reason: &str| Err(ConfigError::invalid(file, text, field, reason));
        let v = &self.vad;
        if !(0.05..=0.95).contains(&v.threshold) {
            return bad("vad.threshold", "must be between 0.05 and 0.95");
        }
        if v.end_silence_ms < 100 || v.end_silence_ms > 5_000 {
            return bad("vad.end_silence_ms", "must be between 100 and 5000 ms");
        }
        if v.min_speech_ms > 2_000 {
            return bad("vad.min_speech_ms", "must be at most 2000 ms");
        }
        if v.pre_roll_ms > 1_000 {
            return bad("vad.pre_roll_ms", "must be at most 1000 ms");
        }
        if v.pause_ms != 0 && (v.pause_ms < 100 || v.pause_ms >= v.end_silence_ms) {
            return bad(
                "vad.pause_ms",
                "must be 0 (no pause events) or between 100 ms and end_silence_ms",
            );
        }
        if !(0.0..=40.0).contains(&v.noise_margin_db) {
            return bad("vad.noise_margin_db", "must be between 0 and 40 dB");
        }
        if v.noise_window_ms < 500 || v.noise_window_ms > 30_000 {
            return bad("vad.noise_window_ms", "must be between 500 and 30000 ms");
        }
        if !(0.05..=0.99).contains(&self.turn.threshold) {
            return bad("turn.threshold", "must be between 0.05 and 0.99");
        }
        if self.turn.short_pause_ms > v.end_silence_ms {
            return bad(
                "turn.short_pause_ms",
                "must be at most vad.end_silence_ms (the longest silence in a turn)",
            );
        }
        if v.max_utterance_ms < 1_000 || v.max_utterance_ms > 30_000 {
            return bad(
                "vad.max_utterance_ms",
                "must be between 1000 and 30000 ms (whisper's window)",
            );
        }
        if self.asr.language.len() != 2
            || !self.asr.language.chars().all(|c| c.is_ascii_lowercase())
        {
            return bad(
                "asr.language",
                "must be a two-letter ISO 639-1 code such as \"en\"",
            );
        }
        if !(0.0..=1.0).contains(&self.asr.full_window_below) {
            return bad("asr.full_window_below", "must be between 0 and 1");
        }
        if self.asr.threads > 64 {
            return bad("asr.threads", "must be at most 64 (0 means all cores)");
        }
        if self.asr.engine == crate::speech::asr::Engine::Moonshine && self.asr.language != "en" {
            return bad(
                "asr.language",
                "the Moonshine models shipped are English only: use language = \"en\", or engine = \"whisper\" with a multilingual model",
            );
        }
        if !(0.0..=5.0).contains(&self.asr.hot_word_bias) {
            return bad("asr.hot_word_bias", "must be between 0 and 5");
        }
        if let Some(w) = self
            .asr
            .hot_words
            .iter()
            .find(|w| w.is_empty() || w.len() > 40 || w.chars().any(|c| c.is_whitespace()))
        {
            return bad(
                "asr.hot_words",
                &format!("{w:?} is not one word (1 to 40 characters, no spaces)"),
            );
        }
        if !(0.0..=1.0).contains(&self.asr.partial_budget) {
            return bad(
                "asr.partial_budget",
                "must be between 0 and 1 (a share of one core)",
            );
        }
        if self.asr.partial_interval_ms != 0
            && !(100..=5000).contains(&self.asr.partial_interval_ms)
        {
            return bad(
                "asr.partial_interval_ms",
                "must be 0 (off) or between 100 and 5000",
            );
        }
        if !(60..=450).contains(&self.tts.rate_wpm) {
            return bad(
                "tts.rate_wpm",
                "must be between 60 and 450 words per minute",
            );
        }
        if self.tts.pitch > 99 {
            return bad("tts.pitch", "must be between 0 and 99");
        }
        if !(-30.0..=0.0).contains(&self.tts.peak_dbfs) {
            return bad("tts.peak_dbfs", "must be between -30 and 0 dBFS");
        }
        if self.tts.voice.trim().is_empty() {
            return bad("tts.voice", "must name an espeak-ng voice");
        }
        if self.pool.workers == 0 || self.pool.workers > 64 {
            return bad("pool.workers", "must be between 1 and 64");
        }
        if self.pool.queue == 0 {
            return bad("pool.queue", "must be at least 1");
        }
        if let Some((field, reason)) = self.recording.problem() {
            return bad(field, reason);
        }
        // The sections that check themselves: the first problem, named section.field.
        let problems = [
            in_section("admission", self.admission.problem()),
            in_section("handover", self.handover.problem()),
            in_section("http", self.http.problem()),
            in_section("intent.llm", self.intent.llm.problem()),
            in_section("storage", self.storage.problem()),
        ];
        if let Some((field, reason)) = problems.into_iter().flatten().next() {
            return bad(&field, &reason);
        }
        self.sip.validate(file, text)?;
        self.media.validate(file, text)?;
        self.escalation.validate(file, text, "escalation")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llm_settings_are_checked_only_when_enabled() {
        let text = "[intent.llm]\nurl = \"localhost:8080\"\n";
        assert!(GatewayConfig::from_text(Path::new("g.toml"), text).is_ok());
        let text = "[intent.llm]\nenabled = true\nurl = \"localhost:8080\"\n";
        let err = GatewayConfig::from_text(Path::new("g.toml"), text).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("intent.llm.url"), "{err}");
        assert_eq!(err.line, Some(3), "{err}");
    }

    #[test]
    fn recording_settings_are_checked() {
        let text = "[recording]\nenabled = true\ndir = \"\"\n";
        let err = GatewayConfig::from_text(Path::new("g.toml"), text).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("recording.dir"), "{err}");
        let text = "[recording]\nretention_days = 99999\n";
        let err = GatewayConfig::from_text(Path::new("g.toml"), text).unwrap_err();
        assert_eq!(
            err.field.as_deref(),
            Some("recording.retention_days"),
            "{err}"
        );
        assert_eq!(err.line, Some(2), "{err}");
    }

    #[test]
    fn srtp_mode_is_read_and_checked() {
        use crate::media::srtp::SrtpMode;
        let config = GatewayConfig::from_text(Path::new("g.toml"), "").unwrap();
        assert_eq!(config.media.srtp, SrtpMode::Optional);
        let text = "[media]\nsrtp = \"required\"\n";
        let config = GatewayConfig::from_text(Path::new("g.toml"), text).unwrap();
        assert_eq!(config.media.srtp, SrtpMode::Required);
        let text = "[media]\nsrtp = \"mandatory\"\n";
        let err = GatewayConfig::from_text(Path::new("g.toml"), text).unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.to_string().contains("optional"), "{err}");
    }

    #[test]
    fn embedded_defaults_are_valid() {
        let config = GatewayConfig::embedded().expect("embedded config is valid");
        assert_eq!(config.asr.language, "en");
        assert_eq!(config.asr.engine, crate::speech::asr::Engine::Moonshine);
    }

    #[test]
    fn http_is_on_by_default_on_loopback() {
        let config = GatewayConfig::embedded_in(Path::new("/srv/vb")).expect("valid");
        assert_eq!(config.http.listen, "127.0.0.1:8080");
        assert_eq!(GatewayConfig::default().http.listen, http::DEFAULT_LISTEN);
        let off = GatewayConfig::from_text(Path::new("g.toml"), "[http]\nlisten = \"\"\n")
            .expect("valid");
        assert_eq!(off.http.listen, "");
    }

    #[test]
    fn relative_paths_are_taken_from_the_home() {
        let home = Path::new("/srv/vb");
        let text =
            "[asr]\nmodel = \"tiny\"\npartial_model = \"\"\n[flows]\ndir = \"/etc/vb/flows\"\n\
                    [tts]\nprogram = \"espeak-ng\"\n[sip]\njournal = \"\"\n";
        let c = GatewayConfig::from_text_in(Path::new("g.toml"), text, Some(home)).expect("valid");
        assert_eq!(c.asr.model, home.join("models/moonshine/tiny-en"));
        assert_eq!(c.asr.model_path(), home.join("models/moonshine/tiny-en"));
        assert_eq!(c.asr.partial_model, PathBuf::new());
        assert_eq!(c.flows.dir, PathBuf::from("/etc/vb/flows"));
        assert_eq!(
            c.flows.shared,
            vec![home.join("sip-config/intents.toml"), home.join("prompts")]
        );
        assert_eq!(c.tts.program, PathBuf::from("espeak-ng"));
        assert_eq!(c.tts.neural.model, PathBuf::from("hibari.onnx"));
        assert_eq!(c.sip.journal, PathBuf::new());
        assert_eq!(c.sip.report_dir, PathBuf::new());
        assert_eq!(c.http.admin_token_file, home.join("data/admin-token"));
        assert_eq!(c.intent.model, home.join("models/minilm-l6-v2.safetensors"));
        let whisper = "[asr]\nengine = \"whisper\"\n";
        let c = GatewayConfig::from_text_in(Path::new("g.toml"), whisper, Some(home)).expect("ok");
        assert_eq!(c.asr.model_path(), home.join("models/ggml-tiny.en.bin"));
        // Read without a home, the paths stay as written.
        let raw = GatewayConfig::from_text(Path::new("g.toml"), text).expect("valid");
        assert_eq!(raw.asr.model, PathBuf::from("tiny"));
        assert_eq!(
            raw.intent.model,
            PathBuf::from("models/minilm-l6-v2.safetensors")
        );
    }

    /// Every path the embedded defaults name (every string with a `/` that is not a URL, and
    /// the Moonshine model names) ends up under the home: a path field added later and
    /// forgotten in `resolve_paths` fails here.
    #[test]
    fn every_path_of_the_embedded_defaults_is_under_the_home() {
        fn walk(value: &serde_json::Value, at: &str, bad: &mut Vec<String>) {
            match value {
                serde_json::Value::String(s)
                    if s.contains('/') && !s.contains("://") && !s.starts_with("/srv/vb/") =>
                {
                    bad.push(format!("{at} = {s}"));
                }
                serde_json::Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        walk(v, &format!("{at}.{i}"), bad);
                    }
                }
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        walk(v, &format!("{at}.{k}"), bad);
                    }
                }
                _ => {}
            }
        }
        let config = GatewayConfig::embedded_in(Path::new("/srv/vb")).expect("valid");
        assert!(config.asr.model.starts_with("/srv/vb/models/moonshine"));
        assert!(config
            .asr
            .partial_model
            .starts_with("/srv/vb/models/moonshine"));
        let value = serde_json::to_value(&config).expect("json");
        let mut bad = Vec::new();
        walk(&value, "", &mut bad);
        assert!(bad.is_empty(), "paths left relative: {bad:?}");
    }

    #[test]
    fn empty_file_means_defaults() {
        let config = GatewayConfig::from_text(Path::new("g.toml"), "").expect("valid");
        assert_eq!(config, GatewayConfig::default());
    }

    #[test]
    fn out_of_range_value_names_file_line_field() {
        let text = "[asr]\nlanguage = \"en\"\n\n[vad]\nthreshold = 1.5\n";
        let err = GatewayConfig::from_text(Path::new("gw.toml"), text).unwrap_err();
        assert_eq!(err.line, Some(5), "{err}");
        assert_eq!(err.field.as_deref(), Some("vad.threshold"));
        assert!(
            err.to_string()
                .starts_with("gw.toml:5: field `vad.threshold`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_section_is_rejected_with_line() {
        let text = "[asr]\nlanguage = \"en\"\n[vda]\nthreshold = 0.5\n";
        let err = GatewayConfig::from_text(Path::new("gw.toml"), text).unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.reason.contains("vda"), "{err}");
    }

    #[test]
    fn wrong_type_is_rejected_with_line() {
        let text = "[tts]\nrate_wpm = \"fast\"\n";
        let err = GatewayConfig::from_text(Path::new("gw.toml"), text).unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
    }

    #[test]
    fn bad_language_is_rejected() {
        let err = GatewayConfig::from_text(Path::new("gw.toml"), "[asr]\nlanguage = \"english\"\n")
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("asr.language"));
        assert_eq!(err.line, Some(2));
    }
}
